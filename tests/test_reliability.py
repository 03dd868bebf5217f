"""Reproducibility, finished jobs left alone, damaged records named, and safe cache files."""

import multiprocessing
import shutil
from pathlib import Path

import pytest

from helpers import TINY, comparable, job_config, job_metrics, run_job_dir, run_sweep, run_xilsweep
from xilsweep.data import ConfoundedMNIST08
from xilsweep.errors import DataError
from xilsweep.files import read_checked
from xilsweep.pretrain import cached_figures
from xilsweep.resume import finished_record


def test_same_config_and_seed_give_identical_metrics(data_root, tmp_path):
    """Two runs of a job, one in its own process and one after a job with another seed in a
    sweep's process (so nothing a job leaves behind changes the next), and that other seed."""
    a = run_job_dir(data_root, tmp_path / "a")
    sweep = run_sweep(["seed=1,0"], tmp_path / "sweep", data_root)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    c, b = job_metrics(tmp_path / "sweep")
    assert comparable(a) == comparable(b)
    assert a["data_hash"] and a["version"] and a["config"]["loss"]["lam"] == 1.0
    assert comparable(c)["history"] != comparable(a)["history"]


@pytest.fixture(scope="module")
def finished_job(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "job"
    return out, run_job_dir(data_root, out)


def test_a_finished_job_is_not_rerun_by_accident_nor_returned_for_other_settings(finished_job, data_root, tmp_path):
    out, first = finished_job
    overrides = (out / ".hydra" / "overrides.yaml").read_text()
    again = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}"], tmp_path)
    assert again.returncode == 2 and "already holds a finished job" in again.stdout + again.stderr
    resume = [*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", "trainer.resume=true"]
    other = run_xilsweep([*resume, "trainer.max_epochs=3"], tmp_path)
    output = other.stdout + other.stderr
    assert other.returncode == 2 and "Traceback" not in output
    assert f"{out} holds a job with other settings (trainer.max_epochs: 2 there, 3 now)" in output
    assert (out / ".hydra" / "overrides.yaml").read_text() == overrides  # not the refused call's
    # how a job runs is not a setting of its result: the same job is returned
    resumed = run_job_dir(data_root, out, "trainer.resume=true", "trainer.num_threads=2", "save_model=false")
    assert resumed == first  # untouched


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda text: text[: len(text) // 2], "JSONDecodeError"),
        (lambda text: "[]", "no status of running, done, failed"),
        (lambda text: text.replace('"best_val_accuracy"', '"renamed"'), "without best_val_accuracy"),
    ],
    ids=["truncated", "not_a_record", "no_result"],
)
def test_a_damaged_record_is_one_line_naming_it(damage, problem, finished_job, data_root, tmp_path):
    out = tmp_path / "job"
    shutil.copytree(finished_job[0], out)
    record = out / "metrics.json"
    record.write_text(damage(record.read_text()))
    cfg = job_config([*TINY, "trainer.resume=true"], data_root)
    with pytest.raises(DataError) as refused:
        finished_record(cfg, out)
    message = str(refused.value)
    assert message.startswith(f"{record} is damaged") and problem in message and "\n" not in message
    assert f"remove the job folder {out}" in message


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


def test_damaged_confounded_model_is_rebuilt(finished_job, data_root, tmp_path):
    _, first = finished_job  # a job of the same settings, which cached the confounded model
    path = Path(first["confounded"]["path"])
    path.write_bytes(path.read_bytes()[:100])
    second = run_job_dir(data_root, tmp_path / "job")
    assert second["confounded"]["test_accuracy"] == first["confounded"]["test_accuracy"]
    read_checked(path)


@pytest.mark.parametrize("damage", ["edited value", "truncated", "other figures"])
def test_damaged_or_stale_reference_figures_are_named_and_recomputed(damage, tmp_path, caplog):
    """The references' cached figures (reasons_*.json) carry a checksum and the figures' key:
    an edited value, a cut file or a cache made for other figures is reported and recomputed."""
    reference = {"settings": {"seed": 0}, "path": str(tmp_path / "model_confounded.pth")}
    meta = {"explainer": {"target": "label"}, "figures": [["dot_flip_rate", 1]]}
    calls = []

    def compute():
        calls.append(1)
        return {"full": {"dot_flip_rate": 0.9}, "monitored": {"dot_flip_rate": 0.8}}

    assert cached_figures(reference, meta, compute)["full"]["dot_flip_rate"] == 0.9 and len(calls) == 1
    [path] = tmp_path.glob("reasons_*.json")
    assert cached_figures(reference, meta, compute)["full"]["dot_flip_rate"] == 0.9 and len(calls) == 1  # read back
    if damage == "edited value":
        path.write_text(path.read_text().replace("0.9", "0.5"))
    elif damage == "truncated":
        path.write_text(path.read_text()[:40])
    else:
        meta = {**meta, "figures": [*meta["figures"], ["new_figure", 1]]}
    figures = cached_figures(reference, meta, compute)
    assert figures["full"]["dot_flip_rate"] == 0.9 and len(calls) == 2  # recomputed, not the damaged value
    assert ("damaged" in caplog.text and str(path) in caplog.text) or damage == "other figures"
