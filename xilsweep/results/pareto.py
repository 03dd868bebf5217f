"""The Pareto front of a two-objective search (``objective=pareto``): clean
validation accuracy against the validation dot flip rate."""

from __future__ import annotations

import pandas as pd

from xilsweep import metrics
from xilsweep.results.collect import SEED, TEST, VAL, Job

FLIP = metrics.reliance("dot_flip_rate")
VAL_FLIP = FLIP.val_key  # the second objective


def non_dominated(accuracy: list[float], flip_rate: list[float]) -> list[bool]:
    """Whether each (accuracy, flip rate) point is on the Pareto front: no other point
    has at least its accuracy and at most its flip rate and is better in one."""
    points = list(zip(accuracy, flip_rate, strict=True))
    return [not any(a >= ai and f <= fi and (a > ai or f < fi) for a, f in points) for ai, fi in points]


def is_pareto_search(jobs: list[Job], table: pd.DataFrame) -> bool:
    """Finished jobs of a two-objective search, with the second objective recorded."""
    done = [j for j in jobs if j.status == "done" and j.metrics.get(VAL) is not None]
    return VAL_FLIP in table and any((j.metrics.get("config") or {}).get("objective") == "pareto" for j in done)


def pareto_table(table: pd.DataFrame, varied: list[str]) -> pd.DataFrame:
    """The finished jobs (``job``: as the report names them) with both validation objectives,
    ``front`` marking the non-dominated ones (computed here over the report's jobs)."""
    done = table[(table.status == "done") & table[VAL_FLIP].notna()]
    removed = metrics.removed_figure(FLIP.key).key
    shown = ("job", *(k for k in varied if k != SEED), VAL, VAL_FLIP, TEST, FLIP.key, removed)
    front = done[[c for c in shown if c in done]].copy()
    front["front"] = non_dominated(front[VAL].tolist(), front[VAL_FLIP].tolist())
    return front.sort_values([VAL, VAL_FLIP], ascending=[False, True], kind="stable")
