"""Reliance measured on validation data, early stopping on it, the two-objective
Optuna search and its Pareto report, its SQLite storage created by workers
started together, and the methods comparisons (issue #11)."""

import json
import os
import socket
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import torch
from filelock import FileLock
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from helpers import CONF, REPO, TINY, compose_config, events, job_config, job_folders, job_metrics, run_sweep
from hydra_plugins.xilsweep_sweeper.xilsweep_sweeper import grid_lines, planned_jobs
from xilsweep.correction import dotted_validation
from xilsweep.job import ConfigError, assemble, build
from xilsweep.losses.baseline import Balanced
from xilsweep.models import ConvNet
from xilsweep.progress import read_plan
from xilsweep.results.collect import counts_line, find_jobs
from xilsweep.results.pareto import non_dominated
from xilsweep.results.report import write_report
from xilsweep.results.select import summary_table
from xilsweep.results.tables import cell, reliance_markdown
from xilsweep.run import run_job
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import STOP_SCORES, FitData, Trainer

FAST = ["trainer.max_epochs=1", "save_model=false", "explainer.n_images=16"]
METHODS = {(loss, "zero") for loss in ("balanced", "imbalanced", "lagrangian", "rrr", "rrr_g", "rbr", "hint", "cdep")}
METHODS.add(("balanced", "transplant"))
NEED_A_CONVOLUTION = ("rrr_g", "hint")


class Untouchable:
    """Stands in for the test set: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test set was read (.{name})")


# --- validation reliance ------------------------------------------------------


def test_dotted_validation_pastes_pool_confounders_onto_the_validation_images_only(data):
    pool = data.train.subset(torch.nonzero(data.train.mask.flatten(1).any(1)).flatten()[:7])
    dotted = dotted_validation(data.val, pool, seed=0)
    assert torch.equal(dotted.targets, data.val.targets)
    assert torch.equal(dotted.x[~dotted.mask], data.val.x[~dotted.mask])  # untouched outside the pasted pixels
    for x, mask in zip(dotted.x, dotted.mask, strict=True):  # each one a pool sample's confounder, in place
        donors = [i for i in range(len(pool)) if torch.equal(pool.mask[i], mask)]
        assert any(torch.equal(pool.x[i][mask], x[mask]) for i in donors)
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in dotted.mask}) > 1  # several donors
    assert torch.equal(dotted_validation(data.val, pool, seed=0).x, dotted.x)  # deterministic from the seed
    assert not torch.equal(dotted_validation(data.val, pool, seed=1).x, dotted.x)
    assert dotted_validation(data.val, pool.subset(torch.arange(0)), seed=0) is None


def test_validation_reliance_is_computed_every_epoch_without_the_test_set(data_root):
    job = assemble(job_config(TINY, data_root))
    job.data.test = job.data.test_dotted = Untouchable()
    train = job.pool.with_known_masks(job.data.train)
    fit = job.trainer.fit(
        job.model, FitData(train, job.pool.corrected, job.data.val, job.sampler), job.loss, validate=job.validation()
    )
    assert len(fit.history) == job.trainer.max_epochs + 1  # epoch 0 (the confounded model) included
    for epoch in fit.history:
        assert 0 <= epoch["val_dotted_accuracy"] <= 1 and 0 <= epoch["val_dot_flip_rate"] <= 1
    assert fit.history[0]["val_dot_flip_rate"] > 0.5  # the confounded model follows the pasted dots


def test_decoy_mnist_has_dotted_validation_accuracy_but_no_flip_rate(data_root):
    job = assemble(job_config([*TINY, "data=decoy_mnist", "model=mlp", "data.n_train=200"], data_root))
    figures = job.validation()(job.model)
    assert 0 <= figures["val_dotted_accuracy"] <= 1 and figures["val_dot_flip_rate"] is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.stop_on=dotted", "pool.size=0"], "trainer.stop_on='dotted' is not allowed: clean with pool.size=0"),
        (["trainer.stop_on=best"], "trainer.stop_on='best' is not allowed: one of clean, dotted, both"),
        (["objective=pareto", "pool.size=0"], "objective='pareto' is not allowed: clean with pool.size=0"),
        (["objective=pareto", "data=decoy_mnist"], "objective='pareto' is not allowed: clean with DecoyMNIST"),
        (["objective=accuracy"], "objective='accuracy' is not allowed: one of clean, pareto"),
    ],
)
def test_settings_that_need_the_validation_reliance_are_checked_before_any_work(overrides, message, data_root):
    with pytest.raises(ConfigError) as err:
        assemble(job_config([*TINY, *overrides], data_root))
    assert message in str(err.value) and "\n" not in str(err.value)


# --- early stopping on the combined criterion -----------------------------------


def scripted_fit(data, validate, stop_on, checkpoint=None, resume=False, max_epochs=3):
    torch.manual_seed(0)
    model = ConvNet(channels=[4, 8], pool=[True, True], hidden=[16])
    train = data.train.subset(torch.arange(300))
    pool = train.subset(torch.nonzero(train.labels == 1).flatten()[:8])
    sampler = MixedBatchSampler(len(train), batch_size=64, k=4, pool_size=len(pool), seed=0)
    trainer = Trainer(device="cpu", max_epochs=max_epochs, patience=max_epochs, stop_on=stop_on, resume=resume)
    return trainer.fit(
        model, FitData(train, pool, data.val, sampler), Balanced(1.0), validate=validate, checkpoint=checkpoint
    )


def test_the_stopping_score_decides_which_epoch_is_kept(data):
    clean = scripted_fit(data, None, "clean")
    clean_accuracy = [h["val_accuracy"] for h in clean.history]
    assert clean.best_epoch == max(range(4), key=lambda e: (clean_accuracy[e], -clean.history[e]["val_loss"]))
    chosen = min(range(4), key=lambda e: clean_accuracy[e])  # the worst clean epoch: best on dotted images
    dotted_by_epoch = iter([1.0 if e == chosen else 0.0 for e in range(4)])

    def validate(model):
        return {"val_dotted_accuracy": next(dotted_by_epoch)}

    dotted = scripted_fit(data, validate, "dotted")
    assert [h["val_accuracy"] for h in dotted.history] == clean_accuracy  # the same training
    assert dotted.best_epoch == chosen != clean.best_epoch
    assert dotted.best_val_accuracy == clean_accuracy[chosen]  # still the clean accuracy of the kept epoch
    both = {"val_accuracy": 0.9, "val_dotted_accuracy": 0.5}
    assert STOP_SCORES["both"](both) == (STOP_SCORES["clean"](both) + STOP_SCORES["dotted"](both)) / 2


def test_a_resumed_fit_keeps_the_best_epoch_of_the_stopping_score(data, tmp_path):
    def validate(model):  # a figure of the weights, so it does not depend on how often it was called
        return {"val_dotted_accuracy": next(model.parameters()).detach().sum().item()}

    uninterrupted = scripted_fit(data, validate, "dotted")
    checkpoint = tmp_path / "checkpoint.pth"
    scripted_fit(data, validate, "dotted", checkpoint=checkpoint, max_epochs=2)
    resumed = scripted_fit(data, validate, "dotted", checkpoint=checkpoint, resume=True)
    assert resumed.best_epoch == uninterrupted.best_epoch

    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(resumed.history) == timeless(uninterrupted.history)


# --- the objective and the two-objective search -------------------------------------


def test_pareto_objective_returns_the_clean_accuracy_and_the_flip_rate(data_root, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    returned = run_job(job_config([*TINY, *FAST, "objective=pareto"], data_root), out)
    record = json.loads((out / "metrics.json").read_text())
    best = record["history"][record["best_epoch"]]
    assert returned == [record["best_val_accuracy"], record["best_val_dot_flip_rate"]]
    assert (record["best_val_dotted_accuracy"], record["best_val_dot_flip_rate"]) == (
        best["val_dotted_accuracy"],
        best["val_dot_flip_rate"],
    )
    cfg = job_config([*TINY, *FAST, "trainer.resume=true"], data_root)  # a finished job answers as asked
    assert run_job(cfg, out) == record["best_val_accuracy"]


# A worker: imports, says it is ready, opens the study (creating the storage's tables if new).
STORAGE_WORKER = """
import sys
import optuna
from hydra_plugins.xilsweep_cluster.optuna_sweeper import open_storage
print("ready", flush=True)
storage = open_storage(sys.argv[1], heartbeat_interval=60, grace_period=None)
optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
"""


def test_workers_started_together_on_a_new_sqlite_file_create_its_tables_once(tmp_path):
    """Optuna creates its tables on first use; workers started together on a new SQLite file raced
    to create them ("table studies already exists"). They are created under the file's lock: while
    it is held no worker touches the file; released, all start at once and open the one study."""
    db = tmp_path / "study.db"
    with FileLock(f"{db}.lock"):
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", STORAGE_WORKER, f"sqlite:///{db}"],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        assert [worker.stdout.readline() for worker in workers] == ["ready\n"] * 2
        time.sleep(1)
        assert not db.exists()  # every worker waits for the lock
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["race"]


def test_non_dominated_keeps_the_trade_offs_only():
    accuracy, flip_rate = [0.9, 0.8, 0.95, 0.8, 0.9], [0.5, 0.1, 0.9, 0.2, 0.5]
    assert non_dominated(accuracy, flip_rate) == [True, True, True, False, True]  # equal points dominate neither


def test_xil_pareto_search_resumes_its_sqlite_study_and_reports_the_front(data_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        *FAST,
        "hparams_search=xil_pareto",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_jobs=1",
        "pool.size=int(tag(log, interval(5, 20)))",  # the tiny training set has fewer dotted 8s
    ]
    first = tmp_path / "first"
    result = run_sweep([*args, "hydra.sweeper.n_trials=2"], first, data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = read_plan(first)  # the sweep's process and its size: n_trials, no job list
    assert plan.trials == 2 and not plan.jobs and plan.sweep["host"] == socket.gethostname()
    assert "[2/2 done" in result.stdout + result.stderr
    assert counts_line(find_jobs(first), first) == "2 jobs: 2 done"
    result = run_sweep([*args, "hydra.sweeper.n_trials=1"], tmp_path / "second", data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="xil_pareto", storage=storage)
    assert len(study.directions) == 2 and len(study.trials) == 3
    records = job_metrics(first)
    assert [t.values for t in study.trials[:2]] == [
        [m["best_val_accuracy"], m["best_val_dot_flip_rate"]] for m in records
    ]
    assert all(0.1 <= t.params["loss.lam"] <= 1000 and 5 <= t.params["pool.size"] <= 20 for t in study.trials)
    report = write_report(first)
    assert (first / "report" / "pareto_front.png").stat().st_size > 0
    front = non_dominated([m["best_val_accuracy"] for m in records], [m["best_val_dot_flip_rate"] for m in records])
    section = report.split("## Pareto front")[1].split("##")[0]
    listed = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    assert len(listed) == sum(front)


# --- the methods comparisons -----------------------------------------------------------


def experiment_jobs(name: str) -> list[list[str]]:
    """The jobs the xilsweep sweeper launches for ``experiment=name``."""
    sweeper = OmegaConf.to_container(compose_config([f"experiment={name}"], hydra=True).hydra.sweeper)
    return planned_jobs(
        grid_lines(sweeper["params"], sweeper.get("grids"), [f"experiment={name}"]),
        parse=OverridesParser.create().parse_overrides,
        is_group=lambda key: (CONF / key).is_dir(),
        compose=compose_config,
    )


@pytest.mark.parametrize(
    "name,models,data_target",
    [
        ("compare_methods", {"cnn": (10, 25, 100)}, "ConfoundedMNIST08"),
        # the MLP also with every training digit corrected: Ross et al.'s setting
        ("compare_methods_decoy", {"mlp_wide": (10, 25, 100, 9000), "cnn": (10, 25, 100)}, "DecoyMNIST"),
    ],
)
def test_method_comparisons_compose_every_job_and_cover_every_method(name, models, data_target):
    """One composition per distinct set of group choices (the jobs differ from it only in
    plain values, pool.size and seed, whose keys the sweeper has checked against it)."""
    jobs = experiment_jobs(name)
    seen, composed = set(), {}
    for job in jobs:
        values = dict(entry.split("=", 1) for entry in job)
        choices = tuple(entry for entry in job if entry.split("=", 1)[0] in ("model", "loss", "pool.correction"))
        if choices not in composed:
            cfg = compose_config(job, hydra=True)
            assert cfg.data._target_.endswith(data_target) and cfg.pretrain.seed == cfg.seed
            model = build(cfg, "model", num_classes=10 if data_target == "DecoyMNIST" else 2)
            build(cfg, "loss").check(model)  # no pairing the job would refuse (GradCAM methods with the MLP)
            composed[choices] = (cfg.hydra.runtime.choices.model, cfg.hydra.runtime.choices.loss, cfg.pool.correction)
        seen.add((*composed[choices], int(values["pool.size"]), int(values["seed"])))
    expected = {
        (model, loss, correction, size, seed)
        for model, sizes in models.items()
        for loss, correction in METHODS
        if model == "cnn" or loss not in NEED_A_CONVOLUTION
        for size in sizes
        for seed in (0, 1, 2)
    }
    assert seen == expected and len(jobs) == len(expected)  # every method at every setting, each once


def test_compare_methods_runs_end_to_end_and_reports_one_row_per_method(data_root, tmp_path, plots_not_rendered):
    """Tiny settings, one seed and one pool size (the whole sweep is composed above)."""
    sweep = tmp_path / "sweep"
    result = run_sweep([*FAST, "experiment=compare_methods", "pool.size=10", "seed=0"], sweep, data_root, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folders, records = job_folders(sweep), job_metrics(sweep)
    assert all(r["status"] == "done" for r in records)
    assert {(r["settings"]["loss"], r["settings"]["correction"]) for r in records} == METHODS
    assert sum(folder.name.endswith("_pool10_transplant_seed0") for folder in folders) == 1
    lagrangian = next(f for f, r in zip(folders, records, strict=True) if r["settings"]["loss"] == "lagrangian")
    assert {"Lagrangian/multiplier", "Lagrangian/violation", "Reasons/val_dot_flip_rate"} <= set(
        events(lagrangian).Tags()["scalars"]
    )
    report = write_report(sweep)
    table = report.split("## Does the model still rely on the confounder?")[1].split("\n\n")[1].splitlines()
    assert {"wrong-reason score", "s/epoch", "pool.correction"} <= {c.strip() for c in table[0].split("|")}
    assert table[2].startswith("| oracle (floor)") and table[3].startswith("| confounded (ceiling)")
    assert len(table) == 4 + len(METHODS)  # header, rule, the two references, a row per method


def test_reliance_table_gives_each_model_its_own_reference_rows():
    jobs = [
        {"model": model, "loss": loss, "seed": seed, "status": "done", "test_accuracy": accuracy + 0.01 * seed}
        for model, accuracy in (("mlp", 0.7), ("cnn", 0.9))
        for loss in ("balanced", "rrr")
        for seed in (0, 1)
    ]
    for job in jobs:  # one pair of reference models per (model, seed), their accuracy the model's
        for kind in ("oracle", "confounded"):
            job[f"{kind}.path"] = f"{kind}/{job['model']}/{job['seed']}"
            job[f"{kind}.test_accuracy"] = job["test_accuracy"]
    table = pd.DataFrame(jobs)
    varied = ["model", "loss", "seed"]
    lines = reliance_markdown(table, summary_table(table, varied), varied, ["model"]).splitlines()
    references = [line.split(" | ") for line in lines[2:6]]
    assert [(cells[0].strip("| "), cells[1]) for cells in references] == [
        ("mlp", "oracle (floor)"),
        ("cnn", "oracle (floor)"),
        ("mlp", "confounded (ceiling)"),
        ("cnn", "confounded (ceiling)"),
    ]
    for cells in references:  # n = that model's two reference models, their mean its own
        model_jobs = table[table.model == cells[0].strip("| ")]
        assert cells[2] == "2" and cells[3].startswith(cell(model_jobs.test_accuracy.mean(), "test_accuracy"))
