"""Seeing a sweep move: a Hydra callback that, in the process that runs the
sweep, records the sweep's plan and watches the sweep folder, printing one line
per finished job with its key figures, jobs done out of planned, and an
estimate of the time left.

It reads only what the jobs write (``metrics.json``), so it works with every
launcher (joblib, submitit on SLURM, Ray) and sweeper. The plan,
``planned_jobs.yaml`` in the sweep folder, is written when the sweep starts:
the sweep's process (pid and host, so the report can tell a job whose sweep
is gone from one still under way) and, where the sweep's size is known, every
job's overrides (Hydra's basic sweeper: its grid; the xilsweep sweeper adds
its own list) or only how many trials (Optuna's ``n_trials``), written as a
person writes them, and the config keys the sweep varies (``varied``: those whose
values differ between the jobs, or Optuna's search space, and those set to an
interpolation of one), which each job's hparams entry marks. A later call into
the same folder replaces it: its jobs are numbered from 0 again. When the sweep
ends, the last line names the report command.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from xilsweep.errors import DataError
from xilsweep.files import atomic_write_bytes
from xilsweep.metrics import FIGURES, headline, headline_text

log = logging.getLogger("xilsweep.progress")
PLANNED_FILE = "planned_jobs.yaml"
FINISHED = ("done", "failed")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")  # ${seed}: a plain interpolation of another key
NEVER_IMPROVED = "never improved on the confounded model"


@dataclass
class Plan:
    """A sweep folder's ``planned_jobs.yaml``: the process running the sweep (``pid``, ``host``;
    empty in files older sweeps wrote), each planned job (``num``, ``overrides``) or only how
    many ``trials``, the config keys the sweep varies (None in older files), and when the file
    was written (its mtime: the call's start, by the clock of the filesystem the job folders are on)."""

    sweep: dict = field(default_factory=dict)
    jobs: list[dict] = field(default_factory=list)
    trials: int | None = None
    written: float | None = None
    varied: list[str] | None = None

    @property
    def size(self) -> int | None:
        """How many jobs the sweep runs, where that is known."""
        return len(self.jobs) if self.jobs else self.trials


@functools.cache
def parsed(line: str) -> Override:
    """One override line, parsed by Hydra's grammar once (about a millisecond a line; the jobs
    of a sweep share most of theirs)."""
    return OverridesParser.create().parse_override(line)


def readable(overrides: list[str]) -> list[str]:
    """Override lines as a person writes them: Hydra's sweepers escape an interpolation
    (``pretrain.seed=$\\{seed\\}``), which means the same as ``pretrain.seed=${seed}``."""
    return [
        f"{o.get_key_element()}={o.value()}" if isinstance(o.value(), str) and "${" in o.value() else line
        for o, line in zip(map(parsed, overrides), overrides, strict=True)
    ]


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys override lines set (``+loss.lam=1`` -> ``loss.lam``), ``hydra.*`` left out."""
    keys = [parsed(line).key_or_group for line in overrides]
    return [key for key in keys if not key.startswith("hydra")]


def with_interpolating(varied: list[str], values: dict[str, object]) -> list[str]:
    """``varied`` and the keys whose value (``values``) is an interpolation of one of them."""
    return [
        key
        for key, value in values.items()
        if key in varied or (isinstance(value, str) and set(INTERPOLATION.findall(value)) & set(varied))
    ]


def differing_keys(settings: list[dict]) -> list[str]:
    """The keys whose values differ between the dicts ``settings`` (absent counts as a value),
    in first-seen order: what a sweep varies, from its jobs' overrides."""
    keys = dict.fromkeys(key for job in settings for key in job)
    unset = object()
    return [key for key in keys if len({repr(job.get(key, unset)) for job in settings}) > 1]


def varied_keys(jobs: list[list[str]]) -> list[str]:
    """The config keys whose values differ between the jobs (or that only some set), and those
    set to an interpolation of one of them."""
    settings = [{o.key_or_group: o.value() for o in map(parsed, job)} for job in jobs]
    values = {key: value for job in settings for key, value in job.items()}
    return with_interpolating(differing_keys(settings), values)


def search_space(lines: list[str]) -> list[str]:
    """The config keys an Optuna sweep searches (sweep overrides: ``a,b``, ``interval(...)``,
    ``choice(...)``) in ``lines``, and those set to an interpolation of one of them."""
    overrides = [parsed(line) for line in lines]
    values = {o.key_or_group: o.value() for o in overrides}
    return with_interpolating([o.key_or_group for o in overrides if o.is_sweep_override()], values)


def write_plan(
    sweep_dir: Path, jobs: list[list[str]] | None = None, trials: int | None = None, varied: list[str] | None = None
) -> None:
    """Record this process as the sweep's, with its jobs' overrides (and the keys they vary)
    or its number of trials and the keys its search varies."""
    record: dict[str, Any] = {"sweep": {"pid": os.getpid(), "host": socket.gethostname()}}
    if jobs is not None:
        record["jobs"] = [{"num": num, "overrides": readable(job)} for num, job in enumerate(jobs)]
        varied = varied_keys(jobs) if varied is None else varied
    if trials is not None:
        record["trials"] = trials
    if varied is not None:
        record["varied"] = list(varied)
    atomic_write_bytes(yaml.safe_dump(record, sort_keys=False).encode(), Path(sweep_dir) / PLANNED_FILE)


def read_plan(sweep_dir: Path) -> Plan:
    """The sweep folder's plan; an empty one where the sweep wrote none."""
    path = Path(sweep_dir) / PLANNED_FILE
    if not path.exists():
        return Plan()
    try:
        record = yaml.safe_load(path.read_text())
        return Plan(
            sweep=dict(record.get("sweep") or {}),
            jobs=[{"num": int(job["num"]), "overrides": list(job["overrides"])} for job in record.get("jobs") or []],
            trials=None if record.get("trials") is None else int(record["trials"]),
            written=path.stat().st_mtime,
            varied=None if record.get("varied") is None else [str(key) for key in record["varied"]],
        )
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())  # YAML's messages span lines
        raise DataError(f"{path} is damaged ({why}); delete it to read the job folders alone") from e


def planned_at_start(config: DictConfig) -> dict:
    """What the sweep's config says it will run, as ``write_plan``'s keywords: Optuna's number of
    trials and search space, or the grid of Hydra's basic sweeper, made as it makes it (its
    ``params``, then the command line); nothing for other sweepers (the xilsweep sweeper writes
    its jobs itself). Overrides are read as written: ``pretrain.seed=${seed}`` is not resolved here."""
    sweeper = config.hydra.sweeper
    params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper.get("params") else {}
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    lines = [*(f"{key}={value}" for key, value in params.items()), *task]
    if "n_trials" in sweeper:
        try:
            return {"trials": int(sweeper.n_trials), "varied": search_space(lines)}
        except HydraException:  # a search space the sweeper refuses: it says why in a moment
            return {"trials": int(sweeper.n_trials)}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return {}
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    try:
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
        return {"jobs": BasicSweeper.split_arguments(overrides, None)[0]}
    except HydraException:  # a sweep the basic sweeper refuses: it says why in a moment
        return {}


def job_line(record: dict) -> str:
    """A finished job's key figures: clean test accuracy, the headline reliance figure, the share
    removed; a job that kept epoch 0 (the confounded model) is flagged."""
    name = record.get("run_name", "?")
    if record.get("status") != "done":
        return f"{name}: failed ({record.get('reason', '')[:120]})"
    found = headline(record)
    removed = None if found is None else (record.get("shortcut_removed") or {}).get(found[0].key)
    return (
        f"{name}: clean test {FIGURES['test_accuracy'].text(record['test_accuracy'])}"
        + ("" if found is None else f", {headline_text(record)}")
        + ("" if removed is None else f", shortcut removed {removed:.2f}")
        + (f", kept epoch 0: {NEVER_IMPROVED}" if record.get("best_epoch") == 0 else "")
        + f" ({record.get('seconds', 0):.0f} s)"
    )


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_line(done: int, planned: int | None, elapsed: float, record: dict) -> str:
    """``[done/planned done, elapsed, time left]`` and the finished job's line."""
    left = "" if not planned or done >= planned else f", about {duration(elapsed / done * (planned - done))} left"
    return f"[{done}/{planned or '?'} done, {duration(elapsed)}{left}] {job_line(record)}"


class SweepProgress(Callback):
    """``hydra.callbacks.progress``: the sweep's plan when it starts, one line per finished job while it runs."""

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:  # launchers pickle the callbacks with the job: no thread state
        return {"interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        write_plan(sweep_dir, **planned_at_start(config))
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(sweep_dir, time.time()), daemon=True)
        self._thread.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        log.info("report: python -m xilsweep.report %s", config.hydra.sweep.dir)

    def _watch(self, sweep_dir: Path, began: float) -> None:
        seen: set[Path] = set()
        while True:
            stopping = self._stop.wait(self.interval)
            for path in sorted(sweep_dir.glob("*/metrics.json")):
                if path in seen:
                    continue
                try:
                    record = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue  # being written: read it next time
                if record.get("status") in FINISHED:
                    seen.add(path)
                    try:  # read each time: the xilsweep sweeper adds its jobs after the start
                        planned = read_plan(sweep_dir).size
                    except DataError:
                        planned = None
                    log.info("%s", progress_line(len(seen), planned, time.time() - began, record))
            if stopping:
                return
