"""Every figure xilsweep records, declared once.

A ``Figure`` is a number a job writes into ``metrics.json``: its key, the
label a person reads (report columns, console), how it is printed and, where
it is drawn per epoch, its TensorBoard tag. A ``RelianceFigure`` is also a
measurement of how much a model rests on the confounder: it is computed by
``Explainer.reasons`` for the corrected model and both references from one
``Evidence`` of a model on dotted images, read between the oracle (floor) and
the confounded model (ceiling) as a share of the shortcut removed, and
cached with the references' reasons under a key that names every reliance
figure (``reliance_key``), so a new figure never meets a cache without it.

Adding a figure is one function and one spec in ``RELIANCE`` (or
``FIGURES``); the explainer, the TensorBoard tags, the console lines, the
report's columns and the references' cache follow (docs/development.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Share of a reliance figure's full range the references must differ by for a share of the
# shortcut removed to be read from them.
MIN_GAP = 0.05
REFERENCE_KINDS = ("confounded", "oracle")  # the ceiling and the floor of every reliance figure
REFERENCE_LABELS = {"oracle": "oracle (floor)", "confounded": "confounded (ceiling)"}


@dataclass(frozen=True)
class Figure:
    """A recorded number: ``key`` in metrics.json, ``label`` for people, ``style`` how it is
    printed (``percent``: a fraction shown in percent; ``decimal``: 3 decimals, 1 from 10 up;
    ``seconds``; ``loss``: 3 significant digits; ``count``), ``tag`` in TensorBoard."""

    key: str
    label: str
    style: str = "decimal"
    tag: str | None = None

    def format(self, value, magnitude: float | None = None) -> str:
        """``value`` as a table cell; ``magnitude``: the mean a std is printed beside."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if self.style == "percent":
            return f"{100 * value:.2f}"
        if self.style == "seconds":
            return f"{value:.2f}"
        if self.style == "loss":
            return f"{value:.3g}"
        if self.style == "count":
            return f"{value:g}"
        return f"{value:.{3 if abs(value if magnitude is None else magnitude) < 10 else 1}f}"

    def text(self, value) -> str:
        """``value`` for a console line: with its unit, ``n/a`` when missing."""
        if value is None:
            return "n/a"
        return f"{self.format(value)}%" if self.style == "percent" else self.format(value)


@dataclass(frozen=True)
class Evidence:
    """What a model does on dotted images: ``dotted_pred`` and ``labels`` of every dotted
    image, ``has_dots`` which carry a confounder; ``clean_pred`` the predictions on the same
    images without it, among ``others`` (dotted, outside ``confounded_class``; None without
    one); ``maps`` and ``masks`` the explanations of the explained images and their
    confounder masks (None when attributions are not computed)."""

    dotted_pred: torch.Tensor
    labels: torch.Tensor
    has_dots: torch.Tensor
    confounded_class: int | None
    clean_pred: torch.Tensor | None = None
    others: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    threshold: float | str = "mean"


@dataclass(frozen=True)
class RelianceFigure(Figure):
    """A figure of reliance on the confounder. ``compute(evidence)`` returns it (None where it
    does not apply); ``span`` is its full range (a reference gap under ``MIN_GAP * span`` is
    too small to read a share against); ``needs_attributions``: computed from explanation
    maps (every ``explainer.attribution_every`` epochs) rather than forward passes;
    ``val_key``/``val_tag``: the same figure on the dotted validation images, for forward
    figures; ``version``: raise it when the computation changes (cached references are
    recomputed)."""

    span: float = 1.0
    needs_attributions: bool = False
    compute: Callable[[Evidence], float | None] | None = None
    val_key: str | None = None
    val_tag: str | None = None
    version: int = 1


def dot_flip_rate(
    clean_pred: torch.Tensor, dotted_pred: torch.Tensor, labels: torch.Tensor, confounded_class: int
) -> float | None:
    """Among images outside the confounded class that the model gets right
    without dots, the fraction it assigns to the confounded class once the
    dots are added; None when there are no such images."""
    eligible = (labels != confounded_class) & (clean_pred == labels)
    if not eligible.any():
        return None
    return (dotted_pred[eligible] == confounded_class).float().mean().item()


def dotted_accuracy(evidence: Evidence) -> float:
    return (evidence.dotted_pred == evidence.labels).float().mean().item()


def flip_rate(evidence: Evidence) -> float | None:
    if evidence.confounded_class is None:
        return None
    others = evidence.others
    return dot_flip_rate(
        evidence.clean_pred, evidence.dotted_pred[others], evidence.labels[others], evidence.confounded_class
    )


def per_image_max(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).amax(1).view(-1, *[1] * (maps.dim() - 1))


def attribution_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of non-negative attribution that lies inside the
    mask (0 to 1); an all-zero map explains nothing and counts as 0."""
    positive = maps.clamp_min(0).flatten(1)
    total = positive.sum(1)
    inside = (positive * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1]: negatives clipped, then (a - min) / (max - min) as in
    the XIL typology code (Friedrich et al. 2023); a constant map becomes 0."""
    positive = maps.clamp_min(0)
    low = -per_image_max(-positive)
    span = per_image_max(positive) - low
    return torch.where(span > 0, (positive - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def wrong_reason_score(maps: torch.Tensor, masks: torch.Tensor, threshold: float | str = "mean") -> torch.Tensor:
    """Per image, the percentage (0 to 100) of mask pixels that are active in
    the normalised map binarised at ``threshold``: a number in [0, 1], or
    ``"mean"``, the mean normalised attribution over all non-zero maps of the
    batch (the literature's choice). All-zero maps have no active pixels (0)."""
    norm = normalise(maps)
    if threshold == "mean":
        explained = norm.flatten(1).amax(1) > 0
        threshold = norm[explained].mean() if explained.any() else 0.0
    active = (norm > threshold) & masks.bool()
    return 100 * active.flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1)


def mean_attribution_in_mask(evidence: Evidence) -> float:
    return attribution_in_mask(evidence.maps, evidence.masks).mean().item()


def mean_wrong_reason_score(evidence: Evidence) -> float:
    return wrong_reason_score(evidence.maps, evidence.masks, evidence.threshold).mean().item()


# The registries every consumer reads at run time: ``register`` a figure and the explainer,
# TensorBoard, the console, the report and the references' cache key have it.
RELIANCE: list[RelianceFigure] = []  # in the order they are shown; the first that applies is the headline
FIGURES: dict[str, Figure] = {}  # every figure of a job's record and report row, by key
# Shares of the shortcut removed the report shows (by the behaviour and by the explanation):
# reliance figure -> its name in the share's label.
REMOVED_SHOWN = {
    "dot_flip_rate": "flip rate",
    "test_dotted_accuracy": "dotted accuracy",
    "attribution_in_mask": "attribution",
}


def register(figure: Figure) -> Figure:
    """Add ``figure`` to the registries (a reliance figure to ``RELIANCE`` too)."""
    if figure.key in FIGURES:
        raise ValueError(f"a figure named {figure.key!r} is already registered")
    FIGURES[figure.key] = figure
    if isinstance(figure, RelianceFigure):
        RELIANCE.append(figure)
    return figure


def removed_figure(key: str) -> Figure:
    """The share of the shortcut removed, read from reliance figure ``key``."""
    return Figure(f"removed.{key}", f"shortcut removed ({REMOVED_SHOWN[key]})")


def reliance(key: str) -> RelianceFigure:
    return next(f for f in RELIANCE if f.key == key)


for _figure in (  # in the order of the report's columns
    Figure("epochs_run", "epochs", "count"),
    Figure("train_loss", "last train loss", "loss"),
    Figure("train_accuracy", "last train acc %", "percent"),
    Figure("best_val_accuracy", "best val acc %", "percent"),
    Figure("best_val_dotted_accuracy", "dotted val acc %", "percent"),
    Figure("best_val_dot_flip_rate", "val dot flip rate"),
    Figure("test_accuracy", "test acc %", "percent"),
    RelianceFigure(
        "dot_flip_rate",
        "dot flip rate",
        tag="Reasons/dot_flip_rate",
        compute=flip_rate,
        val_key="best_val_dot_flip_rate",
        val_tag="Reasons/val_dot_flip_rate",
    ),
    RelianceFigure(
        "test_dotted_accuracy",
        "dotted test acc %",
        style="percent",
        tag="Accuracy/test_dotted",
        compute=dotted_accuracy,
        val_key="best_val_dotted_accuracy",
        val_tag="Accuracy/val_dotted",
    ),
    RelianceFigure(
        "attribution_in_mask",
        "attribution in mask",
        tag="Reasons/attribution_in_mask",
        needs_attributions=True,
        compute=mean_attribution_in_mask,
    ),
    RelianceFigure(
        "wrong_reason_score",
        "wrong-reason score",
        tag="Reasons/wrong_reason_score",
        span=100.0,
        needs_attributions=True,
        compute=mean_wrong_reason_score,
    ),
    *(removed_figure(key) for key in REMOVED_SHOWN),
    Figure("seconds_per_epoch", "s/epoch", "seconds"),
    Figure("best_val_loss", "best val loss", "loss"),
):
    register(_figure)

# Per-epoch training figures: metrics-dict name -> TensorBoard tag, as in the experiment guide.
TRAINING_TAGS = {
    "train_loss": "Loss/train_epoch",
    "train_loss_confounded": "Loss/train_confounded",
    "train_loss_corrected": "Loss/train_corrected",
    "val_loss": "Loss/val_epoch",
    "train_accuracy": "Accuracy/train_epoch",
    "val_accuracy": "Accuracy/val_epoch",
    "k": "Sampler/k",
}


def epoch_tags() -> dict[str, str]:
    """Every per-epoch metric's TensorBoard tag: training figures and validation reliance figures."""
    validation = {f.val_key.removeprefix("best_"): f.val_tag for f in RELIANCE if f.val_key}
    return {**TRAINING_TAGS, **validation}


def figure(key: str) -> Figure | None:
    """The spec of a report column: a figure, or a reference's (``oracle.<key>``)."""
    kind, _, rest = key.partition(".")
    return FIGURES.get(rest) if kind in REFERENCE_KINDS else FIGURES.get(key)


def shortcut_removed(
    confounded: float | None, corrected: float | None, oracle: float | None, span: float = 1.0
) -> float | None:
    """The share of the shortcut removed, ``(confounded - corrected) / (confounded - oracle)``:
    1 = as free of the confounder as the oracle, 0 = no change from the confounded model.
    None where a figure is missing or the references differ by less than ``MIN_GAP * span``,
    too little to measure a share against."""
    if confounded is None or corrected is None or oracle is None or abs(confounded - oracle) < MIN_GAP * span:
        return None
    return (confounded - corrected) / (confounded - oracle)


def shortcut_removed_all(confounded: dict, corrected: dict, oracle: dict) -> dict:
    """``shortcut_removed`` of every reliance figure."""
    return {
        f.key: shortcut_removed(confounded.get(f.key), corrected.get(f.key), oracle.get(f.key), f.span)
        for f in RELIANCE
    }


def reliance_key() -> list:
    """What the cached reference figures depend on besides the explainer's settings."""
    return [[f.key, f.version] for f in RELIANCE]


def headline(figures: dict) -> tuple[RelianceFigure, float] | None:
    """The first reliance figure ``figures`` has a value for (the flip rate; on data without
    a confounded class, such as Decoy-MNIST, the dotted test accuracy)."""
    for f in RELIANCE:
        if not f.needs_attributions and figures.get(f.key) is not None:
            return f, figures[f.key]
    return None


def headline_text(figures: dict) -> str:
    found = headline(figures)
    return "" if found is None else f"{found[0].label.removesuffix(' %')} {found[0].text(found[1])}"
