"""The jobs of a sweep folder and their table.

Reads every job folder of a sweep (any launcher, Optuna's too, finished or
interrupted half-way). A job's status (``STATUSES``) comes from its
``metrics.json``: done, failed with the reason, or running, which is "killed"
once its process (pid and host in the record) no longer exists on this
machine. A job without one failed if its ``run.log`` has an ERROR line (a bad
setting); otherwise it was started by the sweep of ``planned_jobs.yaml``
(``xilsweep.progress``): killed when that sweep's process no longer exists on
this machine, or when the job was last written before that sweep began (left
by an earlier call into the folder), running otherwise. Planned jobs that
never started are listed as "not started"; of a sweep that planned only a
number of trials (Optuna), the count line says how many never started.
A finished job that kept epoch 0 never improved on the confounded model; its
reason says so. Each job's row holds its stopping score, the validation score
its early stopping maximised (``trainer.stop_on``), by which settings are chosen.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from xilsweep import metrics
from xilsweep.lifetime import started
from xilsweep.progress import Plan, read_plan
from xilsweep.resume import HOW_IT_RUNS
from xilsweep.training import STOP_SCORES

REPORT_DIR = "report"
STATUSES = ("done", "failed", "killed", "running", "not started")  # in the order the report counts them
SEED = "seed"  # the setting the summary pools over
# The figures the report's choices name: settings are chosen by the validation score the jobs'
# early stopping maximised (``STOP_SCORE``: trainer.stop_on's), ties broken by the validation
# loss at the kept epoch, and reported by the clean test accuracy; the last epoch's training
# loss and accuracy are the overfit check.
VAL, VAL_LOSS, TEST = "best_val_accuracy", "best_val_loss", "test_accuracy"
VAL_DOTTED = "best_val_dotted_accuracy"
STOP_SCORE = "stop_score"
TRAIN_LOSS, TRAIN_ACC = "train_loss", "train_accuracy"
# A finished job that kept epoch 0 (in every round) is the confounded model it started from.
NEVER_IMPROVED = "never improved on the confounded model: kept epoch 0"


class NotASweepError(Exception):
    """The folder holds no job folders."""


@dataclass
class Job:
    folder: Path
    overrides: dict
    metrics: dict
    status: str
    reason: str


def read_overrides(folder: Path, record: dict) -> dict:
    """``key -> value`` of the job's Hydra overrides (``parse_overrides``), from
    ``.hydra/overrides.yaml`` or, for older runs without it, ``metrics.json``."""
    path = folder / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(path.read_text()) if path.exists() else record.get("overrides")
    if isinstance(lines, str):  # older metrics.json files hold the list as its text
        lines = ast.literal_eval(lines)
    return parse_overrides(lines or [], record.get("config") or {})


def parse_overrides(lines: list, config: dict) -> dict:
    """Overrides parsed by Hydra's own grammar; a setting's value is taken from the
    resolved ``config`` where it has one, an interpolation is kept as written
    (deletions and the settings of how a job runs, ``resume.HOW_IT_RUNS``, skipped:
    a sweep resumed with trainer.resume=true after a crash is the same sweep)."""
    config = OmegaConf.create(config)
    overrides = {}
    for override in OverridesParser.create().parse_overrides([str(line) for line in lines]):
        if override.is_delete() or override.key_or_group in HOW_IT_RUNS:
            continue
        key, written = override.key_or_group, override.value()
        if isinstance(written, str) and "${" in written:  # e.g. pretrain.seed=${seed}: one setting, not one per job
            overrides[key] = written
            continue
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
        overrides[key] = written if value is None or OmegaConf.is_config(value) else value
    return overrides


def logged_error(folder: Path) -> str | None:
    """The message of the first ERROR line in the job's run.log with its continuation lines (up to
    five, up to the next log line: the traceback Hydra logs after it is not the reason)."""
    log_file = folder / "run.log"
    if not log_file.exists():
        return None
    lines = log_file.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if "][ERROR] - " in line:
            message = [line.split("][ERROR] - ", 1)[1]]
            message += list(itertools.takewhile(lambda m: not m.startswith("["), lines[i + 1 :]))[:5]
            return "; ".join(message)
    return None


def process_gone(record: dict) -> bool:
    """True when the process of ``record`` (a job's or the sweep's: ``pid``, ``host``) ran on
    this machine and no longer exists (a zombie counts as gone); a process on another machine
    is not known to be gone."""
    pid, host = record.get("pid"), record.get("host")
    return bool(pid) and host == socket.gethostname() and started(pid) is None


def last_written(folder: Path) -> float:
    """When the job last wrote anything: the newest mtime of its folder, its files and ``.hydra/``."""
    times = []
    for path in [folder, *folder.iterdir(), *(folder / ".hydra").glob("*")]:
        with contextlib.suppress(FileNotFoundError):  # a temporary file renamed meanwhile
            times.append(path.stat().st_mtime)
    return max(times)


def unrecorded_status(folder: Path, plan: Plan) -> tuple[str, str]:
    """Status and reason of a started job without ``metrics.json`` and without a logged error,
    from the sweep process that ran it (unknown in folders of older sweeps: running)."""
    sweep = plan.sweep
    if not sweep:
        return "running", ""
    if plan.written is not None and last_written(folder) < plan.written:
        return "killed", "left by an earlier call into this sweep folder, which ended before the job wrote a result"
    if process_gone(sweep):
        return "killed", f"the sweep's process {sweep['pid']} on {sweep['host']} ended before the job wrote a result"
    return "running", ""


def read_job(folder: Path, plan: Plan) -> Job:
    metrics_file = folder / "metrics.json"
    try:
        record = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        record = {"status": "failed", "reason": f"metrics.json unreadable: {e}"}
    if record:
        status, reason = record.get("status", "running"), record.get("reason", "")
        if status == "running" and process_gone(record):
            status, reason = "killed", f"process {record['pid']} on {record['host']} ended without a result"
    else:
        error = logged_error(folder)
        status, reason = ("failed", error) if error else unrecorded_status(folder, plan)
    return Job(folder, read_overrides(folder, record), record, status, reason)


def job_number(folder: Path):
    head = folder.name.split("_", 1)[0]
    return (int(head), folder.name) if head.isdigit() else (float("inf"), folder.name)


def is_job_folder(path: Path) -> bool:
    """A folder a job wrote: with ``.hydra/``, ``metrics.json`` or ``run.log``."""
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and path.name != REPORT_DIR
        and any((path / name).exists() for name in (".hydra", "metrics.json", "run.log"))
    )


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of the sweep folder, in job order, with those planned but never started."""
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a folder")
    folders = [p for p in sweep_dir.iterdir() if is_job_folder(p)]
    plan = read_plan(sweep_dir)
    if not folders and plan.trials:
        raise NotASweepError(f"{sweep_dir}: none of the {plan.trials} planned trials has started")
    if not folders and not plan.jobs:
        hint = (
            " (it is a single job's folder; pass the sweep folder above it)" if (sweep_dir / ".hydra").exists() else ""
        )
        raise NotASweepError(
            f"{sweep_dir} is not a sweep folder: no job folders (with .hydra/, metrics.json or run.log) inside{hint}"
        )
    jobs = [read_job(p, plan) for p in sorted(folders, key=job_number)]
    started = {job_number(job.folder)[0] for job in jobs}
    # planned by the sweeper but never started (an interrupted sweep)
    jobs += [
        Job(sweep_dir / f"{job['num']}_not_started", parse_overrides(job["overrides"], {}), {}, "not started", "")
        for job in plan.jobs
        if job["num"] not in started
    ]
    return sorted(jobs, key=lambda job: job_number(job.folder))


def counts_line(jobs: list[Job], sweep_dir: Path | None = None) -> str:
    """``N jobs: a done, b killed, ...`` and, where the sweep (of ``sweep_dir``) planned only a
    number of trials (Optuna, numbered from 0), how many of them never started."""
    counts = Counter(job.status for job in jobs)
    line = f"{len(jobs)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    trials = read_plan(sweep_dir).trials if sweep_dir else None
    started = {job_number(job.folder)[0] for job in jobs}
    missing = sum(num not in started for num in range(trials or 0))
    return line + (f"; {missing} of {trials} planned trials not started" if missing else "")


def reference_figures() -> list[str]:
    """The figures of the reference models the report reads reliance against."""
    return [TEST, *(f.key for f in metrics.RELIANCE)]


def stop_rule(record: dict) -> str:
    """The job's ``trainer.stop_on`` (runs older than the setting stopped on clean accuracy)."""
    config = (record.get("config") or {}).get("trainer") or {}
    return (record.get("settings") or {}).get("stop_on") or config.get("stop_on") or "clean"


def stop_score(record: dict) -> float | None:
    """The validation score the job's early stopping maximised, at the epoch it kept."""
    kept = {"val_accuracy": record.get(VAL), "val_dotted_accuracy": record.get(VAL_DOTTED)}
    try:
        return STOP_SCORES[stop_rule(record)](kept)
    except (KeyError, TypeError):  # a record without the figures its rule reads
        return None


def never_improved(job: Job) -> bool:
    """Kept epoch 0 in every round (a later round's epoch 0 is the model the round before kept)."""
    rounds = job.metrics.get("rounds") or [job.metrics]
    return job.status == "done" and all(done.get("best_epoch") == 0 for done in rounds)


def record_figures(record: dict) -> dict:
    """Every figure of ``metrics.FIGURES`` by its key, from a job's record: its own, the
    shares of the shortcut removed (``removed.<key>``) and those read from the history."""
    history = record.get("history") or []
    trained = [h for h in history if TRAIN_LOSS in h]
    best = [h for h in history if h.get("epoch") == record.get("best_epoch")]
    removed = record.get("shortcut_removed") or {}
    read = {
        **record,
        **{metrics.removed_figure(key).key: removed.get(key) for key in metrics.REMOVED_SHOWN},
        TRAIN_LOSS: trained[-1][TRAIN_LOSS] if trained else None,
        TRAIN_ACC: trained[-1].get(TRAIN_ACC) if trained else None,
        VAL_LOSS: best[0].get("val_loss") if best else None,
    }
    return {**{key: read.get(key) for key in metrics.FIGURES}, STOP_SCORE: stop_score(record)}


def job_names(jobs: list[Job], short: bool = False) -> list[str]:
    """Each job's name: its folder's (``short``: its number), prefixed by its sweep folder (as
    a path from the sweep folders' common parent) where jobs of several sweep folders share a
    number, such as the calls of one Optuna study."""
    numbers = [job_number(job.folder)[0] for job in jobs]
    names = [str(n) if short and n != float("inf") else job.folder.name for n, job in zip(numbers, jobs, strict=True)]
    sweeps = {job.folder.parent for job in jobs}
    if len(sweeps) < 2 or len(set(numbers)) == len(numbers):
        return names
    common = os.path.commonpath(sweeps)
    return [f"{os.path.relpath(job.folder.parent, common)}/{name}" for job, name in zip(jobs, names, strict=True)]


def job_row(job: Job, name: str, varied: list[str]) -> dict:
    """A job's row: its name, varied settings and seed, status, figures, its reference models'
    figures and model files, seconds in all and the reason it failed (or never improved)."""
    record = job.metrics
    row = {"job": name, **{k: job.overrides.get(k) for k in varied if k != SEED}}
    row[SEED] = job.overrides.get(SEED, (record.get("settings") or {}).get("seed"))
    row["status"] = job.status
    row.update(record_figures(record))
    for kind in metrics.REFERENCE_LABELS:
        reference = record.get(kind) or {}
        row.update({f"{kind}.{key}": reference.get(key) for key in reference_figures()})
        row[f"{kind}.path"] = reference.get("path")
    row["seconds"] = record.get("seconds")
    row["reason"] = NEVER_IMPROVED if never_improved(job) else job.reason
    return row


def job_table(jobs: list[Job], varied: list[str]) -> pd.DataFrame:
    """One row per job; a column read from the records that no job has (a figure older runs
    lack, or none finished yet) is left out."""
    table = pd.DataFrame([job_row(job, name, varied) for job, name in zip(jobs, job_names(jobs), strict=True)])
    described = {"job", *varied, SEED, "status", "reason"}
    return table.drop(columns=[c for c in table if c not in described and table[c].isna().all()])
