"""How long a job's process lives: the jobs a sweep runs in other processes of this machine
(the joblib launcher's workers, submitit's local jobs) end with the sweep's process, and a
job folder is run by one live process at a time.

The sweep's process names itself in an environment variable its workers inherit
(``SweepLifetime``, a Hydra callback); every job started from it watches that process
(``end_with_sweep``). A killed sweep would otherwise leave its workers training
unseen, and a resumed sweep would train their jobs a second time beside them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("xilsweep")
SWEEP_PROCESS = "XILSWEEP_SWEEP_PROCESS"  # "<host>:<pid>" of the process running the sweep
WATCHER = "xilsweep-sweep-watcher"
POLL_SECONDS = 0.5
# A process's start time is known to about this (clock ticks, the boot time derived from the clock)
CLOCK_SLACK_SECONDS = 1.0


def started(pid: int) -> float | None:
    """When process ``pid`` of this machine started (seconds since the epoch), or None when it
    is gone; a zombie (ended, not yet reaped by its parent) is gone. Without ``/proc`` (macOS)
    a live process's start is unknown: 0."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's process
            pass
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:  # no such process (or it ended while being read)
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return None
    return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class SweepLifetime(Callback):
    """``hydra.callbacks.sweep_lifetime``: names the sweep's process to the jobs it starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_PROCESS] = f"{socket.gethostname()}:{os.getpid()}"


def end_with_sweep() -> None:
    """In a job's process: end this process (``os._exit``) within ``POLL_SECONDS`` of the
    end of the sweep's process, where that is another process of this machine. SLURM's jobs
    live as SLURM decides (requeues, ``scancel``), whatever their sweep's process does."""
    host, _, pid = os.environ.get(SWEEP_PROCESS, "").rpartition(":")
    if not pid or host != socket.gethostname() or int(pid) == os.getpid() or "SLURM_JOB_ID" in os.environ:
        return
    if any(thread.name == WATCHER for thread in threading.enumerate()):  # a worker's earlier job started it
        return
    threading.Thread(target=watch_sweep, args=(int(pid),), name=WATCHER, daemon=True).start()


def watch_sweep(pid: int) -> None:
    while started(pid) is not None:
        time.sleep(POLL_SECONDS)
    log.error("the sweep's process %d has ended: ending this job's process %d with it", pid, os.getpid())
    os._exit(3)


def running_elsewhere(record: dict, written: float) -> str | None:
    """Who still runs the job whose ``metrics.json`` (written at ``written``) holds ``record``: its
    process, when the record says ``running`` and that process is alive on this machine and is
    not this one (a process started after the record was written was given the pid again)."""
    pid, host = record.get("pid"), record.get("host")
    if record.get("status") != "running" or host != socket.gethostname() or not isinstance(pid, int):
        return None
    began = started(pid) if pid != os.getpid() else None
    if began is None or began > written + CLOCK_SLACK_SECONDS:
        return None
    return f"process {pid} on {host}"
