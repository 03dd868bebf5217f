"""hydra/launcher=ray (the ray extra): a two-job sweep on a Ray head the test starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, TINY

FAST = [*TINY, "save_model=false", "explainer.n_images=16"]
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture
def ray_head():
    """``ray start --head`` on a free port, joined with address=auto; stopped (with every process
    it started) afterwards."""
    if not RAY.exists() and not shutil.which("ray"):
        pytest.skip('Ray is not installed (pip install "xilsweep[ray]")')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen(
        [
            str(RAY if RAY.exists() else "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # the workers import this xilsweep
    output = []
    for line in head.stdout:  # --block: stays in the foreground until stopped
        output.append(line)
        if "Ray runtime started" in line:
            break
    else:
        pytest.fail("ray start --head failed:\n" + "".join(output[-20:]))
    try:
        yield
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block then stops the head's processes
        head.wait(timeout=60)


def test_sweep_runs_on_a_running_ray_cluster(ray_head, xilsweep_cli, data_root, tmp_path):
    sweep = tmp_path / "sweep"
    began = time.monotonic()
    result = xilsweep_cli(
        [
            "-m",
            *FAST,
            f"data.root={data_root}",
            "seed=0,1",
            "trainer.num_threads=null",
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.address=auto",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((folder / "metrics.json").read_text()) for folder in sorted(sweep.glob("[0-9]_*"))]
    assert [r["settings"]["seed"] for r in runs] == [0, 1]
    assert all(r["status"] == "done" and r["torch_threads"] == 1 for r in runs)  # one CPU per Ray task
    assert os.getpid() not in {r["pid"] for r in runs} and len({r["pid"] for r in runs}) == 2  # Ray workers
    print(f"two-job sweep on a Ray head: {time.monotonic() - began:.0f} s")
