"""The report's plots of figures against settings, as PNG files.

A reliance figure is drawn between its floor (the oracle) and ceiling (the confounded
model) as horizontal lines, its share of the shortcut removed between 0 (confounded) and 1
(oracle). Settings laid out on a grid are drawn per method as the mean over seeds with a
band of one standard deviation, each point the best setting of the other settings by the
jobs' selection rule, n in the legend; settings a search drew are drawn as the trials
themselves, never joined by lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from xilsweep import metrics  # noqa: E402
from xilsweep.results.collect import SEED, VAL  # noqa: E402
from xilsweep.results.pareto import VAL_FLIP  # noqa: E402
from xilsweep.results.select import best_per, condition_keys, method_keys, ranked, setting_jobs  # noqa: E402
from xilsweep.results.tables import heading, setting  # noqa: E402

SHARE_LINES = ((0.0, "confounded (ceiling)", "tab:red"), (1.0, "oracle (floor)", "tab:green"))


@dataclass(frozen=True)
class PlotData:
    """What the plots read: the job table, the summary over seeds, the varied settings, those a
    search drew, and the settings that tell reference models apart (``select.reference_keys``)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    varied: list[str]
    searched: set[str]
    reference_keys: list[str]

    @property
    def done(self) -> pd.DataFrame:
        return self.table[self.table.status == "done"]

    @property
    def methods(self) -> list[str]:
        return method_keys(self.varied)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scale(key: str) -> float:
    """Percent figures are drawn in percent."""
    spec = metrics.FIGURES.get(key)
    return 100.0 if spec is not None and spec.style == "percent" else 1.0


def name_of(values) -> str:
    return " ".join(setting(v) for v in (values if isinstance(values, tuple) else (values,)))


def n_text(counts) -> str:
    low, high = int(min(counts)), int(max(counts))
    return f"n={low}" if low == high else f"n={low}-{high}"


def reference_lines(ax, data: PlotData, key: str) -> None:
    """Floor and ceiling of reliance figure ``key`` (mean over the distinct reference models, per
    reference group), or 0 and 1 for a share of the shortcut removed."""
    if key.startswith("removed."):
        for value, label, color in SHARE_LINES:
            ax.axhline(value, color=color, linestyle=":", label=f"{label} = {value:g}")
        return
    if key not in {f.key for f in metrics.RELIANCE}:
        return
    done = data.done
    groups = done.groupby(data.reference_keys, sort=False, dropna=False) if data.reference_keys else [((), done)]
    for values, part in groups:
        group = f", {name_of(values)}" if data.reference_keys else ""
        for kind, color in (("confounded", "tab:red"), ("oracle", "tab:green")):
            column = f"{kind}.{key}"
            if column in part and part[column].notna().any():
                models = part.drop_duplicates(f"{kind}.path")[column]
                label = f"{metrics.REFERENCE_LABELS[kind]}{group} ({n_text([models.notna().sum()])})"
                ax.axhline(scale(key) * models.mean(), color=color, linestyle=":", label=label)


def grid_lines(ax, data: PlotData, x: str, key: str) -> bool:
    """Per method, mean ± std over seeds of ``key`` at each value of ``x`` (best other settings);
    methods without ``x`` as a dashed line; True where some point averages several seeds."""
    summary, methods, factor = data.summary, data.methods, scale(key)
    best = best_per(summary[summary[x].notna()], [*methods, x])
    for name, part in best.groupby(methods, sort=False, dropna=False) if methods else [((), best)]:
        part = part[part[f"{key}_mean"].notna()]
        if part.empty:  # a method without this figure (yet): no line
            continue
        mean, std = factor * part[f"{key}_mean"], factor * part[f"{key}_std"].fillna(0)
        line = ax.plot(part[x].astype(float), mean, marker="o", label=f"{name_of(name)} ({n_text(part.n)})".lstrip())
        ax.fill_between(part[x].astype(float), mean - std, mean + std, color=line[0].get_color(), alpha=0.2)
    without = summary[summary[x].isna()]
    for name, part in without.groupby(methods, sort=False, dropna=False) if methods and len(without) else []:
        row = ranked(part).iloc[0]
        mean, std = factor * row[f"{key}_mean"], factor * (0 if pd.isna(row[f"{key}_std"]) else row[f"{key}_std"])
        line = ax.axhline(mean, linestyle="--", color="gray", label=f"{name_of(name)} (no {x}, n={int(row.n)})")
        ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.15)
    return bool((summary.n > 1).any())


def trial_points(ax, data: PlotData, x: str, key: str) -> None:
    """Every finished trial's ``key`` against ``x``, a colour per method, not joined."""
    done = data.done[data.done[x].notna()]
    for name, part in done.groupby(data.methods, sort=False, dropna=False) if data.methods else [((), done)]:
        label = f"{name_of(name)} ({len(part)} trials)" if data.methods else f"{len(part)} trials"
        ax.scatter(part[x].astype(float), scale(key) * part[key], alpha=0.7, label=label)


def log_scale(values: pd.Series) -> bool:
    values = values.dropna().astype(float)
    return bool(len(values)) and values.min() > 0 and values.max() / values.min() >= 10


def plot_against(data: PlotData, x: str, keys: list[str], path: Path, xlabel: str) -> bool:
    """A panel per figure of ``keys`` against setting ``x``; False where no method ran two values of ``x``."""
    keys = [k for k in keys if k in data.done and data.done[k].notna().any()]
    if not keys or x not in data.varied:
        return False
    done = data.done[data.done[x].notna()]
    counts = done.groupby(data.methods, dropna=False)[x].nunique() if data.methods else done[[x]].nunique()
    if not len(counts) or counts.max() < 2:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        spread = False if x in data.searched else grid_lines(ax, data, x, key)
        if x in data.searched:
            trial_points(ax, data, x, key)
        reference_lines(ax, data, key)
        ax.set_xscale("log" if log_scale(done[x]) else "linear")
        ax.set_xlabel(xlabel + (" (drawn by the search)" if x in data.searched else ""))
        ax.set_ylabel(heading(key) + (" (mean ± std over seeds)" if spread else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save(fig, path)
    return True


def method_points(ax, data: PlotData, key: str) -> list[str]:
    """Per method (x) and condition (a series each), the chosen setting's seeds and their mean ± std."""
    conditions, methods = condition_keys(data.varied), data.methods
    best = best_per(data.summary, [*conditions, *methods])
    names = list(dict.fromkeys(name_of(tuple(r[k] for k in methods)) for _, r in best.iterrows()))
    series = best.groupby(conditions, sort=False, dropna=False) if conditions else [((), best)]
    width = 0.8 / max(len(series) if conditions else 1, 1)
    keys = [k for k in data.varied if k != SEED]
    for i, (condition, part) in enumerate(series):
        xs, means, stds = [], [], []
        for _, row in part.iterrows():
            values = scale(key) * setting_jobs(data.table, row, keys)[key].dropna()
            position = names.index(name_of(tuple(row[k] for k in methods))) + (i - (len(series) - 1) / 2) * width
            ax.scatter([position] * len(values), values, s=10, color="gray", alpha=0.6, zorder=3)
            xs, means, stds = [*xs, position], [*means, values.mean()], [*stds, values.std()]
        label = ", ".join(f"{k}={setting(v)}" for k, v in zip(conditions, condition if conditions else (), strict=True))
        label = f"{label} ({'mean ± std, ' if part.n.max() > 1 else ''}{n_text(part.n)})".lstrip()
        ax.errorbar(xs, means, yerr=pd.Series(stds).fillna(0), fmt="o", capsize=3, label=label)
    return names


def plot_methods(data: PlotData, keys: list[str], path: Path) -> bool:
    """A panel per figure of ``keys`` for each method's chosen setting (per condition); False
    where the sweep varies no method setting."""
    keys = [k for k in keys if k in data.done and data.done[k].notna().any()]
    if not data.methods or not keys or not len(data.summary):
        return False
    count = data.summary.groupby(data.methods, dropna=False).ngroups
    fig, axes = plt.subplots(1, len(keys), figsize=(max(5.0, 0.6 * count + 2) * len(keys), 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        names = method_points(ax, data, key)
        reference_lines(ax, data, key)
        long = max(map(len, names)) > 10 or len(names) > 6
        ax.set_xticks(range(len(names)), names, rotation=30 if long else 0, ha="right" if long else "center")
        ax.set_xlabel(" ".join(data.methods) + " (each at its chosen setting; gray: seeds)")
        ax.set_ylabel(heading(key))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    save(fig, path)
    return True


def plot_pareto(front: pd.DataFrame, path: Path) -> None:
    """Every finished trial's clean validation accuracy against its validation dot
    flip rate, the non-dominated ones highlighted and joined."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rest, best = front[~front.front], front[front.front].sort_values(VAL_FLIP)
    ax.scatter(rest[VAL_FLIP], 100 * rest[VAL], color="gray", alpha=0.6, label="dominated")
    ax.step(best[VAL_FLIP], 100 * best[VAL], where="post", color="tab:red", marker="o", label="Pareto front")
    ax.set_xlabel("validation dot flip rate (lower: less reliance)")
    ax.set_ylabel("best validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)
