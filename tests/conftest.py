"""Shared fixtures: a private copy of the bundled MNIST digits, the generated
08MNIST data, and ``python -m xilsweep.run`` in a subprocess (see helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_xilsweep, write_folder
from xilsweep.data import ConfoundedMNIST08
from xilsweep.datasets.patch_mnist import PatchMNIST


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


@pytest.fixture(scope="session")
def patch_data(data_root):
    """Patch-MNIST in a smaller frame than its default (quicker; not 28 pixels): the colour path."""
    return PatchMNIST(root=str(data_root), image_size=32, patch_size=6).load()


@pytest.fixture(params=["mnist08", "patch_mnist"])
def digits(request):
    """08MNIST and Patch-MNIST in turn: a test of the one runs on three channels too."""
    return request.getfixturevalue("data" if request.param == "mnist08" else "patch_data")


@pytest.fixture(scope="session")
def folder_manifest(data, tmp_path_factory) -> Path:
    """A manifest for data=folder: 400 images of each of 08MNIST's train, val and test splits
    as PNGs with their masks; no oracle's set, no dotted test set."""
    return write_folder(data, tmp_path_factory.mktemp("folder"), splits=("train", "val", "test"), limit=400)


@pytest.fixture
def xilsweep_cli():
    return run_xilsweep


@pytest.fixture
def plots_not_rendered(monkeypatch):
    """A report's plots drawn and their files named, but not rendered to PNG (most of a
    report's time), for tests that read its text and tables; test_report.py's
    test_report_tables_one_row_per_job_and_mean_std_n_over_seeds renders them."""
    from xilsweep.results import curves, plots

    def save(fig, path: Path) -> None:
        plots.plt.close(fig)
        path.touch()

    monkeypatch.setattr(plots, "save", save)
    monkeypatch.setattr(curves, "save", save)


# The slowest files, slowest first (seconds of a full run, with their waits on SLURM, a study's
# heartbeats or a Ray head): pytest-xdist (with --no-loadscope-reorder, see the Makefile) hands
# whole files to the workers in this order, so the files left for the end are short ones and
# the workers finish together. The other files follow in collection order.
SLOW_FILES = (
    "test_slurm.py",
    "test_cluster_optuna.py",
    "test_bench.py",
    "test_experiments.py",
    "test_ray.py",
    "test_search.py",
    "test_torchvision.py",
    "test_resume.py",
    "test_report.py",
    "test_reliance.py",
    "test_tensorboard.py",
    "test_lifetime.py",
    "test_reliability.py",
    "test_folder.py",
    "test_run.py",
    "test_bad_input.py",
    "test_zoo.py",
    "test_readme.py",
    "test_explain.py",
    "test_interaction.py",
    "test_patch_mnist.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: order kept otherwise
