"""``python -m xilsweep.explain RUN_DIR``: explanation figures of a finished run, for papers.

The run's data, user-corrected pool, confounded model, oracle and explainer are rebuilt by
``xilsweep.job.assemble`` from the run's own config (``RUN_DIR/.hydra/``); the corrected
weights come from ``RUN_DIR/model.pth``. Written into ``RUN_DIR/explanations/``, each as PNG
and PDF: ``before_after`` (dotted test images, half of the confounded class) and one figure
per view of ``xilsweep.reasons.view_images`` (``corrected_samples``, ``corrected_original``,
``test_confounded_class``, ``test_other_classes``; ``test_clean`` without a confounded class).
A figure's first row shows the images with their true labels; each further row one model's
explanations (the confounded model, the corrected one, the oracle) with its predicted label
and probability. ``--confounded`` leaves the corrected model out (for a run without
``model.pth``) and writes into ``RUN_DIR/explanations/confounded/``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from xilsweep.config import CONF_DIR
from xilsweep.data import Split
from xilsweep.errors import DataError
from xilsweep.job import ConfigError, Job, assemble
from xilsweep.pretrain import load_weights
from xilsweep.reasons import TARGETS, Explainer, overlay, view_images
from xilsweep.training import predict_logits

OUTPUT_DIR = "explanations"
MODEL_FILE = "model.pth"
FORMATS = ("png", "pdf")
# figure name -> what its images are, for its title
SUBJECTS = {
    "before_after": "dotted test images",
    "corrected_samples": "the pool's samples after the user's correction",
    "corrected_original": "the pool's samples before the correction",
    "test_confounded_class": "clean test images of the confounded class",
    "test_other_classes": "clean test images of the other classes",
    "test_clean": "clean test images",
}
TILE_INCHES, LABEL_INCHES, BAR_INCHES, TITLE_INCHES, TEXT_INCHES, NOTE_INCHES = 0.85, 1.0, 0.9, 0.6, 0.2, 0.3
WRONG = "#c00000"  # a wrong prediction's tile text
NOTE = "Above each image its true class; above each map the model's predicted class and its probability p (red: wrong)."


def run_config(run_dir: Path, explainer: str | None = None) -> DictConfig:
    """The run's config: its saved values over the current defaults of the
    options it chose, so runs made before a setting existed still load."""
    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder (no .hydra/config.yaml); pass the folder of one job, "
            "e.g. outputs/runs/<time>_<run name>"
        )
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    if explainer is not None:
        overrides.append(f"explainer={explainer}")
        saved.pop("explainer", None)
    try:  # composed as xilsweep.run's @hydra.main composes it (Hydra's current behaviour)
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"{run_dir}: the run's overrides {overrides} do not compose: {e}") from None
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, saved)


def load_corrected(job: Job, run_dir: Path) -> torch.nn.Module:
    """The run's corrected model: its confounded model with the weights of ``model.pth``."""
    model_file = run_dir / MODEL_FILE
    if not model_file.is_file():
        raise DataError(
            f"{model_file} is missing (the run ended early or had save_model=false); "
            "--confounded explains the run's confounded model without it"
        )
    try:
        state = torch.load(model_file, map_location=job.trainer.device, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise DataError(f"{model_file} is unreadable (truncated or corrupt): {type(e).__name__}") from e
    corrected = copy.deepcopy(job.model)
    load_weights(corrected, state, model_file)
    return corrected


def shown_views(job: Job, n: int) -> dict[str, Split]:
    """The images of every view of ``view_images``, with their labels: asked about the images'
    positions in the pool's corrected samples, their originals and the test images (numbered
    one after the other) instead of the images, it names the positions each view shows."""
    sources = [job.pool.corrected, job.pool.original, job.data.test]
    ends = torch.tensor([len(s) for s in sources]).cumsum(0).tolist()
    numbered = [Split(torch.arange(end - len(s), end), s.targets, s.mask) for s, end in zip(sources, ends, strict=True)]
    chosen = view_images(replace(job.data, test=numbered[2]), numbered[0], numbered[1], job.confounded_class, n)
    every = Split(*(torch.cat([getattr(s, part) for s in sources]) for part in ("x", "targets", "mask")))
    return {name: every.subset(positions) for name, positions in chosen.items()}


def dotted_examples(test_dotted: Split, confounded_class: int | None, n: int) -> Split:
    """Up to ``n`` dotted test images, half of the confounded class and half of the others."""
    c, labels = confounded_class, test_dotted.labels
    if c is None:
        return test_dotted.subset(torch.arange(min(n, len(test_dotted))))
    in_class, in_others = (torch.nonzero(chosen).flatten() for chosen in (labels == c, labels != c))
    return test_dotted.subset(torch.cat([in_class[: n // 2], in_others[: n - n // 2]]))


def class_names(job: Job) -> list[str]:
    """What a reader calls each class index: the data's class names (08MNIST's: 0 and 8)."""
    return list(job.data.class_names)


@dataclass
class Explained:
    """One model's row of a figure: its overlays (``reasons.overlay``), predicted classes and their probabilities."""

    overlays: torch.Tensor
    predicted: torch.Tensor
    probability: torch.Tensor


def explain(explainer: Explainer, model: torch.nn.Module, shown: Split, target: str) -> Explained:
    """``model``'s maps of ``shown`` for the true (``target=label``) or the predicted class."""
    device = next(model.parameters()).device
    probability, predicted = predict_logits(model, shown.x.to(device)).softmax(1).max(1)
    explained = shown.labels if target == "label" else predicted
    maps = explainer.attribute(model, shown.x, explained).cpu()
    return Explained(overlay(shown.x, maps), predicted.cpu(), probability.cpu())


def attribution_colours() -> ListedColormap:
    """The overlay's colours for a map value of 0 to 1 over a black pixel: the colour scale."""
    ramp = torch.linspace(0, 1, 256).view(1, 1, 1, -1)
    return ListedColormap(overlay(torch.zeros_like(ramp), ramp)[0, :, 0].T.numpy())


def hide_frame(ax) -> None:
    """No ticks or frame; unlike ``set_axis_off`` this keeps the row label (the y label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw(title: str, shown: Split, rows: dict[str, Explained], names: list[str]) -> Figure:
    """The figure: the images with their true labels, then a row per model with its predicted
    label and probability (red where wrong), and the colour scale of the maps."""
    n_rows, n_cols = 1 + len(rows), len(shown)
    width = LABEL_INCHES + n_cols * TILE_INCHES + BAR_INCHES
    height = TITLE_INCHES + n_rows * (TILE_INCHES + TEXT_INCHES) + NOTE_INCHES
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=LABEL_INCHES / width,
        right=1 - BAR_INCHES / width,
        top=1 - TITLE_INCHES / height,
        bottom=NOTE_INCHES / height,
        wspace=0.15,
        hspace=TEXT_INCHES / TILE_INCHES,
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    labels = shown.labels.tolist()
    for i, (ax, image, label) in enumerate(zip(axes[0], shown.x, labels, strict=True)):
        if len(image) == 3:  # a colour image as it is, any other channel count as gray
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1), interpolation="nearest")
        else:
            ax.imshow(image.mean(0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"true {names[label]}", fontsize=7, pad=2)
        if i == 0:
            ax.set_ylabel("image", rotation=0, ha="right", va="center", fontsize=9)
    for axes_row, (row_name, row) in zip(axes[1:], rows.items(), strict=True):
        for i, ax in enumerate(axes_row):
            ax.imshow(row.overlays[i].permute(1, 2, 0).clamp(0, 1), interpolation="nearest")
            predicted = int(row.predicted[i])
            colour = "black" if predicted == labels[i] else WRONG
            ax.set_title(f"pred {names[predicted]}, p={row.probability[i]:.2f}", fontsize=7, pad=2, color=colour)
        axes_row[0].set_ylabel(row_name, rotation=0, ha="right", va="center", fontsize=9)
    for ax in axes.flat:
        hide_frame(ax)
    top, bottom = axes[1, -1].get_position(), axes[-1, -1].get_position()
    bar = fig.add_axes((top.x1 + 0.15 / width, bottom.y0, 0.12 / width, top.y1 - bottom.y0))
    scale = fig.colorbar(ScalarMappable(Normalize(0, 1), attribution_colours()), cax=bar, ticks=[0, 0.5, 1])
    scale.set_label("attribution, scaled to\neach image's maximum", fontsize=7)
    scale.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.text(LABEL_INCHES / width, 0.08 / height, NOTE, fontsize=7)
    return fig


def save(fig: Figure, stem: Path, dpi: int) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    return paths


def write_explanations(
    run_dir: Path,
    confounded: bool = False,
    explainer: str | None = None,
    target: str | None = None,
    n: int = 8,
    dpi: int = 200,
) -> list[Path]:
    """Write the figures of one run (see the module docstring); returns their paths."""
    job = assemble(run_config(run_dir, explainer))
    models = {"confounded\nmodel": job.model}
    if not confounded:
        models[f"corrected\nmodel\n({job.loss.name})"] = load_corrected(job, run_dir)
    if job.oracle_model is not None:  # the data set may have no oracle
        models["oracle"] = job.oracle_model
    target = target or job.explainer.target
    out = run_dir / OUTPUT_DIR / ("confounded" if confounded else "")
    figures = {"before_after": dotted_examples(job.data.test_dotted, job.confounded_class, n)}
    figures.update(shown_views(job, n))
    names, explained = class_names(job), "true" if target == "label" else "predicted"
    written = []
    for name, shown in figures.items():
        rows = {row: explain(job.explainer, model, shown, target) for row, model in models.items()}
        title = f"{run_dir.name}\n{job.explainer.name} maps of the {explained} class: {SUBJECTS[name]}"
        written += save(draw(title, shown, rows, names), out / name, dpi)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xilsweep.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the folder of one finished job")
    parser.add_argument(
        "--confounded",
        action="store_true",
        help="leave the corrected model out (a run without model.pth), into explanations/confounded/",
    )
    parser.add_argument(
        "--explainer",
        choices=sorted(p.stem for p in (CONF_DIR / "explainer").glob("*.yaml")),
        help="explanation method (default: the run's own)",
    )
    parser.add_argument(
        "--target", choices=TARGETS, help="the class explained: label (true) or predicted (default: the run's own)"
    )
    parser.add_argument("--n", type=int, default=8, help="images per figure (default 8)")
    parser.add_argument("--dpi", type=int, default=200, help="resolution of the PNGs (default 200)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.dpi < 1:
        parser.error("--n and --dpi must be >= 1")
    try:
        written = write_explanations(args.run_dir, args.confounded, args.explainer, args.target, args.n, args.dpi)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
