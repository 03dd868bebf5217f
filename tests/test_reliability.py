"""Reproducibility, resumable jobs, safe cache files, and bad input everywhere."""

import json
import multiprocessing
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, events, run_xilsweep, start_xilsweep
from xilsweep.data import ConfoundedMNIST08
from xilsweep.errors import DataError
from xilsweep.files import read_checked

# fields that legitimately differ between two runs of the same job
VOLATILE = {"pid", "config", "run_name", "overrides"}


def comparable(metrics: dict) -> dict:
    """The record without timings and the fields that name the run."""
    out = {k: v for k, v in metrics.items() if k not in VOLATILE and "seconds" not in k}
    out["history"] = [{k: v for k, v in h.items() if "seconds" not in k} for h in metrics["history"]]
    return out


def run_job_dir(data_root, out, *extra, base=TINY):
    result = run_xilsweep([*base, f"data.root={data_root}", f"hydra.run.dir={out}", *extra], out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_same_config_and_seed_give_identical_metrics(data_root, tmp_path):
    a = run_job_dir(data_root, tmp_path / "a")
    b = run_job_dir(data_root, tmp_path / "b")
    assert comparable(a) == comparable(b)
    assert a["data_hash"] and a["version"] and a["config"]["loss"]["lam"] == 1.0
    c = run_job_dir(data_root, tmp_path / "c", "seed=1")
    assert comparable(c)["history"] != comparable(a)["history"]


LONG = [
    "data.n_train=1200",
    "trainer.max_epochs=6",
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


def test_a_finished_job_is_not_rerun_by_accident(data_root, tmp_path):
    out = tmp_path / "job"
    first = run_job_dir(data_root, out)
    again = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}"], tmp_path)
    assert again.returncode == 2 and "already holds a finished job" in again.stdout + again.stderr
    resumed = run_job_dir(data_root, out, "trainer.resume=true")
    assert resumed == first  # untouched


def build_data(root):
    return ConfoundedMNIST08(root=root).load().content_hash


def test_concurrent_builders_produce_one_valid_cache(data_root, tmp_path):
    root = tmp_path / "root"
    (root / "MNIST").mkdir(parents=True)
    (root / "MNIST" / "raw").symlink_to(data_root / "MNIST" / "raw")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        hashes = pool.map(build_data, [str(root)] * 2)
    assert hashes[0] == hashes[1]
    files = list((root / "08MNIST").rglob("*.pth"))
    settings = ConfoundedMNIST08(root=str(root)).generation_settings()
    assert len(files) == 2 and [read_checked(f)[0] for f in files] == [settings, settings]  # DataError if damaged
    assert not list((root / "08MNIST").rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_is_detected_and_rebuilt(damage, data_root, tmp_path, caplog):
    root = tmp_path / "root"
    (root / "MNIST").mkdir(parents=True)
    (root / "MNIST" / "raw").symlink_to(data_root / "MNIST" / "raw")
    spec = ConfoundedMNIST08(root=str(root))
    good = spec.load().content_hash
    path = spec.directory / "confounded_v1" / "train.pth"
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0xFF  # inside the pixel data
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="truncated or corrupt" if damage == "truncate" else "checksum"):
        read_checked(path)
    assert spec.load().content_hash == good
    assert "rebuilding it" in caplog.text
    read_checked(path)


def test_damaged_confounded_model_is_rebuilt(data_root, tmp_path):
    first = run_job_dir(data_root, tmp_path / "a")
    path = Path(first["confounded"]["path"])
    path.write_bytes(path.read_bytes()[:100])
    second = run_job_dir(data_root, tmp_path / "b")
    assert second["confounded"]["test_accuracy"] == first["confounded"]["test_accuracy"]
    read_checked(path)


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
        ("sampler.batch_size=0", "sampler.batch_size=0 is not allowed"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed"),
        ("sampler.k=64", "sampler.k=64 is not allowed"),
        ("pool.size=5000", "pool.size=5000 is not allowed"),
        ("data.n_train=0", "data.n_train=0 is not allowed"),
        ("data.root=/no/such/dir", "data.root='/no/such/dir' is not allowed: an existing directory"),
        ("seed=abc", "seed='abc' is not allowed: an integer"),
        ("loss=lagrangian loss.eps=-0.5", "loss.eps=-0.5 is not allowed: a number >= 0"),
        ("model=mlp explainer=gradcam", "explainer='gradcam' is not allowed: input_gradients"),
    ],
)
def test_bad_input_gives_one_clear_line_and_leaves_no_output(override, message, data_root, tmp_path):
    out = tmp_path / "job"
    result = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", *override.split()], tmp_path)
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
