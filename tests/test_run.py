"""The Hydra application: config composition (in-process) and jobs (in-process and subprocess)."""

import json

import pytest

from helpers import CONF, TINY, events, job_config, job_folders, run_sweep, run_xilsweep
from xilsweep.job import ConfigError, assemble, build
from xilsweep.run import run_job
from xilsweep.tracking import EPOCH_TAGS

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("data", "model", "loss", "pool", "sampler", "trainer", "pretrain", "explainer")
}
SUPPLIED = {"model": {"num_classes": 2}}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_instantiates(group, option, data_root):
    cfg = job_config([f"{group}={option}"], data_root)
    obj = build(cfg, group, **SUPPLIED.get(group, {}))
    assert type(obj).__module__.startswith("xilsweep.")


def test_job_writes_tensorboard_tags_hparams_and_metrics_in_its_own_folder(data_root, tmp_path):
    cfg = job_config(TINY, data_root)
    out = tmp_path / "job"
    out.mkdir()
    objective = run_job(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and objective == metrics["best_val_accuracy"]
    assert 0.5 <= metrics["test_accuracy"] <= 1 and metrics["epochs_run"] >= 1
    assert metrics["settings"]["lambda"] == 1.0 and metrics["settings"]["pool_size"] == 10
    assert metrics["confounded"]["train_accuracy"] > 0.9
    # events sit in the job folder itself: no timestamped sub-run from add_hparams
    assert [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] == []
    ea = events(out)
    scalar_tags = set(ea.Tags()["scalars"])
    for tag in EPOCH_TAGS.values():
        assert tag in scalar_tags, tag
    assert len(ea.Scalars("Loss/train_epoch")) == metrics["epochs_run"]
    assert len(ea.Scalars("Accuracy/val_epoch")) == metrics["epochs_run"] + 1  # epoch 0 = start
    assert {"Images/confounded_samples", "Images/corrected_original", "Images/corrected_samples"} <= set(
        ea.Tags()["images"]
    )
    hparams = ea.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"pool_size" in hparams["_hparams_/session_start_info"]
    assert "Final/test_accuracy" in scalar_tags
    assert (out / "model.pth").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.lam=-1", "loss.lam=-1.0 is not allowed: a number >= 0"),
        ("sampler.k=64", "sampler.k=64 is not allowed: an integer in [0, batch_size=64)"),
        ("sampler.k=-1", "sampler.k=-1"),
        ("pool.size=100000", "pool.size=100000 is not allowed: an integer from 0 to"),
        ("trainer.lr=0", "trainer.lr=0.0 is not allowed: a number > 0"),
        ("trainer.lr=-0.1", "trainer.lr=-0.1"),
        ("trainer.optimizer=lbfgs", "trainer.optimizer='lbfgs' is not allowed: one of adam, sgd"),
        ("data.root=/nonexistent", "data.root='/nonexistent' is not allowed: an existing directory"),
        ("data.confounder.positions=center", "data.confounder.positions"),
        ("model.pool=[true]", "model.pool"),
        ("sampler.batch_size=0", "sampler.batch_size=0 is not allowed"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed"),
        ("data.n_train=0", "data.n_train=0 is not allowed"),
        ("loss=lagrangian loss.eps=-0.5", "loss.eps=-0.5 is not allowed: a number >= 0"),
        ("model=mlp explainer=gradcam", "explainer='gradcam' is not allowed: input_gradients"),
    ],
)
def test_bad_settings_stop_before_any_work_with_one_clear_line(override, message, data_root):
    cfg = job_config([*TINY, *override.split()], data_root)
    with pytest.raises(ConfigError) as err:
        assemble(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_single_bad_run_exits_nonzero_with_the_message_and_writes_no_results(data_root, tmp_path):
    out = tmp_path / "bad"
    result = run_xilsweep([*TINY, f"data.root={data_root}", "loss.lam=-1", f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 2
    assert "loss.lam=-1.0 is not allowed: a number >= 0" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (out / "metrics.json").exists()
    assert not list(out.glob("events.out.tfevents.*"))


def test_multirun_gives_one_folder_per_job_each_with_its_own_run(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_sweep(["loss.lam=0.5,2"], sweep, data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = job_folders(sweep)
    assert [p.name for p in jobs] == [
        "0_lr0.001_lossbalanced_lambda0.5_pool10_seed0",
        "1_lr0.001_lossbalanced_lambda2.0_pool10_seed0",
    ]
    for job, lam in zip(jobs, (0.5, 2.0), strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "done" and metrics["settings"]["lambda"] == lam
        assert len(list(job.glob("events.out.tfevents.*"))) == 1
