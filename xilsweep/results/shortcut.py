"""Is the shortcut removed? Per method (the method settings the sweep varies) and condition
(the pool size), the setting chosen by the jobs' own selection rule, its share of the
shortcut removed with a 95% t-interval over seeds, and the difference against the balanced
loss paired by seed (against the confounded model, the share itself, where the sweep has no
balanced loss or for balanced itself); and balanced against imbalanced the same way, on the
clean test accuracy and the reliance figure.

The reliance read is the headline figure of ``xilsweep.metrics`` (the dot flip rate; on data
without a confounded class, as Decoy-MNIST, the dotted test accuracy) and its share removed
where the specs show one (``metrics.REMOVED_SHOWN``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from xilsweep import metrics
from xilsweep.results.collect import NEVER_IMPROVED, SEED, TEST
from xilsweep.results.select import LOSS, best_per, chosen_keys, condition_keys, method_keys, rows_like, setting_jobs
from xilsweep.results.stats import Interval, paired, t_interval, verdict
from xilsweep.results.tables import heading, pipe_table, setting, spread

BASELINE = "balanced"  # the loss every method is measured against, where the sweep has it
# Shares of the shortcut removed that count as removed (from) and as kept (up to): a method
# whose explanation figures say removed while its behaviour says kept hides the shortcut.
REMOVED_AT, KEPT_AT = 0.5, 0.2
HIDDEN = "an explanation that hides a shortcut the model still uses"


@dataclass(frozen=True)
class Headline:
    """The reliance figure the answers read, its share-removed column (None where the specs
    show none) and whether lower is better (the oracle below the confounded model)."""

    figure: metrics.RelianceFigure
    share: str | None
    lower_is_better: bool


def headline(table: pd.DataFrame) -> Headline | None:
    """The headline reliance figure of the finished jobs (``metrics.headline``'s rule)."""
    done = table[table.status == "done"]
    values = {f.key: next(iter(done[f.key].dropna()), None) for f in metrics.RELIANCE if f.key in done}
    found = metrics.headline(values)
    if found is None:
        return None
    figure = found[0]
    share = metrics.removed_figure(figure.key).key if figure.key in metrics.REMOVED_SHOWN else None
    floor, ceiling = (done.get(f"{kind}.{figure.key}") for kind in ("oracle", "confounded"))
    lower = floor is None or ceiling is None or not floor.mean() > ceiling.mean()
    return Headline(figure, share if share in done else None, lower)


def per_seed(jobs: pd.DataFrame, column: str) -> dict:
    """``seed -> value`` of ``column`` (missing values left out)."""
    if column not in jobs:
        return {}
    return {seed: value for seed, value in zip(jobs[SEED], jobs[column], strict=True) if pd.notna(value)}


def signed(value: float, spec: metrics.Figure) -> str:
    """A difference with its sign; one that prints as zero is +0."""
    text = spec.format(abs(value))
    return ("-" if value < 0 and text.strip("0.") else "+") + text


def interval_text(interval: Interval | None, spec: metrics.Figure, difference: bool = False) -> str:
    """``mean [low, high]`` in the figure's style (a difference signed); one seed: no interval."""
    if interval is None:
        return ""
    show = (lambda v: signed(v, spec)) if difference else spec.format
    if interval.low is None:
        return f"{show(interval.mean)} (1 seed, no interval)"
    return f"{show(interval.mean)} [{show(interval.low)}, {show(interval.high)}]"


def removed_word(share: float | None) -> str:
    if share is None or pd.isna(share):
        return ""
    return "yes" if share >= REMOVED_AT else "no" if share <= KEPT_AT else "partly"


def attribution_shares(jobs: pd.DataFrame) -> list[str]:
    """The shares removed read from explanations (attribution figures) the jobs have."""
    keys = (metrics.removed_figure(k).key for k in metrics.REMOVED_SHOWN if metrics.reliance(k).needs_attributions)
    return [key for key in keys if key in jobs and jobs[key].notna().any()]


def notes(jobs: pd.DataFrame, share: float | None) -> str:
    """The flags of a method's chosen setting: an explanation hiding the shortcut, jobs that never improved."""
    flags = []
    if share is not None and share <= KEPT_AT:
        hiding = [k for k in attribution_shares(jobs) if jobs[k].mean() >= REMOVED_AT]
        flags += [f"{HIDDEN} ({heading(k)} {metrics.FIGURES[k].format(jobs[k].mean())})" for k in hiding]
    never = int((jobs.reason == NEVER_IMPROVED).sum())
    flags += [f"{never} of {len(jobs)} jobs {NEVER_IMPROVED}"] if never else []
    return "; ".join(flags)


def baseline_row(best: pd.DataFrame, row, methods: list[str], conditions: list[str]):
    """The balanced loss's chosen setting to pair ``row`` with: the same conditions and other
    method settings (or at least the same model, whose seeds share the references); None for
    balanced itself or where the sweep has none."""
    if LOSS not in methods or row[LOSS] == BASELINE:
        return None
    candidates = best[best[LOSS] == BASELINE]
    for keys in ([*conditions, *methods], [*conditions, *(k for k in methods if k == "model")]):
        matching = rows_like(candidates, row, [k for k in keys if k != LOSS])
        if len(matching):
            return matching.iloc[0]
    return None


def describe(row, keys: list[str]) -> str:
    parts = [f"{k}={setting(row[k])}" for k in keys if k in row and setting(row[k])]
    return ", ".join(parts)


def comparison(table: pd.DataFrame, jobs: pd.DataFrame, baseline, keys: list[str], share: str):
    """Whom the jobs of a setting are read against and the difference: their share removed minus
    the balanced loss's chosen setting's, paired by seed; or, without that, the share itself
    (the confounded model's is 0)."""
    if baseline is None:
        return "confounded model", t_interval(jobs[share])
    chosen = describe(baseline, chosen_keys(keys))
    name = f"{BASELINE} ({chosen})" if chosen else BASELINE
    return name, paired(per_seed(jobs, share), per_seed(setting_jobs(table, baseline, keys), share))


def method_row(table: pd.DataFrame, best: pd.DataFrame, row, varied: list[str], line: Headline) -> dict:
    """One row of the answer: the method and condition, the setting chosen, its figures and the verdict."""
    keys = [k for k in varied if k != SEED]
    methods, conditions = method_keys(varied), condition_keys(varied)
    jobs = setting_jobs(table, row, keys)
    share, against, difference, spec = None, "", None, None
    if line.share:
        share, spec = t_interval(jobs[line.share]), metrics.FIGURES[line.share]
        baseline = baseline_row(best, row, methods, conditions)
        against, difference = comparison(table, jobs, baseline, keys, line.share)
    return {
        **{k: setting(row[k]) for k in [*conditions, *methods]},
        "setting chosen": describe(row, chosen_keys(varied)),
        "n": str(len(jobs)),
        heading(TEST): spread(jobs[TEST].mean(), jobs[TEST].std(), TEST),
        heading(line.figure.key): spread(jobs[line.figure.key].mean(), jobs[line.figure.key].std(), line.figure.key),
        **({heading(line.share): interval_text(share, spec)} if spec else {}),
        "removed?": removed_word(None if share is None else share.mean),
        "against": against,
        "difference": interval_text(difference, spec, difference=True) if spec else "",
        "verdict": verdict(difference) if difference else "",
        "note": notes(jobs, None if share is None else share.mean),
    }


def method_rows(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], line: Headline) -> list[dict]:
    """Per method and condition, its chosen setting's row (methods in the sweep's order)."""
    best = best_per(summary, [*condition_keys(varied), *method_keys(varied)])
    return [method_row(table, best, row, varied, line) for _, row in best.iterrows()]


def removal_summary(rows: list[dict], varied: list[str], line: Headline) -> str:
    """Which methods remove the shortcut and which keep it, by the share's mean over seeds."""
    named = [*condition_keys(varied), *method_keys(varied)]
    label = heading(line.share)

    def names(word: str) -> str:
        return "; ".join(", ".join(f"{k}={r[k]}" for k in named) or "the sweep" for r in rows if r["removed?"] == word)

    parts = [
        f"removes it ({label} at least {REMOVED_AT}): {names('yes') or 'none'}",
        f"keeps it (at most {KEPT_AT}): {names('no') or 'none'}",
        f"removes part of it: {names('partly') or 'none'}",
    ]
    return "By the mean over seeds, " + "; ".join(parts) + "."


def answer_removal(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], rule: str) -> list[str]:
    """The answer to "is the shortcut removed?", per method and condition: a sentence and a table."""
    title = "**Is the shortcut removed?**"
    line = headline(table)
    if line is None or not len(summary):
        return [f"{title} not enough data: no finished job with a reliance figure."]
    rows = method_rows(table, summary, varied, line)
    shown = pd.DataFrame(rows).fillna("")
    read = (
        f"by the {line.figure.label} and the share of the shortcut removed by it ({heading(line.share)}: mean "
        "[95% t-interval] over seeds), and the share's difference against the balanced loss paired by seed "
        "(against the confounded model: the share itself)"
        if line.share
        else f"by the {line.figure.label} (no share of the shortcut removed recorded)"
    )
    text = f"{title} Each method at its setting chosen by the {rule} (as its early stopping), read {read}."
    if line.share:
        text += " " + removal_summary(rows, varied, line)
    return [text, "", pipe_table(list(shown.columns), [[str(v) for v in r] for r in shown.itertuples(index=False)])]


def loss_pair_row(table: pd.DataFrame, pair: pd.DataFrame, varied: list[str], line: Headline) -> list[str]:
    """Balanced minus imbalanced at one condition, paired by seed: clean test accuracy and the reliance figure."""
    keys = [k for k in varied if k != SEED]
    balanced, imbalanced = (setting_jobs(table, pair.loc[loss], keys) for loss in (BASELINE, "imbalanced"))
    cells = [describe(pair.loc[loss], chosen_keys(varied)) for loss in (BASELINE, "imbalanced")]
    for key, higher_is_better in ((TEST, True), (line.figure.key, not line.lower_is_better)):
        difference = paired(per_seed(balanced, key), per_seed(imbalanced, key))
        spec = metrics.FIGURES[key]
        cells += [interval_text(difference, spec, difference=True), verdict(difference, higher_is_better)]
    return cells


def answer_balanced(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], rule: str) -> list[str]:
    """Does balanced beat imbalanced? Per condition (pool size, other method settings), each loss
    at its setting chosen by the selection rule, the differences paired by seed."""
    title = "**Does balanced beat imbalanced?**"
    line = headline(table)
    if LOSS not in varied or line is None or not {BASELINE, "imbalanced"} <= set(summary[LOSS]):
        return [f"{title} not enough data: the sweep has not both the balanced and the imbalanced loss finished."]
    conditions = [*condition_keys(varied), *(k for k in method_keys(varied) if k != LOSS)]
    best = best_per(summary[summary[LOSS].isin([BASELINE, "imbalanced"])], [*conditions, LOSS])
    rows = []
    for values, part in best.groupby(conditions, sort=False, dropna=False) if conditions else [((), best)]:
        pair = part.set_index(LOSS, drop=False)
        if {BASELINE, "imbalanced"} <= set(pair.index):
            named = values if isinstance(values, tuple) else (values,)
            rows.append([*map(setting, named), *loss_pair_row(table, pair, varied, line)])
    figure = line.figure.label
    names = [*conditions, "balanced: chosen", "imbalanced: chosen"]
    names += [f"{heading(TEST)}, difference", "verdict", f"{figure}, difference", "verdict"]
    return [
        f"{title} Balanced minus imbalanced, each at its setting chosen by the {rule}, paired by seed "
        f"(mean [95% t-interval]); the verdict is balanced's ({figure}: "
        f"{'lower' if line.lower_is_better else 'higher'} is better).",
        "",
        pipe_table(names, rows) if rows else "No condition has both losses finished.",
    ]


def hidden_settings(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str]) -> str:
    """The settings whose explanations say the shortcut is removed while their behaviour keeps it."""
    line = headline(table)
    if line is None or line.share is None or f"{line.share}_mean" not in summary:
        return ""
    keys = [k for k in varied if k != SEED]
    shares = [k for k in attribution_shares(table) if f"{k}_mean" in summary]
    flagged = [
        describe(row, keys) or "the sweep"
        for _, row in summary.iterrows()
        if row[f"{line.share}_mean"] <= KEPT_AT and any(row[f"{k}_mean"] >= REMOVED_AT for k in shares)
    ]
    if not flagged:
        return ""
    return (
        f"Flagged, {HIDDEN} ({heading(line.share)} at most {KEPT_AT}, an attribution share at least "
        f"{REMOVED_AT}): {'; '.join(flagged)}."
    )
