"""The speed benchmark starts and writes its JSON (tiny setting; no timing
assertions), and the torchvision-free image grid matches make_grid."""

import json
import subprocess
import sys

import pytest
import torch
from torchvision.utils import make_grid

from conftest import REPO
from xilsweep.tracking import image_grid


def test_benchmark_runs_and_writes_its_json(data_root, tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--tiny", f"--data-root={data_root}", f"--out={out}",
         "--sections=loop,sweeps", "--modes=ensemble", f"--work-dir={tmp_path / 'jobs'}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (loop,) = report["loop"]
    assert loop["model"] == "cnn" and loop["threads"] == 1
    assert loop["samples_per_s"]["xilsweep"] > 0 and loop["samples_per_s"]["reference"] > 0
    assert loop["loop_vs_reference"] == pytest.approx(loop["samples_per_s"]["xilsweep"]
                                                      / loop["samples_per_s"]["reference"])
    assert 0 < loop["train_percent_of_ceiling"] and loop["train_mflop_per_sample"] > loop["forward_mflop_per_sample"]
    sweeps = {s["mode"]: s for s in report["sweeps"]}
    assert set(sweeps) == {"ensemble"}
    for sweep in sweeps.values():
        assert sweep["done"] == sweep["jobs"] == 2 and sweep["jobs_per_hour"] > 0 and sweep["peak_rss_mb"] > 0
    assert "| 1 | cnn |" in result.stdout and "| cnn | ensemble | 2/2 |" in result.stdout


@pytest.mark.parametrize("n,channels", [(1, 1), (5, 1), (8, 1), (40, 1), (13, 3)])
def test_image_grid_matches_torchvision_make_grid(n, channels):
    x = torch.rand(n, channels, 28, 28)
    assert torch.equal(image_grid(x), make_grid(x[:32], nrow=8, padding=2, pad_value=0.5))
