"""Shared fixtures: a private copy of the bundled MNIST digits, the generated
08MNIST data, and a helper that runs ``python -m xilsweep.run`` in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xilsweep.data import ConfoundedMNIST08

REPO = Path(__file__).resolve().parents[1]

# Tiny but real settings for jobs run from tests: a 300-digit training subset.
TINY = ["data.n_train=300", "pool.size=10", "trainer.max_epochs=2", "pretrain.epochs=1",
        "trainer.num_threads=1"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding only the bundled .gz files, so tests never touch data/."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(REPO / "data" / "MNIST" / "raw", root / "MNIST" / "raw",
                    ignore=shutil.ignore_patterns("*-ubyte"))
    return root


@pytest.fixture(scope="session")
def data(data_root):
    return ConfoundedMNIST08(root=str(data_root)).load()


def run_xilsweep(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "xilsweep.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def xilsweep_cli():
    return run_xilsweep
