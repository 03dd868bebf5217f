"""Per-job records: TensorBoard scalars, image grids and the hparams entry,
all in the job's own folder, the machine-readable ``metrics.json``, and what
a job records after every epoch (``EpochRecorder``)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from xilsweep.files import atomic_write_json
from xilsweep.reasons import REASON_TAGS, shortcut_removed_all, view_images

log = logging.getLogger("xilsweep")

METRICS_FILE = "metrics.json"
GRID_PADDING = 2  # pixels of grey above and left of each image in a grid

# metrics-dict name -> TensorBoard tag, as in the experiment guide
EPOCH_TAGS = {
    "train_loss": "Loss/train_epoch",
    "train_loss_confounded": "Loss/train_confounded",
    "train_loss_corrected": "Loss/train_corrected",
    "val_loss": "Loss/val_epoch",
    "train_accuracy": "Accuracy/train_epoch",
    "val_accuracy": "Accuracy/val_epoch",
    "val_dotted_accuracy": "Accuracy/val_dotted",
    "val_dot_flip_rate": "Reasons/val_dot_flip_rate",
    "k": "Sampler/k",
}


class RunRecorder:
    """Writes one job's TensorBoard run directly into its output folder.

    Events go into ``directory`` itself, so TensorBoard pointed at a sweep
    folder shows one run per job, named after the job folder.
    """

    def __init__(self, directory: Path, purge_step: int | None = None):
        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge_step)

    def epoch(self, epoch: int, metrics: dict) -> None:
        for name, value in metrics.items():
            tag = EPOCH_TAGS.get(name) or (name if "/" in name else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def reference_layout(self, tags: dict) -> None:
        """One TensorBoard chart per reliance metric (custom scalars tab) with
        the job's figure between the oracle's (floor) and the confounded model's (ceiling)."""
        self.writer.add_custom_scalars(
            {"Reliance": {key: ["Multiline", [tag, f"Confounded/{key}", f"Oracle/{key}"]] for key, tag in tags.items()}}
        )

    def images(self, batches: dict[str, torch.Tensor], step: int = 0, n: int = 32) -> None:
        """The first ``n`` images (pixels in [0, 1]) of each batch as one grid,
        eight per row, with grey lines between the images."""
        for tag, x in batches.items():
            cells = torch.nn.functional.pad(x[:n].detach().float(), (GRID_PADDING, 0, GRID_PADDING, 0), value=0.5)
            self.writer.add_images(tag, cells, step)  # TensorBoard's own grid: no torchvision in the job

    def hparams(self, settings: dict, final_metrics: dict) -> None:
        """One hparams entry in this run (not the sub-run ``add_hparams`` makes)."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        metrics = {k: v for k, v in final_metrics.items() if v is not None and math.isfinite(v)}
        for summary in hparams_summary(clean, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def reliance_text(reasons: dict) -> str:
    """The epoch log's reliance figure: the dot flip rate, or without a confounded
    class (Decoy-MNIST: no flip rate) the dotted test accuracy."""
    flip = reasons["dot_flip_rate"]
    if flip is None:
        return f"dotted test accuracy {100 * reasons['test_dotted_accuracy']:.2f}%"
    return f"dot flip rate {flip:.3f}"


def write_metrics(directory: Path, record: dict) -> None:
    atomic_write_json(record, Path(directory) / METRICS_FILE)


class EpochRecorder:
    """``on_epoch`` of a job's fit: after every epoch, its metrics, the reliance
    figures with the share of the shortcut removed and the references (flat
    lines in the Reliance charts), explanation grids, and one log line.

    The forward-only reliance figures are computed every epoch, the
    attribution figures and grids every ``explainer.attribution_every`` epochs,
    on the explainer's monitored test images and read against the references'
    figures on the same images; epoch 0 is the confounded model, whose figures
    are already known.
    """

    def __init__(self, recorder: RunRecorder, job, confounded: dict, oracle: dict, resuming: bool):
        self.recorder, self.job, self.confounded, self.oracle = recorder, job, confounded, oracle
        self.references = {
            f"{kind.title()}/{key}": reference[key]
            for kind, reference in (("confounded", confounded), ("oracle", oracle))
            for key in REASON_TAGS
        }
        self.shown = view_images(job.data, job.pool.corrected, job.pool.original, job.confounded_class)
        self.reason_seconds: list[float] = []
        recorder.reference_layout(REASON_TAGS)
        if not resuming:
            eights = job.data.train.subset(job.data.train.labels == 1)
            recorder.images(
                {
                    "Images/confounded_samples": eights.x,
                    "Images/corrected_original": job.pool.original.x,
                    "Images/corrected_samples": job.pool.corrected.x,
                }
            )

    def __call__(self, epoch: int, metrics: dict) -> None:
        began = time.perf_counter()
        explainer, model = self.job.explainer, self.job.model
        attributions = epoch % explainer.attribution_every == 0
        reasons = self.confounded if epoch == 0 else self.job.reasons(model, attributions, monitor=True)
        if attributions:
            self.recorder.images(
                {f"Explanations/{view}": x for view, x in explainer.views(model, self.shown).items()}, step=epoch
            )
        if epoch > 0:
            self.reason_seconds.append(time.perf_counter() - began)
        removed = shortcut_removed_all(self.confounded, reasons, self.oracle)
        self.recorder.epoch(
            epoch,
            {
                **metrics,
                **{tag: reasons[key] for key, tag in REASON_TAGS.items()},
                **{f"Shortcut_removed/{key}": value for key, value in removed.items()},
                **self.references,
            },
        )
        max_epochs = self.job.trainer.max_epochs
        if epoch == 0:
            log.info(
                "epoch 0/%d (start): val loss %.4f, val accuracy %.2f%%",
                max_epochs,
                metrics["val_loss"],
                100 * metrics["val_accuracy"],
            )
        else:
            log.info(
                "epoch %d/%d: train loss %.4f (confounded %.4f, corrected %.4f), train accuracy %.2f%%, "
                "val loss %.4f, val accuracy %.2f%%, %s (%.1f s)",
                epoch,
                max_epochs,
                metrics["train_loss"],
                metrics["train_loss_confounded"],
                metrics["train_loss_corrected"],
                100 * metrics["train_accuracy"],
                metrics["val_loss"],
                100 * metrics["val_accuracy"],
                reliance_text(reasons),
                metrics["seconds"],
            )

    def mean_reason_seconds(self) -> float | None:
        return sum(self.reason_seconds) / len(self.reason_seconds) if self.reason_seconds else None
