"""The speed benchmark starts and writes its JSON (tiny setting; no timing assertions)."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO


def test_benchmark_runs_and_writes_its_json(data_root, tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "speed.py"),
            "--tiny",
            f"--data-root={data_root}",
            f"--out={out}",
            "--sections=profile,loop,sweeps,sharing",
            "--modes=in_process",
            f"--work-dir={tmp_path / 'jobs'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (loop,) = report["loop"]
    assert loop["model"] == "cnn" and loop["threads"] == 1
    assert loop["samples_per_s"]["xilsweep"] > 0 and loop["samples_per_s"]["reference"] > 0
    assert loop["loop_vs_reference"] == pytest.approx(
        loop["samples_per_s"]["xilsweep"] / loop["samples_per_s"]["reference"]
    )
    assert 0 < loop["train_percent_of_ceiling"] and loop["train_mflop_per_sample"] > loop["forward_mflop_per_sample"]
    (sweep,) = report["sweeps"]
    assert sweep["mode"] == "in_process" and sweep["done"] == sweep["jobs"] == 2
    assert sweep["jobs_per_hour"] > 0 and sweep["peak_rss_mb"] > 0
    profile = report["profile"]["warm_mean"]
    assert profile["startup"] == pytest.approx(profile["compose"] + profile["assemble"] + profile["start"])
    assert 0 < profile["reasons_share"] < 1 and profile["total"] >= profile["fit"] > 0
    assert "reason metrics, share of a default job's time" in result.stdout  # a target line, measured
    (sharing,) = report["sharing"]
    assert sharing["workers"] == 2 and sharing["done"] == sharing["jobs"] == 2 and sharing["vs_first"] == 1.0
    assert "| 1 | cnn |" in result.stdout and "| cnn | in_process | 2/2 |" in result.stdout
    assert "| 2 | 2/2 |" in result.stdout  # the sharing table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the cuda mode would run")
def test_cuda_mode_without_a_gpu_stops_with_one_line(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--device=cuda", f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and not out.exists()
    assert "--device cuda: no CUDA GPU is visible here" in result.stderr


def test_method_cost_benchmark_times_every_method_against_balanced(data_root, monkeypatch, capsys):
    """In process (its imports are the suite's): one step per method, every method's row and the targets."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import methods

    monkeypatch.setattr(sys, "argv", ["methods.py", "--steps=1", "--repeats=1", f"--root={data_root}"])
    methods.main()
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert set(methods.METHODS) <= set(rows) and rows["balanced"].rstrip().endswith("| 1.00 |")
    assert all(f"target {name} <= " in printed for name in methods.TARGETS)
