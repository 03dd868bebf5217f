"""Shared fixtures: a private copy of the bundled MNIST digits, the generated
08MNIST data, and ``python -m xilsweep.run`` in a subprocess (see helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_xilsweep
from xilsweep.data import ConfoundedMNIST08


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding only the bundled .gz files, so tests never touch data/."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(REPO / "data" / "MNIST" / "raw", root / "MNIST" / "raw", ignore=shutil.ignore_patterns("*-ubyte"))
    return root


@pytest.fixture(scope="session")
def data(data_root):
    return ConfoundedMNIST08(root=str(data_root)).load()


@pytest.fixture
def xilsweep_cli():
    return run_xilsweep


# Files whose tests mostly wait (on SLURM's time limits, a study's heartbeats, a Ray head):
# collected first, so that pytest-xdist (with --no-loadscope-reorder, see the Makefile) starts
# them while other workers run the busy files.
WAITING_FILES = ("test_slurm.py", "test_cluster_optuna.py", "test_ray.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in WAITING_FILES)  # stable: order kept otherwise
