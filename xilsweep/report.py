"""The sweep report: ``python -m xilsweep.report SWEEP_DIR``.

Reads every job folder of a sweep (any launcher, Optuna's too, finished or
interrupted half-way) and writes into ``SWEEP_DIR/report/``: ``jobs.csv``
(one row per job), ``summary.csv`` (mean, std and n over seeds per setting),
the plots as PNG, and ``report.md`` (the tables and the answers to the
guide's questions), which is also printed.

The varied settings are the job overrides that differ between jobs. A job's
status comes from its ``metrics.json`` (done / failed with the reason /
running; "running" from a process that no longer exists on this machine is a
killed job: failed); a job without one failed if its ``run.log`` has an ERROR
line (a bad setting) and is running otherwise. Fields that older runs lack
are left empty.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from xilsweep.progress import PLANNED_FILE

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

REPORT_DIR = "report"
# The override keys the guide's questions are about.
LR, LOSS, LAMBDA, POOL, SEED = "trainer.lr", "loss", "loss.lam", "pool.size", "seed"
VAL, TEST = "best_val_accuracy", "test_accuracy"
# From the history: the validation loss at the best epoch (breaks accuracy ties, as early
# stopping does) and the last epoch's training loss and accuracy (the overfit check).
VAL_LOSS, TRAIN_LOSS, TRAIN_ACC = "best_val_loss", "train_loss", "train_accuracy"
# Newer metrics (right-reason metrics); shown when present.
OPTIONAL_METRICS = ("test_dotted_accuracy", "attribution_in_mask", "wrong_reason_score", "dot_flip_rate")
# Reliance on validation data at the best epoch (the pool's confounders pasted onto the validation images).
VAL_DOTTED, VAL_FLIP = "best_val_dotted_accuracy", "best_val_dot_flip_rate"
METRICS = (VAL, VAL_DOTTED, VAL_FLIP, TEST, *OPTIONAL_METRICS)
# Question 4 of the guide, read between the oracle (floor) and the confounded model (ceiling).
RELIANCE = (TEST, "dot_flip_rate", "test_dotted_accuracy", "attribution_in_mask", "wrong_reason_score")
REMOVED = ("removed.dot_flip_rate", "removed.attribution_in_mask")
SECONDS = "seconds_per_epoch"
REFERENCES = {"oracle": "oracle (floor)", "confounded": "confounded (ceiling)"}
SUMMARY_METRICS = (*METRICS, *REMOVED, SECONDS, VAL_LOSS, TRAIN_LOSS, TRAIN_ACC)
# Settings that tell one method from another: a line each in the plots.
METHOD_KEYS = (LOSS, "pool.correction", "model")
CONFOUNDED_METRICS = (TEST, *OPTIONAL_METRICS)
LABELS = {
    VAL: "best val acc %",
    VAL_DOTTED: "dotted val acc %",
    VAL_FLIP: "val dot flip rate",
    SECONDS: "s/epoch",
    TEST: "test acc %",
    "test_dotted_accuracy": "dotted test acc %",
    "attribution_in_mask": "attribution in mask",
    "wrong_reason_score": "wrong-reason score",
    "dot_flip_rate": "dot flip rate",
    "epochs_run": "epochs",
    "removed.dot_flip_rate": "shortcut removed (flip rate)",
    "removed.attribution_in_mask": "shortcut removed (attribution)",
    TRAIN_LOSS: "last train loss",
    TRAIN_ACC: "last train acc %",
}


class NotASweepError(Exception):
    """The folder holds no job folders."""


@dataclass
class Job:
    folder: Path
    overrides: dict
    metrics: dict
    status: str
    reason: str


def read_overrides(folder: Path, metrics: dict) -> dict:
    """``key -> value`` of the job's Hydra overrides, parsed by Hydra's own
    override grammar; a setting's value is taken from the resolved config in
    ``metrics.json`` where the job has one, an interpolation is kept as written
    (deletions and ``HOW_TO_RUN`` skipped)."""
    path = folder / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(path.read_text()) if path.exists() else metrics.get("overrides")
    if isinstance(lines, str):  # older metrics.json files hold the list as its text
        lines = ast.literal_eval(lines)
    return parse_overrides(lines or [], metrics.get("config") or {})


# Overrides that say how a job runs, not what it computes: a sweep resumed with
# trainer.resume=true after a crash is the same sweep, not a second setting.
HOW_TO_RUN = {"trainer.resume"}


def parse_overrides(lines: list, config: dict) -> dict:
    config = OmegaConf.create(config)
    overrides = {}
    for override in OverridesParser.create().parse_overrides([str(line) for line in lines]):
        if override.is_delete() or override.key_or_group in HOW_TO_RUN:
            continue
        key, written = override.key_or_group, override.value()
        if isinstance(written, str) and "${" in written:  # e.g. pretrain.seed=${seed}: one setting, not one per job
            overrides[key] = written
            continue
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
        overrides[key] = written if value is None or OmegaConf.is_config(value) else value
    return overrides


def logged_error(folder: Path) -> str | None:
    """The message of the first ERROR line in the job's run.log (with its continuation lines)."""
    log_file = folder / "run.log"
    if not log_file.exists():
        return None
    lines = log_file.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if "][ERROR] - " in line:
            message = [line.split("][ERROR] - ", 1)[1]]
            message += [m for m in lines[i + 1 :] if not m.startswith("[")][:5]
            return "; ".join(message)
    return None


def process_gone(metrics: dict) -> bool:
    """True when the job's process ran on this machine and no longer exists."""
    pid, host = metrics.get("pid"), metrics.get("host")
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_job(folder: Path) -> Job:
    metrics_file = folder / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        metrics = {"status": "failed", "reason": f"metrics.json unreadable: {e}"}
    if metrics:
        status, reason = metrics.get("status", "running"), metrics.get("reason", "")
        if status == "running" and process_gone(metrics):
            status, reason = "failed", f"killed: process {metrics['pid']} on {metrics['host']} ended without a result"
    else:
        error = logged_error(folder)
        status, reason = ("failed", error) if error else ("running", "")
    return Job(folder, read_overrides(folder, metrics), metrics, status, reason)


def job_number(folder: Path):
    head = folder.name.split("_", 1)[0]
    return (int(head), folder.name) if head.isdigit() else (float("inf"), folder.name)


def find_jobs(sweep_dir: Path) -> list[Job]:
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a folder")
    folders = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name != REPORT_DIR
        and any((p / name).exists() for name in (".hydra", "metrics.json", "run.log"))
    ]
    planned_file = sweep_dir / PLANNED_FILE
    planned = OmegaConf.to_container(OmegaConf.load(planned_file).jobs) if planned_file.exists() else []
    if not folders and not planned:
        hint = (
            " (it is a single job's folder; pass the sweep folder above it)" if (sweep_dir / ".hydra").exists() else ""
        )
        raise NotASweepError(
            f"{sweep_dir} is not a sweep folder: no job folders (with .hydra/, metrics.json or run.log) inside{hint}"
        )
    jobs = [read_job(p) for p in sorted(folders, key=job_number)]
    started = {job_number(job.folder)[0] for job in jobs}
    # planned by the sweeper but never started (an interrupted sweep)
    jobs += [
        Job(sweep_dir / f"{job['num']}_not_started", parse_overrides(job["overrides"], {}), {}, "not started", "")
        for job in planned
        if job["num"] not in started
    ]
    return sorted(jobs, key=lambda job: job_number(job.folder))


def varied_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (absent counts as a value), in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({repr(job.overrides.get(k)) for job in jobs}) > 1]


def job_table(jobs: list[Job], varied: list[str]) -> pd.DataFrame:
    rows = []
    for job in jobs:
        m, settings = job.metrics, job.metrics.get("settings") or {}
        row = {"job": job.folder.name}
        row.update({k: job.overrides.get(k) for k in varied if k != SEED})
        row[SEED] = job.overrides.get(SEED, settings.get("seed"))
        row["status"] = job.status
        row["epochs_run"] = m.get("epochs_run")
        trained = [h for h in m.get("history") or [] if TRAIN_LOSS in h]
        row[TRAIN_LOSS] = trained[-1][TRAIN_LOSS] if trained else None
        row[TRAIN_ACC] = trained[-1].get(TRAIN_ACC) if trained else None
        row.update({name: m.get(name) for name in METRICS})
        best = [h for h in m.get("history") or [] if h.get("epoch") == m.get("best_epoch")]
        row[VAL_LOSS] = best[0].get("val_loss") if best else None
        for kind in REFERENCES:
            reference = m.get(kind) or {}
            row.update({f"{kind}.{name}": reference.get(name) for name in CONFOUNDED_METRICS})
            row[f"{kind}.path"] = reference.get("path")
        removed = m.get("shortcut_removed") or {}
        row.update({name: removed.get(name.split(".", 1)[1]) for name in REMOVED})
        row[SECONDS] = m.get(SECONDS)
        row["seconds"] = m.get("seconds")
        row["reason"] = job.reason
        rows.append(row)
    table = pd.DataFrame(rows)
    optional = [
        c
        for c in table
        if c in (*OPTIONAL_METRICS, VAL_DOTTED, VAL_FLIP) or c in REMOVED or c.startswith(tuple(REFERENCES))
    ]
    return table.drop(columns=[c for c in optional if table[c].isna().all()])


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
    """Mean, std and n over seeds of every metric, per setting (done jobs only)."""
    keys = [k for k in varied if k != SEED]
    done = table[table.status == "done"]
    metrics = [c for c in SUMMARY_METRICS if c in done]
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n"])
    grouped = done.groupby(keys, dropna=False, sort=False) if keys else done.groupby(lambda _: "all")
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    summary = summary.reset_index()
    if not keys:
        return summary.drop(columns="index")
    return summary.sort_values(keys, key=sort_key, kind="stable").reset_index(drop=True)


def ranked(summary: pd.DataFrame) -> pd.DataFrame:
    """Best first: highest mean validation accuracy, ties to the lower mean validation loss."""
    if f"{VAL_LOSS}_mean" in summary:
        return summary.sort_values([f"{VAL}_mean", f"{VAL_LOSS}_mean"], ascending=[False, True], kind="stable")
    return summary.sort_values(f"{VAL}_mean", ascending=False, kind="stable")


def best_per(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """For every value (combination) of ``keys``: the setting with the best mean validation accuracy."""
    return ranked(summary).drop_duplicates(keys).sort_values(keys, key=sort_key, kind="stable")


# --- formatting -------------------------------------------------------------


def fmt(value, column: str = "", magnitude: float | None = None) -> str:
    """A table cell: accuracies in percent, other metrics with 3 decimals (1 from
    10 up, judged by ``magnitude`` when given: a std follows its mean), settings as written."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if not isinstance(value, float):
        return str(value)
    metric = column.split(".", 1)[1] if column.startswith(tuple(REFERENCES)) else column
    if metric.endswith("accuracy"):
        return f"{100 * value:.2f}"
    if metric.endswith("loss"):
        return f"{value:.3g}"
    if metric == SECONDS:
        return f"{value:.2f}"
    if metric in METRICS or metric in REMOVED:
        return f"{value:.{3 if abs(value if magnitude is None else magnitude) < 10 else 1}f}"
    return f"{value:g}"


def pct(row, metric: str) -> str:
    """``99.03% ± 0.21 (n=3)`` from a summary row."""
    mean, std, n = row[f"{metric}_mean"], row[f"{metric}_std"], int(row["n"])
    spread = "" if pd.isna(std) else f" ± {100 * std:.2f}"
    return f"{100 * mean:.2f}%{spread} (n={n})"


def markdown(table: pd.DataFrame) -> str:
    names = [LABELS.get(c, c) for c in table.columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(row[c], c).replace("|", "/") for c in table.columns) + " |")
    return "\n".join(lines)


def spread(mean, std, column: str) -> str:
    """``mean ± std`` of a column's figure; the mean alone where there is no spread (one seed)."""
    if pd.isna(std):
        return fmt(mean, column)
    return f"{fmt(mean, column)} ± {fmt(std, column, magnitude=mean)}"


def summary_markdown(summary: pd.DataFrame, varied: list[str]) -> str:
    keys = [k for k in varied if k != SEED]
    shown = summary[[*keys, "n"]].copy()
    for metric in METRICS:
        if f"{metric}_mean" in summary:
            shown[LABELS[metric]] = [
                spread(m, s, metric) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)
            ]
    return markdown(shown)


def mean_std(values, column: str) -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return ""
    return spread(values.mean(), values.std(), column)  # one value: no std (NaN), the value alone


def reliance_markdown(table: pd.DataFrame, summary: pd.DataFrame, varied: list[str]) -> str:
    """Question 4: per setting, clean test accuracy and the reliance figures (mean ± std over
    seeds), the share of the shortcut removed and the seconds per epoch, under the oracle's and
    the confounded model's rows (mean ± std over the distinct reference models of the sweep's
    finished jobs; one pair per value of the varied settings the reference models are
    trained with, such as the model)."""
    keys = [k for k in varied if k != SEED]
    done = table[table.status == "done"]
    columns = [c for c in (*RELIANCE, *REMOVED, SECONDS) if c in done and done[c].notna().any()]
    reference_keys = [k for k in keys if k == "model" or k.startswith(("data", "pretrain"))]
    label_key = next((k for k in keys if k not in reference_keys), "setting")
    groups = done.groupby(reference_keys, sort=False, dropna=False) if reference_keys else [((), done)]
    rows = []
    for kind, label in REFERENCES.items():
        if f"{kind}.path" not in done:
            continue
        for values, part in groups:
            models = part.drop_duplicates(f"{kind}.path")
            rows.append(
                {
                    **{k: "" for k in keys or ["setting"]},
                    **{k: fmt(v) for k, v in zip(reference_keys, values, strict=True)},
                    label_key: label,
                    "n": len(models),
                    **{LABELS[c]: mean_std(models.get(f"{kind}.{c}"), c) if c in RELIANCE else "" for c in columns},
                }
            )
    for _, row in summary.iterrows():
        rows.append(
            {
                **{k: fmt(row[k]) for k in keys or ["setting"] if k in row},
                "n": int(row["n"]),
                **{LABELS[c]: spread(row[f"{c}_mean"], row[f"{c}_std"], c) for c in columns},
            }
        )
    shown = pd.DataFrame(rows).fillna("")
    names = list(shown.columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(row[c]) for c in names) + " |" for _, row in shown.iterrows()]
    return "\n".join(lines)


def seed_note(table: pd.DataFrame) -> str:
    """What the seed spread covers: one shared confounded model, or one per seed."""
    done = table[table.status == "done"]
    if "confounded.path" not in done or done.empty:
        return ""
    n_models = done["confounded.path"].nunique()
    if n_models > 1:
        return (
            f"{n_models} distinct confounded models (and oracles) start these jobs: the spread over seeds "
            "includes the reference models' own training."
        )
    return (
        "One confounded model starts every job: the spread over seeds covers fine-tuning only "
        "(pretrain.seed=${seed} trains one pair of reference models per seed)."
    )


def settings_line(jobs: list[Job]) -> str:
    """The settings every finished job shares (from metrics.json), e.g. the lr of a lambda search."""
    settings = [j.metrics.get("settings") for j in jobs if j.metrics.get("settings")]
    if not settings:
        return ""
    keys = dict.fromkeys(k for s in settings for k in s)
    shared = {k: settings[0].get(k) for k in keys if all(repr(s.get(k)) == repr(settings[0].get(k)) for s in settings)}
    return ", ".join(f"{k}={v}" for k, v in shared.items())


# --- answers ------------------------------------------------------------------


def describe(row, keys: list[str]) -> str:
    parts = [f"{k}={fmt(row[k])}" for k in keys if k in row and fmt(row[k])]
    return ", ".join(parts) if parts else "the only setting"


def tie_note(candidates: pd.DataFrame, key: str) -> str:
    """Which other values of ``key`` reach the best mean validation accuracy too."""
    best_val = candidates[f"{VAL}_mean"].max()
    tied = candidates[candidates[f"{VAL}_mean"] == best_val][key]
    if len(tied) < 2:
        return ""
    return (
        f" (tied on validation accuracy with {', '.join(fmt(v) for v in tied.iloc[1:])}; "
        f"the lower mean validation loss decides, as in early stopping)"
    )


def answer_lr(summary, varied) -> str:
    if LR not in varied:
        return "**Learning rate:** not enough data: the sweep did not vary trainer.lr."
    per_lr = ranked(best_per(summary, [LR]))
    best = per_lr.iloc[0]
    ranking = "; ".join(f"{fmt(r[LR])}: {pct(r, VAL)}" for _, r in per_lr.iterrows())
    return (
        f"**Learning rate:** best trainer.lr = {fmt(best[LR])} by mean best validation accuracy"
        f"{tie_note(per_lr, LR)} ({ranking}). Step 3: "
        f"`python -m xilsweep.run -m experiment=lambda_search best_lr={fmt(best[LR])}`."
    )


def answer_lambda(summary, varied) -> str:
    if LAMBDA not in varied:
        return "**λ:** not enough data: the sweep did not vary loss.lam."
    with_lambda = summary[summary[LAMBDA].notna()] if LAMBDA in summary else summary.iloc[:0]
    if with_lambda[LAMBDA].nunique() < 2:
        return "**λ:** not enough data: fewer than two λ values finished."
    per_lambda = best_per(with_lambda, [LAMBDA])
    best = ranked(per_lambda).iloc[0]
    curve = "; ".join(f"λ={fmt(r[LAMBDA])}: {pct(r, TEST)}" for _, r in per_lambda.iterrows())
    return (
        f"**λ:** best loss.lam = {fmt(best[LAMBDA])} by mean validation accuracy ({pct(best, VAL)})"
        f"{tie_note(ranked(per_lambda), LAMBDA)}; its clean test accuracy {pct(best, TEST)}. "
        f"Clean test accuracy per λ (best other settings): {curve}."
    )


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


def answer_losses(summary, varied) -> str:
    if LOSS not in varied:
        return "**Balanced vs imbalanced:** not enough data: the sweep did not vary the loss type."
    best = best_per(summary, [LOSS]).set_index(LOSS, drop=False)
    others = [k for k in varied if k not in (SEED, LOSS)]
    listing = "; ".join(f"{name} ({describe(r, others)}): test {pct(r, TEST)}" for name, r in best.iterrows())
    text = f"**Loss types** (best setting of each by validation accuracy): {listing}."
    if not {"balanced", "imbalanced"} <= set(best.index):
        return text + " Balanced vs imbalanced: not enough data (both are needed)."
    b, i = best.loc["balanced"], best.loc["imbalanced"]
    diff = 100 * (b[f"{TEST}_mean"] - i[f"{TEST}_mean"])
    stds = (b[f"{TEST}_std"], i[f"{TEST}_std"])
    leader = "balanced" if diff > 0 else "imbalanced"
    if any(pd.isna(std) for std in stds):
        verdict = (
            f"{leader} is ahead by {abs(diff):.2f} points, but on a single seed: "
            "not enough data to compare with the seed spread"
        )
    elif abs(diff) > 100 * sum(stds):
        verdict = (
            f"{leader} is ahead by {abs(diff):.2f} points, more than the seed spread "
            f"(std {100 * stds[0]:.2f} and {100 * stds[1]:.2f})"
        )
    else:
        verdict = (
            f"no clear winner: the difference ({diff:+.2f} points) is within the seed spread "
            f"(std {100 * stds[0]:.2f} and {100 * stds[1]:.2f})"
        )
    dotted = "test_dotted_accuracy"
    shortcut = (
        f" On the dotted test set (the shortcut check), the same settings: balanced {pct(b, dotted)}, "
        f"imbalanced {pct(i, dotted)}."
        if f"{dotted}_mean" in summary
        else ""
    )
    return f"{text} **Does balanced beat imbalanced?** {verdict}.{matched_comparison(summary, varied)}{shortcut}"


def matched_comparison(summary, varied) -> str:
    """Balanced (best λ) minus imbalanced at each setting both ran (e.g. each lr and pool size)."""
    shared = [k for k in varied if k not in (SEED, LOSS, LAMBDA)]
    if not shared:
        return ""
    best = best_per(summary[summary[LOSS].isin(["balanced", "imbalanced"])], [*shared, LOSS])
    pairs = best.pivot_table(index=shared, columns=LOSS, values=f"{TEST}_mean", dropna=False).dropna()
    if pairs.empty or not {"balanced", "imbalanced"} <= set(pairs.columns):
        return ""
    diffs = 100 * (pairs["balanced"] - pairs["imbalanced"])
    return (
        f" At matched {', '.join(shared)}, balanced (best λ) is ahead at {(diffs > 0).sum()} of {len(diffs)} "
        f"settings, mean difference {diffs.mean():+.2f} points (range {diffs.min():+.2f} to {diffs.max():+.2f})."
    )


def answer_pool(summary, varied) -> str:
    if POOL not in varied:
        return "**Pool size:** not enough data: the sweep did not vary pool.size."
    line = [LOSS] if LOSS in varied else []
    best = best_per(summary, [*line, POOL])
    parts = []
    for name, part in best.groupby(LOSS, sort=False) if line else [(None, best)]:
        if part[POOL].nunique() < 2:
            continue
        first, last = part.iloc[0], part.iloc[-1]
        steps = ", ".join(f"{fmt(r[POOL])}: {100 * r[f'{TEST}_mean']:.2f}%" for _, r in part.iterrows())
        change = 100 * (last[f"{TEST}_mean"] - first[f"{TEST}_mean"])
        parts.append(
            f"{name + ': ' if name else ''}{steps} ({change:+.2f} points from {fmt(first[POOL])} "
            f"to {fmt(last[POOL])} corrected samples)"
        )
    if not parts:
        return "**Pool size:** not enough data: fewer than two pool sizes finished."
    return "**Pool size** (mean clean test accuracy, best other settings): " + "; ".join(parts) + "."


# --- the Pareto front of a two-objective search -------------------------------------


def non_dominated(accuracy: list[float], flip_rate: list[float]) -> list[bool]:
    """Whether each (accuracy, flip rate) point is on the Pareto front: no other point
    has at least its accuracy and at most its flip rate and is better in one."""
    points = list(zip(accuracy, flip_rate, strict=True))
    return [not any(a >= ai and f <= fi and (a > ai or f < fi) for a, f in points) for ai, fi in points]


def pareto_table(table: pd.DataFrame, varied: list[str]) -> pd.DataFrame:
    """The finished jobs with both validation objectives, ``front`` marking the
    non-dominated ones (computed here over this sweep folder's jobs)."""
    done = table[(table.status == "done") & table[VAL_FLIP].notna()]
    shown = ("job", *(k for k in varied if k != SEED), VAL, VAL_FLIP, TEST, "dot_flip_rate", "removed.dot_flip_rate")
    front = done[[c for c in shown if c in done]].copy()
    front["job"] = [job_number(Path(name))[0] for name in front.job]
    front["front"] = non_dominated(front[VAL].tolist(), front[VAL_FLIP].tolist())
    return front.sort_values([VAL, VAL_FLIP], ascending=[False, True], kind="stable")


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def counts_line(table: pd.DataFrame) -> str:
    counts = table.status.value_counts()
    order = ["done", "failed", "running", "not started"]
    return f"{len(table)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


# --- plots --------------------------------------------------------------------


def plot_vs(summary, varied, x: str, metric: str, path: Path, xlabel: str, log_x: bool) -> bool:
    """Mean ``metric`` over seeds (error bars: std) against ``x``, one line per method
    (loss type, correction, model: those the sweep varies), each point the best
    setting (by validation) of the other varied keys."""
    if x not in varied or summary[x].dropna().nunique() < 2:
        return False
    line = [k for k in METHOD_KEYS if k in varied and k != x]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    with_x = summary[summary[x].notna()]
    best = best_per(with_x, [*line, x])
    for name, part in best.groupby(line, sort=False, dropna=False) if line else [(None, best)]:
        ax.errorbar(
            part[x].astype(float),
            100 * part[f"{metric}_mean"],
            yerr=100 * part[f"{metric}_std"].fillna(0),
            marker="o",
            capsize=3,
            label=None if name is None else " ".join(map(str, name)),
        )
    # Methods without this setting (the imbalanced loss has no λ): their best as a band.
    for name, part in summary[summary[x].isna()].groupby(line, sort=False, dropna=False) if line else []:
        row = ranked(part).iloc[0]
        std = row[f"{metric}_std"]
        mean, std = 100 * row[f"{metric}_mean"], 0 if pd.isna(std) else 100 * std
        ax.axhline(mean, linestyle="--", color="gray", label=f"{' '.join(map(str, name))} (no {x})")
        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{LABELS[metric]} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if line:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_training_curves(job: Job, path: Path) -> bool:
    history = job.metrics.get("history") or []
    trained = [h for h in history if "train_loss" in h]
    if not trained:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in trained]
    for key, label in (
        ("train_loss", "train"),
        ("train_loss_confounded", "train, confounded part"),
        ("train_loss_corrected", "train, corrected part"),
        ("val_loss", "validation"),
    ):
        if all(key in h for h in trained):
            left.plot(epochs, [h[key] for h in trained], marker=".", label=label)
    left.set_yscale("log")
    left.set_ylabel("loss")
    right.plot(
        [h["epoch"] for h in history], [100 * h["val_accuracy"] for h in history], marker=".", label="validation"
    )
    if all("train_accuracy" in h for h in trained):
        right.plot(epochs, [100 * h["train_accuracy"] for h in trained], marker=".", label="train")
    if job.metrics.get("best_epoch") is not None:
        right.axvline(job.metrics["best_epoch"], color="gray", linestyle=":", label="best epoch")
    right.set_ylabel("accuracy %")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"best run: {job.folder.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- the report -----------------------------------------------------------------


def write_report(sweep_dir: Path) -> str:
    """Write the report files into ``sweep_dir/report/`` and return report.md's text."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    varied = varied_keys(jobs)
    table = job_table(jobs, varied)
    summary = summary_table(table, varied)
    out = sweep_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    table.to_csv(out / "jobs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)

    plots = {}
    if len(summary):
        plots["val_accuracy_vs_lr.png"] = plot_vs(
            summary, varied, LR, VAL, out / "val_accuracy_vs_lr.png", "learning rate (trainer.lr)", log_x=True
        )
        plots["test_accuracy_vs_lambda.png"] = plot_vs(
            summary, varied, LAMBDA, TEST, out / "test_accuracy_vs_lambda.png", "λ (loss.lam)", log_x=True
        )
        plots["test_accuracy_vs_pool_size.png"] = plot_vs(
            summary,
            varied,
            POOL,
            TEST,
            out / "test_accuracy_vs_pool_size.png",
            "corrected samples (pool.size)",
            log_x=True,
        )
    done = [j for j in jobs if j.status == "done" and j.metrics.get(VAL) is not None]
    pareto = any((j.metrics.get("config") or {}).get("objective") == "pareto" for j in done)
    front = pareto_table(table, varied) if pareto and VAL_FLIP in table else pd.DataFrame()
    if len(front):
        plot_pareto(front, out / "pareto_front.png")
        plots["pareto_front.png"] = True
    if done:
        best_job = max(done, key=lambda j: j.metrics[VAL])
        plots["training_curves_best.png"] = plot_training_curves(best_job, out / "training_curves_best.png")

    # The reference models are shown in the reliance table, not per job.
    shown = table.drop(columns=["seconds", VAL_LOSS, *[c for c in table if c.startswith(tuple(REFERENCES))]])
    shown["job"] = [n if n != float("inf") else name for n, name in map(job_number, (j.folder for j in jobs))]
    lines = [f"# Sweep report: {sweep_dir}", "", counts_line(table) + ".", ""]
    if settings_line(jobs):
        lines += [f"Shared by all finished jobs: {settings_line(jobs)}.", ""]
    optuna_file = sweep_dir / "optimization_results.yaml"
    if optuna_file.exists():
        lines += [f"Optuna: {yaml.safe_load(optuna_file.read_text())}", ""]
    lines += [
        "## Jobs",
        "",
        markdown(shown),
        "",
        "## Over seeds (mean ± std, n = finished seeds)",
        "",
        summary_markdown(summary, varied) if len(summary) else "No finished jobs yet.",
        "",
    ]
    if len(summary) and "confounded.path" in table:
        lines += [
            "## Does the model still rely on the confounder? (mean ± std over seeds)",
            "",
            reliance_markdown(table, summary, varied),
            "",
            "Shortcut removed: (confounded - corrected) / (confounded - oracle) per job, then averaged; "
            "1 = as free of the confounder as the oracle, 0 = no change, empty where the references "
            "differ too little to measure against. " + seed_note(table),
            "",
        ]
    if len(front):
        listed = front[front.front].drop(columns="front")
        lines += [
            "## Pareto front: clean validation accuracy vs validation dot flip rate",
            "",
            f"{len(listed)} of {len(front)} finished trials are not dominated (no other trial of this sweep "
            "folder has at least their validation accuracy and at most their validation flip rate); "
            "their test figures:",
            "",
            markdown(listed),
            "",
            "![Pareto front](pareto_front.png)",
            "",
        ]
    lines += ["## Answers", ""]
    lines += [f"- {answer_fit(table, jobs)}"]
    if len(summary):
        lines += [f"- {answer(summary, varied)}" for answer in (answer_lr, answer_lambda, answer_losses, answer_pool)]
    made = [name for name, ok in plots.items() if ok]
    lines += ["", f"Files in {out}: jobs.csv, summary.csv" + "".join(f", {name}" for name in made) + "."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xilsweep.report", description="Tables, plots and answers from a sweep folder."
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. outputs/multirun/2026-01-01/12-00-00")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.sweep_dir)
    except NotASweepError as e:
        print(f"xilsweep.report: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
