"""The answers to the experiment guide's other questions: does the model fit, the best
learning rate and λ of each method, and the pool size. Settings are chosen per method
(never one λ across different penalties) by the jobs' selection rule (``select``);
whether the shortcut is removed and balanced against imbalanced are in ``shortcut``."""

from __future__ import annotations

import pandas as pd

from xilsweep.results.collect import STOP_SCORE, TEST, TRAIN_ACC, TRAIN_LOSS, Job
from xilsweep.results.select import LAMBDA, LR, POOL, best_per, method_keys, ranked
from xilsweep.results.tables import heading, in_words, setting


def answer_fit(table: pd.DataFrame, jobs: list[Job]) -> str:
    """Step 1's check: training loss falling, training accuracy near 100%, no NaN."""
    histories = [[h for h in j.metrics.get("history") or [] if TRAIN_LOSS in h] for j in jobs if j.status == "done"]
    histories = [h for h in histories if h]
    non_finite = int(table.reason.fillna("").str.contains("loss became").sum())
    nan_note = f"{non_finite} job(s) stopped on a non-finite loss" if non_finite else "no non-finite loss"
    if not histories:
        return f"**Fit:** not enough data: no finished job with a training history; {nan_note}."
    first = sum(h[0][TRAIN_LOSS] for h in histories) / len(histories)
    last = sum(h[-1][TRAIN_LOSS] for h in histories) / len(histories)
    final_acc = [h[-1].get(TRAIN_ACC) for h in histories if h[-1].get(TRAIN_ACC) is not None]
    acc = (
        f"; last-epoch training accuracy {100 * sum(final_acc) / len(final_acc):.2f}% "
        f"(lowest {100 * min(final_acc):.2f}%)"
        if final_acc
        else ""
    )
    return (
        f"**Fit:** training loss from {first:.3g} (first epoch) to {last:.3g} (last epoch), mean of "
        f"{len(histories)} finished jobs{acc}; {nan_note}."
    )


def per_method(summary: pd.DataFrame, varied: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """The summary split by method (the method settings the sweep varies), each named."""
    keys = method_keys(varied)
    if not keys:
        return [("", summary)]
    groups = summary.groupby(keys, sort=False, dropna=False)
    return [(" ".join(setting(v) for v in name), part) for name, part in groups]


def tie_note(candidates: pd.DataFrame, key: str) -> str:
    """Which other values of ``key`` reach the best mean validation score too."""
    best_score = candidates[f"{STOP_SCORE}_mean"].max()
    tied = candidates[candidates[f"{STOP_SCORE}_mean"] == best_score][key]
    if len(tied) < 2:
        return ""
    return (
        f" (tied on the validation score with {', '.join(setting(v) for v in tied.iloc[1:])}; "
        f"the lower mean validation loss decides, as in early stopping)"
    )


SHOWN_VALUES = 6  # a setting's values listed in an answer; a search's many values: the best of them


def listed(ranking: pd.DataFrame, key: str) -> tuple[pd.DataFrame, str]:
    """The values of ``key`` an answer lists, in order (a search's best ``SHOWN_VALUES - 1``), and what it omits."""
    if len(ranking) <= SHOWN_VALUES:
        return ranking.sort_values(key), ""
    shown = ranking.head(SHOWN_VALUES - 1)
    return shown.sort_values(key), f" (the {len(shown)} best of {len(ranking)} values)"


def best_values(summary: pd.DataFrame, varied: list[str], key: str) -> list[tuple[str, pd.DataFrame]]:
    """Per method that ran two values of ``key`` or more: each value with its best other settings, best first."""
    found = []
    for name, part in per_method(summary[summary[key].notna()], varied):
        if part[key].nunique() >= 2:
            found.append((name, ranked(best_per(part, [key]))))
    return found


def answer_lr(summary: pd.DataFrame, varied: list[str], rule: str) -> str:
    title = "**Learning rate:**"
    found = best_values(summary, varied, LR) if LR in varied else []
    if not found:
        return f"{title} not enough data: no method ran two values of trainer.lr."
    parts = []
    for name, per_lr in found:
        shown, omitted = listed(per_lr, LR)
        ranking = "; ".join(f"{setting(r[LR])}: {in_words(r, STOP_SCORE)}" for _, r in shown.iterrows()) + omitted
        best = setting(per_lr.iloc[0][LR])
        parts.append(f"{name + ': ' if name else ''}best trainer.lr = {best}{tie_note(per_lr, LR)} ({ranking})")
    step3 = (
        f" Step 3: `python -m xilsweep.run -m experiment=lambda_search best_lr={setting(found[0][1].iloc[0][LR])}`."
        if len(found) == 1
        else ""
    )
    return f"{title} by the {rule} (mean over seeds): " + "; ".join(parts) + f".{step3}"


def answer_lambda(summary: pd.DataFrame, varied: list[str], rule: str, figure: str | None = None) -> str:
    """Per method (never across penalties), the best loss.lam by the mean validation score, and
    the clean test accuracy (and the reliance ``figure``) at each λ."""
    title = "**λ:**"
    found = best_values(summary, varied, LAMBDA) if LAMBDA in varied else []
    if not found:
        return f"{title} not enough data: no method ran two values of loss.lam."
    parts = []
    for name, per_lambda in found:
        best, (shown, omitted) = per_lambda.iloc[0], listed(per_lambda, LAMBDA)
        curve = "; ".join(f"λ={setting(r[LAMBDA])}: {figures_in_words(r, figure)}" for _, r in shown.iterrows())
        parts.append(
            f"{name + ': ' if name else ''}best loss.lam = {setting(best[LAMBDA])} ({in_words(best, STOP_SCORE)})"
            f"{tie_note(per_lambda, LAMBDA)}; per λ{omitted} (best other settings): {curve}"
        )
    each = ", per method" if len(found) > 1 else ""
    return f"{title} by the {rule} (mean over seeds){each}: " + " — ".join(parts) + "."


def figures_in_words(row, figure: str | None) -> str:
    """A setting's clean test accuracy and reliance figure, mean ± std (n)."""
    reliance = f", {heading(figure)} {in_words(row, figure)}" if figure and f"{figure}_mean" in row else ""
    return f"test {in_words(row, TEST)}{reliance}"


def answer_pool(summary: pd.DataFrame, varied: list[str], figure: str | None = None) -> str:
    """Per method, how the clean test accuracy and the reliance ``figure`` move with the pool size."""
    if POOL not in varied:
        return "**Pool size:** not enough data: the sweep did not vary pool.size."
    parts = []
    for name, part in best_values(summary, varied, POOL):
        rows = part.sort_values(POOL).iterrows()
        steps = "; ".join(f"{setting(r[POOL])}: {figures_in_words(r, figure)}" for _, r in rows)
        parts.append(f"{name + ': ' if name else ''}{steps}")
    if not parts:
        return "**Pool size:** not enough data: fewer than two pool sizes finished."
    return "**Pool size** (per method, best other settings): " + " — ".join(parts) + "."
