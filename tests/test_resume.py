"""Resumable jobs: a job killed at an epoch boundary or mid-epoch, and an Optuna
sweeper killed mid-study, continue to the result an uninterrupted run gives; a
killed job resumed with other settings is refused, run again without resume it
starts over."""

import json
import shutil
import signal
import subprocess
import time

import pytest
from omegaconf import OmegaConf

from helpers import TINY, comparable, events, run_job_dir, run_xilsweep, start_xilsweep
from xilsweep.files import read_checked

LONG = [
    "data.n_train=1200",
    "trainer.max_epochs=4",  # killed after epoch 2, resumed for the last two
    "trainer.patience=10",
    "pool.size=20",
    "pretrain.epochs=1",
    "trainer.num_threads=1",
]


def start_job(data_root, out):
    args = [*LONG, f"data.root={data_root}", f"hydra.run.dir={out}"]
    return start_xilsweep(args, out.parent, output=subprocess.DEVNULL)


def wait_for_checkpoint_epoch(path, epoch, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            try:
                if read_checked(path)[1]["epoch"] >= epoch:
                    return
            except Exception:
                pass  # being replaced right now
        assert proc.poll() is None, "job ended before it could be killed"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "job"
    result = run_xilsweep([*LONG, f"data.root={data_root}", f"hydra.run.dir={out}"], out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("delay", [0.0, 0.25], ids=["epoch_boundary", "mid_epoch"])
def test_killed_job_resumes_to_the_same_result(delay, data_root, tmp_path, uninterrupted):
    out = tmp_path / "job"
    out.parent.mkdir(exist_ok=True)
    proc = start_job(data_root, out)
    wait_for_checkpoint_epoch(out / "checkpoint.pth", 2, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    resumed = run_job_dir(data_root, out, "trainer.resume=true", base=LONG)
    assert comparable(resumed) == comparable(uninterrupted)
    assert not (out / "checkpoint.pth").exists()
    steps = [e.step for e in events(out).Scalars("Loss/train_epoch")]
    assert steps == list(range(1, resumed["epochs_run"] + 1))  # no duplicated epochs after the resume


# tiny, with epochs enough to be killed during the fit
KILLABLE = [*TINY, "trainer.max_epochs=8", "trainer.patience=10"]


@pytest.fixture(scope="module")
def killed_job(data_root, tmp_path_factory):
    """A tiny job killed after its first epoch: a running record, a checkpoint, TensorBoard events."""
    out = tmp_path_factory.mktemp("killed") / "job"
    proc = start_xilsweep([*KILLABLE, f"data.root={data_root}", f"hydra.run.dir={out}"], out.parent, subprocess.DEVNULL)
    wait_for_checkpoint_epoch(out / "checkpoint.pth", 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out


@pytest.fixture
def killed(killed_job, tmp_path):
    out = tmp_path / "job"
    shutil.copytree(killed_job, out)
    return out


def job_files(out) -> dict:
    """The job's own files and their bytes (run.log, which logs every call, and .hydra/ left out)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.log"}


@pytest.mark.parametrize(
    "change, difference, saved",
    [
        ("loss.lam=1000", "loss.lam: 1.0 there, 1000.0 now", ("loss.lam", 1.0)),
        ("model=lenet", "model.channels: [16, 32] there, [6, 16] now", ("model.channels", [16, 32])),
    ],
    ids=["loss.lam", "model"],
)
def test_resume_with_other_settings_is_one_line_and_changes_nothing(change, difference, saved, killed, data_root):
    before, overrides = job_files(killed), (killed / ".hydra" / "overrides.yaml").read_text()
    args = [*KILLABLE, f"data.root={data_root}", f"hydra.run.dir={killed}", "trainer.resume=true", change]
    result = run_xilsweep(args, killed.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    [line] = [line for line in output.splitlines() if "[ERROR]" in line]
    assert f"{killed} holds a job with other settings ({difference}" in line
    assert job_files(killed) == before  # checkpoint, record and events untouched
    # .hydra/ says what the job ran with, not what the refused call asked for
    assert (killed / ".hydra" / "overrides.yaml").read_text() == overrides
    key, value = saved
    assert OmegaConf.select(OmegaConf.load(killed / ".hydra" / "config.yaml"), key) == value


def test_a_killed_job_run_again_without_resume_starts_over_in_a_clean_run(killed, data_root):
    assert list(killed.glob("events.out.tfevents.*")) and (killed / "checkpoint.pth").exists()
    record = run_job_dir(data_root, killed, base=KILLABLE)
    log = (killed / "run.log").read_text()
    assert "starting over from epoch 0, its checkpoint and TensorBoard events removed" in log
    assert record["status"] == "done" and not (killed / "checkpoint.pth").exists()
    assert len(list(killed.glob("events.out.tfevents.*"))) == 1
    steps = [e.step for e in events(killed).Scalars("Loss/train_epoch")]
    assert steps == list(range(1, record["epochs_run"] + 1))


def test_optuna_study_in_sqlite_resumes_after_the_sweeper_is_killed(data_root, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        *TINY,
        f"data.root={data_root}",
        "hparams_search=lambda_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_jobs=1",
    ]
    sweeper = start_xilsweep(
        ["-m", *args, "hydra.sweeper.n_trials=20", f"hydra.sweep.dir={tmp_path / 'first'}"],
        tmp_path,
        output=subprocess.DEVNULL,
    )

    def complete():
        try:
            study = optuna.load_study(study_name="xil_lambda", storage=storage)
        except Exception:
            return 0  # not created yet
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    deadline = time.time() + 180
    while complete() < 1:
        assert sweeper.poll() is None and time.time() < deadline
        time.sleep(0.2)
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait()
    done_before = complete()
    result = run_xilsweep(["-m", *args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'second'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert complete() == done_before + 1  # the same study, one more finished trial
