"""Does the user's side of the interaction matter? Each interaction setting the sweep varies
(the query strategy ``pool.select``, the rounds ``pool.rounds``, the feedback kind
``pool.feedback``) against its reference (asked at random, all at once, exact marks), per
method and the other conditions, both at their settings chosen by the jobs' selection rule:
the difference in the share of the shortcut removed and in clean test accuracy, paired by
seed (the jobs of a seed share the confounded model and the pool's candidates), with a 95%
t-interval and the verdict."""

from __future__ import annotations

import pandas as pd

from xilsweep import metrics
from xilsweep.results.collect import SEED, TEST
from xilsweep.results.select import best_per, chosen_keys, condition_keys, method_keys, rows_like, setting_jobs
from xilsweep.results.shortcut import Headline, describe, headline, interval_text, per_seed
from xilsweep.results.stats import paired, t_interval, verdict
from xilsweep.results.tables import heading, pipe_table, setting

# An interaction setting, its reference value (a job that leaves it unset has the reference)
# and the question its table answers.
REFERENCES = (
    ("pool.select", "random", "Does choosing whom to ask beat asking at random?"),
    ("pool.rounds", "1", "Do rounds beat asking all at once?"),
    ("pool.feedback", "exact", "What do faulty marks cost?"),
)


def family(key: str, varied: list[str]) -> list[str]:
    """``key`` and the varied settings that refine it (``pool.feedback_fraction`` for ``pool.feedback``)."""
    return [k for k in varied if k == key or k.startswith(f"{key}_")]


def is_reference(values: pd.Series, reference: str) -> pd.Series:
    return values.isna() | (values.map(setting) == reference)


def other_keys(key: str, varied: list[str]) -> list[str]:
    """The conditions and method settings a setting of ``key`` is compared at: all but its own."""
    own = family(key, varied)
    return [k for k in [*condition_keys(varied), *method_keys(varied)] if k not in own]


def read_figures(line: Headline) -> list[tuple[str, bool]]:
    """The figures compared and whether higher is better: the share removed (or, without one,
    the reliance figure itself) and the clean test accuracy."""
    reliance = [(line.share, True)] if line.share else [(line.figure.key, not line.lower_is_better)]
    return [*reliance, (TEST, True)]


def difference_cells(jobs: pd.DataFrame, reference: pd.DataFrame, figures: list[tuple[str, bool]]) -> list[str]:
    """Per figure: the setting's mean [interval] over seeds, its difference to the reference paired
    by seed and the verdict."""
    cells = []
    for key, higher_is_better in figures:
        spec = metrics.FIGURES[key]
        difference = paired(per_seed(jobs, key), per_seed(reference, key))
        cells += [
            interval_text(t_interval(jobs[key]), spec),
            interval_text(difference, spec, difference=True),
            verdict(difference, higher_is_better) if difference else "",
        ]
    return cells


def against_reference(
    table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], key: str, reference: str, line: Headline
) -> list[list[str]]:
    """Rows of one interaction setting against its reference: the other method settings and
    conditions, the setting, its chosen other settings, and the figures' differences."""
    keys = [k for k in varied if k != SEED]
    own, others = family(key, varied), other_keys(key, varied)
    best = best_per(summary, [*condition_keys(varied), *method_keys(varied)])
    references = best[is_reference(best[key], reference)]
    rows = []
    for _, row in best[~is_reference(best[key], reference)].iterrows():
        matching = rows_like(references, row, others)
        if matching.empty:
            continue
        jobs, reference_jobs = setting_jobs(table, row, keys), setting_jobs(table, matching.iloc[0], keys)
        chosen = describe(row, chosen_keys(varied))
        rows.append(
            [
                *(setting(row[k]) for k in others),
                ", ".join(setting(row[k]) for k in own if setting(row[k])),
                chosen,
                *difference_cells(jobs, reference_jobs, read_figures(line)),
            ]
        )
    return rows


def answer_interaction(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str], rule: str) -> list[str]:
    """A table per interaction setting the sweep varies, against its reference; nothing where none varies."""
    line = headline(table)
    lines: list[str] = []
    for key, reference, question in REFERENCES:
        if key not in varied:
            continue
        title = f"**{question}**"
        rows = against_reference(table, summary, varied, key, reference, line) if line and len(summary) else []
        if not rows:
            lines += [f"{title} not enough data: no finished setting of {key} has its {reference} counterpart.", ""]
            continue
        names = [*other_keys(key, varied), key, "setting chosen"]
        for figure, _ in read_figures(line):
            names += [heading(figure), f"{heading(figure)}, difference to {reference}", "verdict"]
        lines += [
            f"{title} Each {key} against {key}={reference} with the same method and other conditions, "
            f"each at its setting chosen by the {rule}: mean [95% t-interval] over seeds, and the "
            f"difference paired by seed.",
            "",
            pipe_table(names, rows),
            "",
        ]
    return lines
