"""Which settings a sweep varies, the summary over seeds per setting, and the best setting.

The varied settings are the job overrides that differ between jobs; a
method is what the method settings (loss, correction, model, and the user's
query strategy and rounds) name, the pool size and the user's feedback quality
(``pool.feedback*``) the conditions it is compared under, and the rest (λ, learning rate, ...) settings chosen per
method and condition, never across methods. A setting
is summarised over its seeds and chosen by its mean validation score, the one
the jobs' early stopping maximised (``trainer.stop_on``), ties to the lower
mean validation loss."""

from __future__ import annotations

import json

import pandas as pd

from xilsweep import metrics
from xilsweep.progress import differing_keys
from xilsweep.results.collect import SEED, STOP_SCORE, VAL_LOSS, Job, stop_rule

# The settings the guide's questions are about.
LR, LOSS, LAMBDA, POOL = "trainer.lr", "loss", "loss.lam", "pool.size"
# Settings that tell one method from another, and those a method is compared under.
METHOD_KEYS = (LOSS, "pool.correction", "model", "pool.select", "pool.rounds")
CONDITION_KEYS = (POOL, "pool.feedback", "pool.feedback_fraction", "pool.feedback_radius")
# trainer.stop_on (xilsweep.training.STOP_SCORES) in words
STOP_RULES = {
    "clean": "clean validation accuracy",
    "dotted": "dotted validation accuracy",
    "both": "mean of clean and dotted validation accuracy",
}


def varied_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (absent counts as a value), in first-seen order."""
    return differing_keys([job.overrides for job in jobs])


def with_method_weights(jobs: list[Job]) -> list[Job]:
    """Where the loss varies, ``loss.lam`` of each job that does not set it, from its resolved
    config (each method's tuned weight; None for a loss without one), placed after ``loss``."""
    if LOSS not in varied_keys(jobs):
        return jobs
    for job in jobs:
        if LAMBDA not in job.overrides:
            weight = ((job.metrics.get("config") or {}).get("loss") or {}).get("lam")
            keys = list(job.overrides)
            at = keys.index(LOSS) + 1 if LOSS in keys else len(keys)
            items = list(job.overrides.items())
            job.overrides = dict([*items[:at], (LAMBDA, weight), *items[at:]])
    return jobs


def method_keys(varied: list[str]) -> list[str]:
    return [k for k in METHOD_KEYS if k in varied]


def condition_keys(varied: list[str]) -> list[str]:
    return [k for k in CONDITION_KEYS if k in varied]


def chosen_keys(varied: list[str]) -> list[str]:
    """The varied settings chosen per method and condition (λ, learning rate, ...)."""
    fixed = {SEED, *METHOD_KEYS, *CONDITION_KEYS}
    return [k for k in varied if k not in fixed]


def selection_rule(jobs: list[Job]) -> str:
    """The finished jobs' ``trainer.stop_on`` in words (each job is scored by its own)."""
    rules = dict.fromkeys(stop_rule(job.metrics) for job in jobs if job.status == "done")
    return " / ".join(STOP_RULES.get(rule, rule) for rule in rules) or STOP_RULES["clean"]


def searched_keys(table: pd.DataFrame, varied: list[str], search: bool) -> set[str]:
    """The settings a search drew rather than a grid laid out: all of a search's; elsewhere
    those with more values than the sweep has settings (jobs per seed)."""
    keys = [k for k in varied if k != SEED]
    if search:
        return set(keys)
    seeds = max(table[SEED].nunique(), 1) if SEED in table else 1
    return {k for k in keys if table[k].nunique() > len(table) / seeds}


def reference_training(record: dict) -> str:
    """What a job's reference models were trained with, but the seed (their own records' settings)."""
    settings = {
        kind: {k: v for k, v in ((record.get(kind) or {}).get("settings") or {}).items() if k != "seed"}
        for kind in metrics.REFERENCE_KINDS
    }
    return json.dumps(settings, sort_keys=True, default=str)


def reference_keys(jobs: list[Job], varied: list[str]) -> list[str]:
    """The varied settings that tell the finished jobs' reference models apart (such as the
    model): group the jobs by what their references were trained with but the seed; these
    are the settings the same within every group and not across all. References that differ
    by seed alone (pretrain.seed=${seed}) are one group, pooled in one pair of rows."""
    done = [job for job in jobs if job.status == "done"]
    groups: dict[str, list[Job]] = {}
    for job in done:
        groups.setdefault(reference_training(job.metrics), []).append(job)

    def values(group: list[Job], key: str) -> set:
        return {repr(job.overrides.get(key)) for job in group}

    return [
        k
        for k in varied
        if k != SEED and len(values(done, k)) > 1 and all(len(values(group, k)) == 1 for group in groups.values())
    ]


def shared_settings(jobs: list[Job]) -> str:
    """The settings every finished job shares (from metrics.json), e.g. the lr of a lambda search."""
    settings = [j.metrics.get("settings") for j in jobs if j.metrics.get("settings")]
    if not settings:
        return ""
    keys = dict.fromkeys(k for s in settings for k in s)
    shared = {k: settings[0].get(k) for k in keys if all(repr(s.get(k)) == repr(settings[0].get(k)) for s in settings)}
    return ", ".join(f"{k}={v}" for k, v in shared.items())


def sort_key(values: pd.Series) -> pd.Series:
    """Numbers before text before empty, so mixed columns sort too."""
    return values.map(
        lambda v: (
            (2, "")
            if v is None or (isinstance(v, float) and pd.isna(v))
            else (0, v)
            if isinstance(v, (int, float))
            else (1, str(v))
        )
    )


def summary_table(table: pd.DataFrame, varied: list[str]) -> pd.DataFrame:
    """Mean, std and n over seeds of every figure, per setting (done jobs only)."""
    keys = [k for k in varied if k != SEED]
    done = table[table.status == "done"]
    figures = [c for c in [*metrics.FIGURES, STOP_SCORE] if c in done]
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n"])
    grouped = done.groupby(keys, dropna=False, sort=False) if keys else done.groupby(lambda _: "all")
    summary = grouped[figures].agg(["mean", "std"])
    summary.columns = [f"{figure}_{stat}" for figure, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    summary = summary.reset_index()
    if not keys:
        return summary.drop(columns="index")
    return summary.sort_values(keys, key=sort_key, kind="stable").reset_index(drop=True)


def ranked(summary: pd.DataFrame) -> pd.DataFrame:
    """Best first: highest mean validation score, ties to the lower mean validation loss."""
    if f"{VAL_LOSS}_mean" in summary:
        return summary.sort_values([f"{STOP_SCORE}_mean", f"{VAL_LOSS}_mean"], ascending=[False, True], kind="stable")
    return summary.sort_values(f"{STOP_SCORE}_mean", ascending=False, kind="stable")


def best_per(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """For every value (combination) of ``keys``: the setting with the best mean validation score."""
    if not keys:
        return ranked(summary).head(1)
    return ranked(summary).drop_duplicates(keys).sort_values(keys, key=sort_key, kind="stable")


def rows_like(frame: pd.DataFrame, row, keys: list[str]) -> pd.DataFrame:
    """The rows of ``frame`` with ``row``'s values of ``keys`` (an empty value matches empty)."""
    for key in keys:
        value = row[key]
        frame = frame[frame[key].isna()] if pd.isna(value) else frame[frame[key] == value]
    return frame


def setting_jobs(table: pd.DataFrame, row, keys: list[str]) -> pd.DataFrame:
    """The finished jobs of the setting ``row`` names by ``keys``."""
    return rows_like(table[table.status == "done"], row, keys)
