"""A non-editable install carries the configs: the default job composes from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import REPO


def test_the_installed_wheel_runs_the_default_config_from_any_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves the checkout untouched
    skipped = {".venv", ".git", "outputs", "data", "build", "xilsweep.egg-info"}
    shutil.copytree(
        REPO, source, symlinks=True, ignore=lambda folder, names: skipped & set(names) if folder == str(REPO) else set()
    )
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("xilsweep-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "xilsweep.run", "--cfg", "job", "--resolve", "loss=rrr"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "_target_: xilsweep.losses.rrr.RRR" in result.stdout
    assert "lam: 100.0" in result.stdout and "size: 100" in result.stdout  # RRR's weight tuned for 08MNIST
    where = subprocess.run(
        [sys.executable, "-c", "import xilsweep; print(xilsweep.__file__)"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(target))  # the installed copy ran, not the checkout
