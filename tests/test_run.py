"""The Hydra application: config composition (in-process) and jobs (in-process and subprocess)."""

import json
import logging

import pytest

from helpers import CONF, TINY, events, job_config, job_folders, run_sweep, run_xilsweep
from hydra_plugins.xilsweep_cluster.optuna_sweeper import open_storage, shown_url
from xilsweep.job import ConfigError, assemble, build
from xilsweep.metrics import epoch_tags
from xilsweep.progress import job_line, readable, search_space, varied_keys
from xilsweep.run import run_job, run_name, stopping_line
from xilsweep.training import Trainer

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("data", "model", "loss", "pool", "sampler", "trainer", "pretrain", "explainer")
}
SUPPLIED = {"model": {"num_classes": 2}}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_instantiates(group, option, data_root, folder_manifest):
    own = [f"data.manifest={folder_manifest}"] if option == "folder" else []  # the one setting without a default
    cfg = job_config([f"{group}={option}", *own], data_root)
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
    assert metrics["settings"]["lam"] == 1.0 and metrics["settings"]["pool_size"] == 10
    assert metrics["confounded"]["train_accuracy"] > 0.9
    # events sit in the job folder itself: no timestamped sub-run from add_hparams
    assert [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] == []
    ea = events(out)
    scalar_tags = set(ea.Tags()["scalars"])
    for tag in epoch_tags().values():
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
        # keys no object reads, and classes no group registers
        ("+loss.nonexistent=3", "loss.nonexistent=3 is not allowed: not a setting of Balanced (its settings: lam)"),
        ("+trainer.lrr=0.1", "trainer.lrr=0.1 is not allowed: not a setting of Trainer (its settings: lr,"),
        ("+foo=1", "foo=1 is not allowed: not a setting (top-level settings: seed,"),
        ("loss._target_=xilsweep.files.atomic_write_json", "loss._target_='xilsweep.files.atomic_write_json' is"),
        ("sampler.k=0", "sampler.k=0 is not allowed: an integer in [1, batch_size=64) with a pool"),
    ],
)
def test_bad_settings_stop_before_any_work_with_one_clear_line(override, message, data_root):
    cfg = job_config([*TINY, *override.split()], data_root)
    with pytest.raises(ConfigError) as err:
        assemble(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_single_bad_run_exits_nonzero_with_the_message_and_writes_no_results(data_root, tmp_path):
    out = tmp_path / "bad"
    result = run_xilsweep(
        [*TINY, f"data.root={data_root}", "loss.lam=-1", f"hydra.run.dir={out}"], tmp_path, own_process=True
    )
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
        "0_lr0.001_lossbalanced_lam0.5_pool10_seed0",
        "1_lr0.001_lossbalanced_lam2.0_pool10_seed0",
    ]
    for job, lam in zip(jobs, (0.5, 2.0), strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "done" and metrics["settings"]["lam"] == lam
        assert len(list(job.glob("events.out.tfevents.*"))) == 1


def test_run_names_round_floats_to_four_significant_digits():
    assert run_name(0.001, "rrr", 12.345678901234567, 10, 0) == "lr0.001_lossrrr_lam12.35_pool10_seed0"
    assert run_name(0.00012345678, "balanced", 1.0, 100, 3) == "lr0.0001235_lossbalanced_lam1.0_pool100_seed3"
    assert run_name(0.001, "lagrangian", None, 10, 0, "transplant") == "lr0.001_losslagrangian_pool10_transplant_seed0"
    # feedback other than exact is named after the correction (random is also a correction: the prefix tells them apart)
    assert run_name(0.001, "rrr", 1.0, 10, 0, "zero", "incomplete", 0.5, 1) == (
        "lr0.001_lossrrr_lam1.0_pool10_feedbackincomplete0.5_seed0"
    )
    assert run_name(0.001, "rrr", 1.0, 10, 0, "random", "random", 0.5, 1).endswith("_random_feedbackrandom_seed0")
    assert run_name(0.001, "rrr", 1.0, 10, 0, "zero", "exact", 0.3, 2) == "lr0.001_lossrrr_lam1.0_pool10_seed0"


def test_the_last_line_of_a_job_says_how_it_stopped_and_flags_a_job_that_never_improved():
    assert stopping_line({"epochs_run": 20, "best_epoch": 12}, 20) == "ran all 20 epochs, kept epoch 12"
    assert stopping_line({"epochs_run": 7, "best_epoch": 2}, 20) == "stopped early at epoch 7 of 20, kept epoch 2"
    never = stopping_line({"epochs_run": 5, "best_epoch": 0}, 20)
    assert never == "stopped early at epoch 5 of 20, kept epoch 0: never improved on the confounded model"
    done = {"status": "done", "run_name": "3_x", "test_accuracy": 0.5, "dot_flip_rate": 0.9, "seconds": 1}
    assert "never improved" not in job_line({**done, "best_epoch": 1})
    assert "kept epoch 0: never improved on the confounded model" in job_line({**done, "best_epoch": 0})


class Killed(Exception):
    """The job's process ending during an epoch."""


def test_a_resumed_job_says_from_which_epoch(data_root, tmp_path, monkeypatch, caplog):
    out = tmp_path / "job"
    out.mkdir()
    train_epoch = Trainer.epoch

    def killed_in_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 2:
            raise Killed
        return train_epoch(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "epoch", killed_in_epoch_2)
    with pytest.raises(Killed):
        run_job(job_config(TINY, data_root), out)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="xilsweep")
    run_job(job_config([*TINY, "trainer.resume=true"], data_root), out)
    assert f"resumed from epoch 1 ({out / 'checkpoint.pth'})" in caplog.messages
    assert any(m.startswith("ran all 2 epochs, kept epoch") for m in caplog.messages)


def test_the_plan_names_the_settings_a_sweep_varies_as_written():
    jobs = [["loss=rrr", "seed=0", "pretrain.seed=$\\{seed\\}", "pool.size=10"], ["loss=rrr", "seed=1", "+x=2"]]
    assert varied_keys(jobs) == ["seed", "pretrain.seed", "pool.size", "x"]  # set by one job only: varied too
    assert readable(jobs[0]) == ["loss=rrr", "seed=0", "pretrain.seed=${seed}", "pool.size=10"]
    space = ["loss.lam=tag(log, interval(0.01, 100))", "loss=rrr,rbr", "pool.size=10", "k=${loss.lam}"]
    assert search_space(space) == ["loss.lam", "loss", "k"]


def test_the_optuna_log_shows_the_storage_url_without_its_password(tmp_path):
    assert shown_url("postgresql://xil:secret@db.example:5432/study") == "postgresql://xil:***@db.example:5432/study"
    for url in (f"sqlite:///{tmp_path}/study.db", f"journal://{tmp_path}/study.log"):
        assert str(open_storage(url, heartbeat_interval=60, grace_period=None)) == url
