"""Per-job records: TensorBoard scalars, image grids and the hparams entry,
all in the job's own folder, the machine-readable ``metrics.json``, and what
a job records after every epoch (``EpochRecorder``). The tags come from the
figure specs (``xilsweep.metrics``).

Per epoch, ``Reasons/*``, ``Accuracy/test_dotted``, ``Shortcut_removed/*`` and the
references' ``Confounded/*`` and ``Oracle/*`` are measured on the explainer's monitored
test subset; ``*val*`` tags on the validation images; ``Final/*`` (the hparams entry's
metrics) on the whole test set, ``Final/best_val_*`` on the validation images at the
kept epoch. The Custom Scalars charts name their images in their titles."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams.api_pb2 import HParamInfo
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from xilsweep.files import atomic_write_json
from xilsweep.metrics import (
    FIGURES,
    REFERENCE_KINDS,
    REFERENCE_LABELS,
    RELIANCE,
    epoch_tags,
    headline,
    headline_text,
    shortcut_removed_all,
)

log = logging.getLogger("xilsweep")

METRICS_FILE = "metrics.json"
ROUND_CHARTED = ("test_accuracy", *(f.key for f in RELIANCE))  # the rounds' charts, each with floor and ceiling
GRID_PADDING = 2  # pixels of grey above and left of each image in a grid


def reference_tag(kind: str, key: str) -> str:
    """The TensorBoard tag of a reference model's figure, e.g. ``Oracle/dot_flip_rate``."""
    return f"{kind.title()}/{key}"


def reliance_scalars(reasons: dict, removed: dict) -> dict:
    """TensorBoard tag -> value of a model's reliance figures and shares of the shortcut removed."""
    return {
        **{f.tag: reasons[f.key] for f in RELIANCE},
        **{f"Shortcut_removed/{f.key}": removed[f.key] for f in RELIANCE},
    }


def reference_scalars(references: dict[str, dict]) -> dict:
    """TensorBoard tag -> value of the references' reliance figures (``kind -> reasons``)."""
    return {reference_tag(kind, f.key): references[kind][f.key] for kind in REFERENCE_KINDS for f in RELIANCE}


class RunRecorder:
    """Writes one job's TensorBoard run directly into its output folder.

    Events go into ``directory`` itself, so TensorBoard pointed at a sweep
    folder shows one run per job, named after the job folder.
    """

    def __init__(self, directory: Path, purge_step: int | None = None):
        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge_step)

    def epoch(self, epoch: int, metrics: dict) -> None:
        """Scalars of one epoch: the named figures of ``epoch_tags()`` and every name that is a tag ("a/b")."""
        tags = epoch_tags()
        for name, value in metrics.items():
            tag = tags.get(name) or (name if "/" in name else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def reference_layout(self, subset: str, rounds_on: str | None = None) -> None:
        """The Custom Scalars tab: per reliance figure, the job's figure between the oracle's
        (floor) and the confounded model's (ceiling), on the monitored ``subset`` of the test
        images (e.g. "test subset of 300"); per validation figure, the job's on the validation
        images; with rounds, per round the clean accuracy and each reliance figure on the
        images named by ``rounds_on`` (the whole test set), between the same floor and ceiling."""
        references = ", ".join(REFERENCE_LABELS[kind] for kind in REFERENCE_KINDS)
        test = {
            f"{f.label.removesuffix(' %')} ({subset})": [
                "Multiline",
                [f.tag, *(reference_tag(kind, f.key) for kind in REFERENCE_KINDS)],
            ]
            for f in RELIANCE
        }
        validation = {
            FIGURES[f.val_key].label.removesuffix(" %"): ["Multiline", [f.val_tag]] for f in RELIANCE if f.val_key
        }
        layout = {
            f"Reliance per epoch on the {subset}: corrected model, {references}": test,
            "Reliance per epoch on the validation images (with the pool's confounders)": validation,
        }
        if rounds_on is not None:
            layout[f"Per round (step: corrections so far) on the {rounds_on}: corrected model, {references}"] = {
                FIGURES[key].label.removesuffix(" %"): [
                    "Multiline",
                    [f"Round/{key}", *(round_reference_tag(kind, key) for kind in REFERENCE_KINDS)],
                ]
                for key in ROUND_CHARTED
            }
        self.writer.add_custom_scalars(layout)

    def images(self, batches: dict[str, torch.Tensor], step: int = 0, n: int = 32) -> None:
        """The first ``n`` images (pixels in [0, 1]) of each batch as one grid,
        eight per row, with grey lines between the images."""
        for tag, x in batches.items():
            cells = torch.nn.functional.pad(x[:n].detach().float(), (GRID_PADDING, 0, GRID_PADDING, 0), value=0.5)
            self.writer.add_images(tag, cells, step)  # TensorBoard's own grid: no torchvision in the job

    def round(self, figures: dict, references: dict[str, dict]) -> None:
        """One interactive round's figures on the whole test set (``Round/*``), at the step of the
        corrections made so far, with the references' on the same images (``kind -> figures``),
        the floor and the ceiling of the rounds' charts."""
        for tag, value in {**round_scalars(figures), **round_reference_scalars(references)}.items():
            if value is not None:
                self.writer.add_scalar(tag, value, figures["corrections"])
        self.writer.flush()

    def hparams(
        self, settings: dict, final_metrics: dict, varied: Collection[str] = (), listed: Collection[str] = ()
    ) -> None:
        """One hparams entry in this run (not the sub-run ``add_hparams`` makes). Its experiment
        marks the settings named in ``varied`` as differing: TensorBoard's HPARAMS lists those
        first and shows the first five; it shows the first five metrics, in ``final_metrics``' order,
        then the tags in ``listed`` (already written, such as the rounds' curves: not written again)."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        metrics = {k: v for k, v in final_metrics.items() if v is not None and math.isfinite(v)}
        experiment, start, end = hparams_summary(clean, {**metrics, **dict.fromkeys(listed, 0.0)})
        for summary in (varied_first(experiment, varied), start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def varied_first(experiment: Summary, varied: Collection[str]) -> Summary:
    """The hparams experiment summary with the settings in ``varied`` marked as differing and
    listed first (TensorBoard orders them by that mark, then by name; without it, by name alone)."""
    data = HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    infos = []
    for info in data.experiment.hparam_infos:
        marked = HParamInfo()
        marked.CopyFrom(info)
        marked.differs = info.name in varied
        infos.append(marked)
    infos.sort(key=lambda info: not info.differs)
    data.experiment.ClearField("hparam_infos")
    data.experiment.hparam_infos.extend(infos)
    return Summary(
        value=[
            Summary.Value(tag=hparams_metadata.EXPERIMENT_TAG, metadata=hparams_metadata.create_summary_metadata(data))
        ]
    )


def round_scalars(figures: dict) -> dict:
    """TensorBoard tag -> value of a round's figures: clean test accuracy, reliance figures and
    their shares of the shortcut removed (``Round/dot_flip_rate``, ``Round/shortcut_removed_dot_flip_rate``)."""
    removed = figures["shortcut_removed"]
    return {
        **{f"Round/{key}": figures[key] for key in ROUND_CHARTED},
        **{f"Round/shortcut_removed_{f.key}": removed[f.key] for f in RELIANCE},
    }


def round_reference_tag(kind: str, key: str) -> str:
    """The TensorBoard tag of a reference model's figure on the rounds' charts, e.g. ``Round/oracle_dot_flip_rate``."""
    return f"Round/{kind}_{key}"


def round_reference_scalars(references: dict[str, dict]) -> dict:
    """TensorBoard tag -> value of the references' figures on the whole test set, one point per
    round: the rounds' charts draw them as lines (an absent oracle's figures are None)."""
    return {
        round_reference_tag(kind, key): references[kind].get(key) for kind in REFERENCE_KINDS for key in ROUND_CHARTED
    }


def round_tags(rounds: list[dict]) -> list[str]:
    """The ``Round/*`` tags the rounds wrote (none for a job of one round)."""
    return [tag for tag, value in round_scalars(rounds[-1]).items() if value is not None] if rounds else []


def round_line(figures: dict, n_rounds: int, record: dict) -> str:
    """The log line of a finished round: its corrections so far, the clean test accuracy and
    the headline reliance figure with its share of the shortcut removed, on the whole test set."""
    found = headline(figures)
    removed = "" if found is None else figures["shortcut_removed"].get(found[0].key)
    share = "" if removed in ("", None) else f" (shortcut removed {removed:.2f})"
    return (
        f"round {figures['round']}/{n_rounds}: {figures['corrections']} corrections, "
        f"clean test accuracy {100 * figures['test_accuracy']:.2f}%, {headline_text(figures)}{share}"
        f" (confounded {headline_text(record['confounded'])}, oracle {headline_text(record['oracle'])})"
    )


def write_metrics(directory: Path, record: dict) -> None:
    atomic_write_json(record, Path(directory) / METRICS_FILE)


def validation_text(metrics: dict) -> str:
    """An epoch's validation figures: clean, and where there is a pool, on the dotted validation
    images, labelled as the job's summary labels them at the kept epoch."""
    shown = [f"loss {metrics['val_loss']:.4f}", f"accuracy {100 * metrics['val_accuracy']:.2f}%"]
    for f in RELIANCE:
        value = metrics.get(f.val_key.removeprefix("best_")) if f.val_key else None
        if value is not None:
            figure = FIGURES[f.val_key]
            shown.append(f"{figure.label.removesuffix(' %')} {figure.text(value)}")
    return ", ".join(shown)


def epoch_line(epoch: int, max_epochs: int, metrics: dict, reasons: dict, subset: str) -> str:
    """The log line of one epoch, each figure under the images it is measured on; epoch 0 is
    the starting (confounded) model."""
    measured = f"validation: {validation_text(metrics)}; {subset}: {headline_text(reasons)}"
    if epoch == 0:
        return f"epoch 0/{max_epochs} (start): {measured}"
    return (
        f"epoch {epoch}/{max_epochs}: train loss {metrics['train_loss']:.4f} "
        f"(confounded {metrics['train_loss_confounded']:.4f}, corrected {metrics['train_loss_corrected']:.4f}), "
        f"train accuracy {100 * metrics['train_accuracy']:.2f}%; {measured} ({metrics['seconds']:.1f} s)"
    )


class EpochRecorder:
    """``on_epoch`` of a job's fit: after every epoch, its metrics, the reliance
    figures with the share of the shortcut removed and the references (flat
    lines in the Reliance charts), explanation grids, and one log line.

    It is given what it records: ``measure(attributions)``, the reliance figures of the
    model being fine-tuned (on the explainer's monitored test images, named by ``subset``;
    the attribution figures only when ``attributions``), ``explain()``, its explanation
    grids, and ``references`` (``kind -> figures`` on the same images). The attribution figures and
    grids are made every ``attribution_every`` epochs; epoch 0 is the confounded model,
    whose figures are already known. ``rounds_on`` names the images of the rounds' charts
    (None: a job of one round has none).
    """

    def __init__(
        self,
        recorder: RunRecorder,
        measure: Callable[[bool], dict],
        explain: Callable[[], dict[str, torch.Tensor]],
        references: dict[str, dict],
        attribution_every: int,
        max_epochs: int,
        subset: str,
        rounds_on: str | None = None,
    ):
        self.recorder, self.measure, self.explain, self.references = recorder, measure, explain, references
        self.attribution_every, self.max_epochs, self.subset = attribution_every, max_epochs, subset
        self.reason_seconds: list[float] = []
        self.step, self.start = 0, references["confounded"]
        recorder.reference_layout(subset, rounds_on)

    def begin_round(self, step: int, start: dict | None) -> None:
        """The next fit's epochs go to steps ``step + epoch``; its epoch 0 has the figures
        ``start`` (those of the model the round starts from; None: measured)."""
        self.step, self.start = step, start

    def __call__(self, epoch: int, metrics: dict) -> None:
        began = time.perf_counter()
        attributions = epoch % self.attribution_every == 0
        reasons = self.start if epoch == 0 and self.start is not None else self.measure(attributions)
        if attributions:
            views = self.explain()
            self.recorder.images({f"Explanations/{view}": x for view, x in views.items()}, step=self.step + epoch)
        if epoch > 0:
            self.reason_seconds.append(time.perf_counter() - began)
        removed = shortcut_removed_all(self.references["confounded"], reasons, self.references["oracle"])
        scalars = {**reliance_scalars(reasons, removed), **reference_scalars(self.references)}
        self.recorder.epoch(self.step + epoch, {**metrics, **scalars})
        log.info("%s", epoch_line(epoch, self.max_epochs, metrics, reasons, self.subset))

    def mean_reason_seconds(self) -> float | None:
        return sum(self.reason_seconds) / len(self.reason_seconds) if self.reason_seconds else None
