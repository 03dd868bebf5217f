"""A killed parallel sweep takes its workers with it, and a job folder is run by one live
process at a time."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import TINY, events, job_config, job_folders, job_metrics, run_xilsweep, start_xilsweep
from xilsweep.job import ConfigError
from xilsweep.lifetime import running_elsewhere, started
from xilsweep.resume import finished_record

# two jobs in two joblib workers, with epochs enough to be killed during the fit
SWEEP = [*TINY, "trainer.max_epochs=12", "trainer.patience=20", "seed=0,1"]


def test_a_killed_parallel_sweep_ends_its_workers_and_resumes_each_job_once(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SWEEP, f"data.root={data_root}", f"hydra.sweep.dir={sweep}"]
    parallel = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    process = start_xilsweep([*args, *parallel], tmp_path, output=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(sweep.glob("*/checkpoint.pth"))) < 2:  # both jobs past their first epoch
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [json.loads((folder / "metrics.json").read_text())["pid"] for folder in job_folders(sweep)]
    assert process.pid not in workers and len(set(workers)) == 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while any(started(pid) is not None for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its sweep"
        time.sleep(0.1)

    # resumed in the sweep's own process (the launcher does not matter here, and it starts no workers)
    resumed = run_xilsweep([*args, "trainer.resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for folder, record in zip(job_folders(sweep), job_metrics(sweep), strict=True):
        assert record["status"] == "done"
        # each epoch logged once, in order (the epoch cut short between its log line and its checkpoint twice)
        logged = [int(n) for n in re.findall(r"\] - epoch (\d+)/", (folder / "run.log").read_text())]
        assert logged == sorted(logged) and set(logged) == set(range(record["epochs_run"] + 1))
        assert len(logged) <= len(set(logged)) + 1
        steps = [e.step for e in events(folder).Scalars("Loss/train_epoch")]
        assert steps == list(range(1, record["epochs_run"] + 1))


@pytest.fixture
def other_process():
    """A live process of this machine that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_running_record_belongs_to_its_live_process_only(other_process):
    record = {"status": "running", "pid": other_process.pid, "host": socket.gethostname()}
    assert running_elsewhere(record, written=time.time()) == f"process {other_process.pid} on {socket.gethostname()}"
    # a record older than the process: the pid was given to another process since
    assert running_elsewhere(record, written=time.time() - 3600) is None
    assert running_elsewhere({**record, "host": "elsewhere"}, written=time.time()) is None  # not known here
    assert running_elsewhere({**record, "status": "failed"}, written=time.time()) is None
    assert running_elsewhere({**record, "pid": os.getpid()}, written=time.time()) is None  # this process
    other_process.kill()  # ended, not yet reaped (no wait): a zombie is gone
    deadline = time.monotonic() + 5
    while started(other_process.pid) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert running_elsewhere(record, written=time.time()) is None


def test_a_job_still_running_in_another_process_is_not_run_again(other_process, data_root, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    host = socket.gethostname()
    (out / "metrics.json").write_text(
        json.dumps({"status": "running", "pid": other_process.pid, "host": host, "config": {}})
    )
    for resume in ("false", "true"):
        with pytest.raises(ConfigError, match=f"{out} is being run by process {other_process.pid} on {host} "):
            finished_record(job_config([*TINY, f"trainer.resume={resume}"], data_root), out)
