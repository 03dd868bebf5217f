"""Seeing a sweep move: a Hydra callback that, in the process that runs the
sweep, watches the sweep folder and prints one line per finished job with its
key figures, jobs done out of planned, and an estimate of the time left.

It reads only what the jobs write (``metrics.json``), so it works with every
launcher (joblib, submitit on SLURM, Ray) and sweeper. The planned jobs come
from ``planned_jobs.yaml``, which the xilsweep sweeper writes when the sweep
starts, or, for other sweepers, from the sweep's own size (Optuna's
``n_trials``, the grid of Hydra's basic sweeper).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("xilsweep.progress")
PLANNED_FILE = "planned_jobs.yaml"
FINISHED = ("done", "failed")


def planned_jobs(config: DictConfig, sweep_dir: Path) -> int | None:
    """How many jobs the sweep will run, where that is known."""
    planned = sweep_dir / PLANNED_FILE
    if planned.exists():
        return len(OmegaConf.load(planned).jobs)
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return math.prod(len(list(o.sweep_iterator())) if o.is_sweep_override() else 1 for o in overrides)


def job_line(record: dict) -> str:
    """A finished job's key figures."""
    name = record.get("run_name", "?")
    if record.get("status") != "done":
        return f"{name}: failed ({record.get('reason', '')[:120]})"
    removed = (record.get("shortcut_removed") or {}).get("dot_flip_rate")
    shortcut = "" if removed is None else f", shortcut removed {removed:.2f}"
    flip = record.get("dot_flip_rate")
    return (
        f"{name}: clean test {100 * record['test_accuracy']:.2f}%"
        + ("" if flip is None else f", dot flip rate {flip:.3f}")
        + shortcut
        + f" ({record.get('seconds', 0):.0f} s)"
    )


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class SweepProgress(Callback):
    """``hydra.callbacks.progress``: one line per finished job while a sweep runs."""

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
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(config, sweep_dir, time.time()), daemon=True)
        self._thread.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _watch(self, config: DictConfig, sweep_dir: Path, began: float) -> None:
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
                    planned = planned_jobs(config, sweep_dir)
                    done, elapsed = len(seen), time.time() - began
                    left = (
                        ""
                        if not planned or done >= planned
                        else f", about {duration(elapsed / done * (planned - done))} left"
                    )
                    log.info("[%d/%s done, %s%s] %s", done, planned or "?", duration(elapsed), left, job_line(record))
            if stopping:
                return
