"""Training curves of the job each method's selection picks: losses, accuracies and the
reliance on the confounder per epoch (the validation figures every epoch records; epoch 0
is the confounded model fine-tuning starts from), the kept epoch marked."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from xilsweep import metrics
from xilsweep.results.collect import STOP_SCORE, TEST, VAL_LOSS, Job, stop_rule
from xilsweep.results.plots import name_of, plt, save
from xilsweep.results.select import STOP_RULES

# The losses of a training history: key and legend.
LOSS_CURVES = (
    ("train_loss", "train"),
    ("train_loss_confounded", "train, confounded part"),
    ("train_loss_corrected", "train, corrected part"),
    ("val_loss", "validation"),
)
ACCURACY_CURVES = (
    ("val_accuracy", "validation"),
    ("train_accuracy", "train"),
    ("val_dotted_accuracy", "dotted validation"),
)


def picked_jobs(jobs: list[Job], table: pd.DataFrame, methods: list[str]) -> list[tuple[str, Job]]:
    """Per method, the finished job with the best validation score (its early stopping's), ties
    to the lower validation loss; named by the method (empty where the sweep has one)."""
    done = table[(table.status == "done") & table[STOP_SCORE].notna()] if STOP_SCORE in table else table.iloc[:0]
    if done.empty:
        return []
    order = [STOP_SCORE, VAL_LOSS] if VAL_LOSS in done else [STOP_SCORE]
    best = done.sort_values(order, ascending=[False, True][: len(order)], kind="stable")
    best = (best.drop_duplicates(methods) if methods else best.head(1)).sort_index()  # in the sweep's order
    return [(name_of(tuple(row[k] for k in methods)) if methods else "", jobs[index]) for index, row in best.iterrows()]


def file_name(method: str) -> str:
    return f"training_curves_{re.sub(r'[^A-Za-z0-9.]+', '_', method) if method else 'best'}.png"


def reliance_curves(history: list[dict]) -> list[tuple[str, str, float]]:
    """The per-epoch validation reliance figures of the history that are not accuracies: key, label, span."""
    keys = [(f.val_key.removeprefix("best_"), f"{f.label} (validation)", f.span) for f in metrics.RELIANCE if f.val_key]
    return [key for key in keys if key[0] not in dict(ACCURACY_CURVES) and any(key[0] in h for h in history)]


def test_line(record: dict) -> str:
    """The kept model's test figures beside its references': clean accuracy and the headline."""
    test = metrics.FIGURES[TEST]
    parts = [f"{test.label.removesuffix(' %')} {test.text(record.get(TEST))}"]
    found = metrics.headline(record)
    if found is not None:
        figure = found[0]
        references = ", ".join(
            f"{kind} {figure.text((record.get(kind) or {}).get(figure.key))}" for kind in ("oracle", "confounded")
        )
        parts.append(f"{figure.label.removesuffix(' %')} {figure.text(found[1])} ({references})")
    return "kept model on the test set: " + ", ".join(parts)


def draw(ax, history: list[dict], curves, factor: float = 1.0) -> None:
    for key, label, *_ in curves:
        points = [(h["epoch"], factor * h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)


def plot_training_curves(job: Job, method: str, path: Path) -> bool:
    """The job's losses (log scale), accuracies and reliance per epoch; False without a history."""
    history = job.metrics.get("history") or []
    if not any("train_loss" in h for h in history):
        return False
    reliance = reliance_curves(history)
    fig, axes = plt.subplots(1, 2 + bool(reliance), figsize=(5.2 * (2 + bool(reliance)), 4.2))
    draw(axes[0], [h for h in history if "train_loss" in h or "val_loss" in h], LOSS_CURVES)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    draw(axes[1], history, ACCURACY_CURVES, factor=100)
    axes[1].set_ylabel("accuracy %")
    if reliance:
        draw(axes[2], history, reliance)
        span = max(curve[2] for curve in reliance)
        axes[2].set_ylim(-0.02 * span, 1.02 * span)  # its full range: the floor and the ceiling in view
        axes[2].set_ylabel("reliance on the confounder")
    kept = job.metrics.get("best_epoch")
    for ax in axes:
        if kept is not None:
            ax.axvline(kept, color="gray", linestyle=":", label=f"kept epoch {kept}")
        ax.set_xlabel("epoch (0: the confounded model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    rule = STOP_RULES.get(stop_rule(job.metrics), stop_rule(job.metrics))
    fig.suptitle(f"{method + ': ' if method else ''}{job.folder.name}, picked by the {rule}\n{test_line(job.metrics)}")
    save(fig, path)
    return True
