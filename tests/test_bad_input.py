"""Bad input everywhere: one clear line per problem, and no output left behind."""

import json
import os
import shutil
import stat
import subprocess

import pytest
import torch

from helpers import TINY, job_config, run_xilsweep
from xilsweep.run import run_job


def test_checkpoint_from_a_different_model_is_reported(data_root, tmp_path):
    from xilsweep.models import ConvNet

    ckpt = tmp_path / "other.pth"
    torch.save(ConvNet(channels=[4], pool=[True], hidden=[8]).state_dict(), ckpt)
    out = tmp_path / "job"
    result = run_xilsweep(
        [*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", f"pretrain.checkpoint={ckpt}"], tmp_path
    )
    assert result.returncode == 2
    assert "was saved from a different model" in result.stdout + result.stderr
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss=focal", "Could not find 'loss/focal'"),
        ("loss.lam=big", "Value 'big' of type 'str' could not be converted to Float\n    full_key: loss.lam"),
        ("seed=abc", "seed='abc' is not allowed: an integer"),
    ],
)
def test_bad_input_gives_one_clear_line_and_leaves_no_output(override, message, data_root, tmp_path):
    """Through the command line: Hydra's own errors (an unknown option, a wrong type) and one
    of xilsweep's. The other settings xilsweep checks are tested in-process (test_run.py)."""
    out = tmp_path / "job"
    result = run_xilsweep(
        [*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", *override.split()], tmp_path, own_process=True
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0 and message in text, text[-2000:]
    assert "Traceback" not in text
    assert not (out / "metrics.json").exists() and not list(out.glob("events.out.tfevents.*"))


def test_every_problem_is_reported_one_line_each(data_root, tmp_path):
    problems = ("loss.lam=-1.5", "trainer.lr=-0.5", "sampler.k=99")  # floats print as written
    out = tmp_path / "job"
    result = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", *problems], tmp_path)
    assert result.returncode == 2
    for text in (result.stdout + result.stderr, (out / "run.log").read_text()):
        lines = [line for line in text.splitlines() if "is not allowed" in line]
        assert len(lines) == len(problems), text[-2000:]
        for problem in problems:
            assert sum(f"{problem} is not allowed" in line for line in lines) == 1, problem


@pytest.fixture
def read_only(tmp_path):
    """A read-only view of a folder (a bind mount), as a lab's shared data root or a full disk is."""
    source, view = tmp_path / "source", tmp_path / "read_only"
    source.mkdir()
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_an_output_folder_that_cannot_be_written_is_one_line(read_only, data_root, tmp_path):
    _, view = read_only
    result = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={view}/job"], tmp_path)
    assert result.returncode == 2
    assert f"hydra.run.dir='{view}/job' is not allowed: a folder this user can write" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_read_only_data_root_with_a_complete_cache_runs_and_files_follow_the_umask(
    read_only, data_root, tmp_path, caplog
):
    """In-process: a job fills a data root's caches, then a job on a read-only view of it runs.
    The files the first wrote are readable as the user's umask allows (a lab's shared folder)."""
    source, view = read_only
    shutil.copytree(data_root, source, dirs_exist_ok=True)
    first = tmp_path / "first"
    first.mkdir()
    run_job(job_config(TINY, source), first)
    mask = os.umask(0)
    os.umask(mask)
    for path in (first / "metrics.json", first / "model.pth", *source.rglob("*.pth"), *source.rglob("reasons_*")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    for cached in source.rglob("reasons_*.json"):  # the references' figures too are recomputed, not written
        cached.unlink()
    second = tmp_path / "second"
    second.mkdir()
    run_job(job_config(TINY, view), second)
    assert "the reference figures are not cached" in caplog.text
    assert json.loads((second / "metrics.json").read_text())["status"] == "done"
