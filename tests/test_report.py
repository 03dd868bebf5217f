"""The sweep report on real (tiny) sweeps: the full grid run in parallel, a
sweep with failing jobs and a sweep killed half-way; plus folders of older or
interrupted runs, the reference models' rows and a figure added to the specs."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from helpers import TINY, job_folders, run_sweep, start_xilsweep
from test_report_answers import table_rows
from xilsweep import metrics
from xilsweep.progress import PLANNED_FILE, read_plan
from xilsweep.results.answers import answer_lambda
from xilsweep.results.collect import Job, NotASweepError, counts_line, find_jobs, parse_overrides
from xilsweep.results.report import main as report_main
from xilsweep.results.report import write_report
from xilsweep.results.select import reference_keys, varied_keys

FAST = ["trainer.max_epochs=1", "save_model=false", "explainer.n_images=16"]
# The plots of the grid sweep: reliance first, then clean accuracy, and each loss's training curves.
PLOTS = (
    "reliance_vs_lambda.png",
    "reliance_vs_pool_size.png",
    "reliance_by_method.png",
    "test_accuracy_vs_lambda.png",
    "test_accuracy_vs_pool_size.png",
    "training_curves_balanced.png",
    "training_curves_imbalanced.png",
)


@pytest.fixture(scope="module")
def grid_sweep(data_root, tmp_path_factory):
    """The full grid experiment on tiny lists, in parallel: 2 lambdas x 2 pool sizes x 2 seeds
    balanced, and 2 pool sizes x 2 seeds imbalanced (lambda does not apply)."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    result = run_sweep(
        [
            *FAST,
            "experiment=full_grid_search",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            "trainer.num_threads=null",
            "trainer.lr=0.001",
            "loss.lam=0.5,2",
            "pool.size=5,10",
            "seed=0,1",
        ],
        sweep,
        data_root,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return sweep


@pytest.fixture(scope="module")
def failing_sweep(data_root, tmp_path_factory):
    """The lr_search experiment, six jobs in order: two good ones, a bad setting (loss.lam=-1)
    among them and a NaN loss (lr 1e12)."""
    sweep = tmp_path_factory.mktemp("failing") / "sweep"
    result = run_sweep(
        [
            *FAST,
            "experiment=lr_search",
            "trainer.optimizer=sgd",
            "trainer.lr=0.001,0.01,1e12",
            "loss.lam=1,-1",
            "seed=0",
        ],
        sweep,
        data_root,
    )
    return sweep, result


def test_grid_runs_every_applicable_job_in_parallel_with_one_thread_each(grid_sweep):
    runs = [json.loads((p / "metrics.json").read_text()) for p in job_folders(grid_sweep)]
    assert sorted(
        (m["settings"]["loss"], m["settings"].get("lam"), m["settings"]["pool_size"], m["settings"]["seed"])
        for m in runs
    ) == sorted(
        [("balanced", lam, pool, seed) for lam in (0.5, 2.0) for pool in (5, 10) for seed in (0, 1)]
        + [("imbalanced", None, pool, seed) for pool in (5, 10) for seed in (0, 1)]
    )
    assert all(m["status"] == "done" and m["torch_threads"] == 1 for m in runs)
    assert len({m["pid"] for m in runs}) <= 2  # two worker processes, each running several jobs


def test_report_tables_one_row_per_job_and_mean_std_n_over_seeds(grid_sweep):
    text = write_report(grid_sweep)
    out = grid_sweep / "report"
    jobs = pd.read_csv(out / "jobs.csv")
    folders = job_folders(grid_sweep)
    assert list(jobs.job) == [p.name for p in folders]
    # varied settings derived from the overrides; imbalanced rows have no lambda
    assert {"loss", "loss.lam", "pool.size", "seed"} <= set(jobs.columns)
    assert "trainer.lr" not in jobs.columns and "experiment" not in jobs.columns
    assert jobs[jobs.loss == "imbalanced"]["loss.lam"].isna().all()
    for folder, row in zip(folders, jobs.itertuples(), strict=True):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert row.test_accuracy == pytest.approx(metrics["test_accuracy"])
        assert row.epochs_run == metrics["epochs_run"] and row.status == "done"
        assert row.train_loss == pytest.approx(metrics["history"][-1]["train_loss"])
        assert row.best_val_loss == pytest.approx(metrics["history"][metrics["best_epoch"]]["val_loss"])
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6 and (summary.n == 2).all()
    keys = ["loss", "loss.lam", "pool.size"]
    expected = jobs.groupby(keys, dropna=False).test_accuracy.agg(["mean", "std"]).reset_index()
    merged = summary.merge(expected, on=keys, how="outer")  # NaN lambda keys match each other
    assert len(merged) == 6
    assert merged.test_accuracy_mean.to_numpy() == pytest.approx(merged["mean"].to_numpy())
    assert merged.test_accuracy_std.to_numpy() == pytest.approx(merged["std"].to_numpy())
    # the Markdown tables: one line per job, one per setting
    assert text.count("| done |") == len(folders)
    assert "attribution in mask" in text  # newer metrics shown when present
    for name in PLOTS:
        assert (out / name).stat().st_size > 10_000, name
        assert f"![{name}]({name})" in text
    assert not (out / "val_accuracy_vs_lr.png").exists()  # one learning rate only
    assert "**Learning rate:** not enough data" in text


def test_report_answers_balanced_vs_imbalanced_paired_by_seed_at_each_pool_size(grid_sweep, plots_not_rendered):
    """Each loss at its setting chosen by the stopping score (λ for balanced), the difference of
    the clean test accuracy paired by seed, at each pool size."""
    text = write_report(grid_sweep)
    jobs = pd.read_csv(grid_sweep / "report" / "jobs.csv")
    summary = pd.read_csv(grid_sweep / "report" / "summary.csv")
    rows = table_rows(text, "balanced: chosen")
    assert [row["pool.size"] for row in rows] == ["5", "10"]
    for row in rows:
        pool = summary[summary["pool.size"] == int(row["pool.size"])]
        balanced = pool[pool.loss == "balanced"].sort_values(
            ["stop_score_mean", "best_val_loss_mean"], ascending=[False, True], kind="stable"
        )
        lam = balanced["loss.lam"].iloc[0]
        assert row["balanced: chosen"] == f"loss.lam={lam:g}"
        at = jobs[jobs["pool.size"] == int(row["pool.size"])]
        chosen = at[(at.loss == "balanced") & (at["loss.lam"] == lam)].set_index("seed").test_accuracy
        difference = 100 * (chosen - at[at.loss == "imbalanced"].set_index("seed").test_accuracy)
        assert row["test acc %, difference"].startswith(f"{difference.mean():+.2f} [")
    assert "**Pool size**" in text and "not enough data" not in text.split("**Pool size**")[1]


def test_failing_jobs_leave_the_sweep_running_and_show_as_failed(failing_sweep, plots_not_rendered):
    sweep, result = failing_sweep
    assert result.returncode != 0  # Hydra reports the failures at the end
    folders = job_folders(sweep)
    assert len(folders) == 6  # jobs after the failures still ran
    text = write_report(sweep)
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(jobs.status) == ["done", "failed", "done", "failed", "failed", "failed"]
    bad_setting = jobs[jobs["loss.lam"] == -1]
    assert bad_setting.reason.str.contains("loss.lam=-1.0 is not allowed").all()
    assert not bad_setting.reason.str.contains("Traceback").any()  # the line, not the traceback Hydra logs after it
    assert not any((folders[i] / "metrics.json").exists() for i in bad_setting.index)
    nan = jobs[(jobs["trainer.lr"] == 1e12) & (jobs["loss.lam"] == 1)]
    assert nan.reason.str.contains("training loss became nan").all()
    assert "6 jobs: 2 done, 4 failed" in text
    assert "1 job(s) stopped on a non-finite loss" in text
    # the learning-rate answer and plot come from the two finished jobs
    done = jobs[jobs.status == "done"]
    best_lr = done.loc[done.best_val_accuracy.idxmax(), "trainer.lr"]
    assert f"best trainer.lr = {best_lr:g}" in text
    assert (sweep / "report" / "val_accuracy_vs_lr.png").exists()


def test_validation_ties_go_to_the_lower_validation_loss():
    summary = pd.DataFrame(
        {
            "loss.lam": [0.5, 10.0, 2.0],
            "n": [3, 3, 3],
            "stop_score_mean": [0.99, 0.99, 0.98],
            "stop_score_std": [0.0, 0.0, 0.01],
            "best_val_loss_mean": [0.05, 0.03, 0.01],
            "best_val_loss_std": [0.0, 0.0, 0.0],
            "test_accuracy_mean": [0.98, 0.99, 0.97],
            "test_accuracy_std": [0.0, 0.0, 0.0],
        }
    )
    rule = "clean validation accuracy"
    answer = answer_lambda(summary, ["loss.lam", "seed"], rule)
    assert answer.startswith(f"**λ:** by the {rule} (mean over seeds): best loss.lam = 10 ")
    assert "tied on the validation score with 0.5" in answer
    older = summary.drop(columns=["best_val_loss_mean", "best_val_loss_std"])
    assert "(mean over seeds): best loss.lam = 0.5 " in answer_lambda(older, ["loss.lam"], rule)  # first wins


def test_report_reads_older_interrupted_and_running_jobs(grid_sweep, tmp_path, plots_not_rendered):
    sweep = tmp_path / "sweep"
    sources = job_folders(grid_sweep)[:4]
    for source in sources:
        shutil.copytree(source, sweep / source.name)
    older, killed, running, no_record = (sweep / s.name for s in sources)
    # an older run: no right-reason metrics, no history, no .hydra/ (overrides from metrics.json)
    record = json.loads((older / "metrics.json").read_text())
    for key in (
        "history",
        "test_dotted_accuracy",
        "attribution_in_mask",
        "wrong_reason_score",
        "dot_flip_rate",
        "confounded",
        "pid",
        "host",
        "torch_threads",
    ):
        del record[key]
    (older / "metrics.json").write_text(json.dumps(record))
    shutil.rmtree(older / ".hydra")
    # a job killed while running: its process is gone
    dead = ended_process()
    record = json.loads((killed / "metrics.json").read_text())
    (killed / "metrics.json").write_text(json.dumps({**record, "status": "running", "pid": dead}))
    # started but no record yet (by a sweep that wrote no plan: whether it is alive is not known)
    (running / "metrics.json").unlink()
    (no_record / "metrics.json").unlink()
    (no_record / "run.log").write_text("[2026-01-01 00:00:00,000][xilsweep][INFO] - fine-tuning\n")
    write_report(sweep)
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(jobs.status) == ["done", "killed", "running", "running"]
    assert jobs.reason[1] == f"process {dead} on {socket.gethostname()} ended without a result"
    assert "attribution_in_mask" in jobs.columns and pd.isna(jobs.attribution_in_mask[0])
    for path in [older, killed]:
        (path / "metrics.json").write_text(
            json.dumps(
                {
                    k: v
                    for k, v in json.loads((path / "metrics.json").read_text()).items()
                    if k not in ("attribution_in_mask", "dot_flip_rate", "wrong_reason_score", "confounded")
                }
            )
        )
    write_report(sweep)
    assert "attribution_in_mask" not in pd.read_csv(sweep / "report" / "jobs.csv").columns
    assert [j.status for j in find_jobs(sweep)] == ["done", "killed", "running", "running"]


def ended_process() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_plan_of(sweep: Path, pid: int, written: float, **plan) -> None:
    """``planned_jobs.yaml`` as the sweep process ``pid`` on this machine wrote it at ``written``."""
    (sweep / PLANNED_FILE).write_text(yaml.safe_dump({"sweep": {"pid": pid, "host": socket.gethostname()}, **plan}))
    os.utime(sweep / PLANNED_FILE, (written, written))


def test_a_job_without_a_record_is_killed_once_its_sweep_is_gone(grid_sweep, tmp_path, capsys):
    """Killed before its metrics.json existed: running while the sweep's process lives, killed once
    it is gone or once a later call into the folder began; planned jobs never started are listed."""
    sweep = tmp_path / "sweep"
    source = job_folders(grid_sweep)[0]
    started = sweep / source.name
    shutil.copytree(source, started)
    (started / "metrics.json").unlink()
    began = started.stat().st_mtime - 10  # the sweep's start, before its job
    planned = [{"num": 0, "overrides": ["seed=0"]}, {"num": 1, "overrides": ["seed=1"]}]
    write_plan_of(sweep, os.getpid(), began, jobs=planned)
    jobs = find_jobs(sweep)
    assert [(j.status, j.reason) for j in jobs] == [("running", ""), ("not started", "")]
    assert jobs[1].overrides == {"seed": 1}
    dead = ended_process()
    write_plan_of(sweep, dead, began, jobs=planned)
    assert [(j.status, j.reason) for j in find_jobs(sweep)] == [
        ("killed", f"the sweep's process {dead} on {socket.gethostname()} ended before the job wrote a result"),
        ("not started", ""),
    ]
    assert counts_line(find_jobs(sweep), sweep) == "2 jobs: 1 killed, 1 not started"
    write_plan_of(sweep, os.getpid(), time.time() + 1, jobs=planned)  # a later call, alive, not at job 0 yet
    assert find_jobs(sweep)[0].reason.startswith("left by an earlier call into this sweep folder")
    assert "\n2 jobs: 1 killed, 1 not started.\n" in write_report(sweep)
    assert list(pd.read_csv(sweep / "report" / "jobs.csv").status) == ["killed", "not started"]
    (sweep / PLANNED_FILE).write_text("jobs: [{num: 0")  # damaged: one line naming it, exit status 2
    assert report_main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"{sweep / PLANNED_FILE} is damaged" in err and err.count("\n") == 1


def test_trials_planned_by_count_that_never_started_are_counted(grid_sweep, tmp_path):
    """Optuna plans only how many trials (its sweep folder numbers them from 0)."""
    sweep = tmp_path / "sweep"
    for source in job_folders(grid_sweep)[:2]:
        shutil.copytree(source, sweep / source.name)
    write_plan_of(sweep, ended_process(), time.time(), trials=5)
    assert "\n2 jobs: 2 done; 3 of 5 planned trials not started.\n" in write_report(sweep)
    write_plan_of(sweep, ended_process(), time.time(), trials=2)
    assert counts_line(find_jobs(sweep), sweep) == "2 jobs: 2 done"
    (tmp_path / "none").mkdir()
    write_plan_of(tmp_path / "none", ended_process(), time.time(), trials=5)
    with pytest.raises(NotASweepError, match="none of the 5 planned trials has started"):
        find_jobs(tmp_path / "none")


def test_a_killed_sweep_shows_its_job_killed_and_the_rest_not_started(data_root, tmp_path):
    """Hydra's basic sweeper (the default of -m), killed during its first job: the sweep's plan,
    written when it started, names the jobs as the sweeper made them; the report shows the
    started job killed (not running for ever) and the other one not started (not invisible)."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, f"data.root={data_root}", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    process = start_xilsweep(args, tmp_path, output=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(sweep.glob("0_*/.hydra/overrides.yaml")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    plan = read_plan(sweep)
    assert plan.sweep == {"pid": process.pid, "host": socket.gethostname()}
    first = yaml.safe_load(next(sweep.glob("0_*/.hydra/overrides.yaml")).read_text())
    assert [job["overrides"] for job in plan.jobs] == [first, [o.replace("seed=0", "seed=1") for o in first]]
    jobs = find_jobs(sweep)
    assert [(j.status, j.overrides["seed"]) for j in jobs] == [("killed", 0), ("not started", 1)]
    assert counts_line(jobs, sweep) == "2 jobs: 1 killed, 1 not started"


def test_not_a_sweep_folder_is_one_line_and_a_nonzero_exit(grid_sweep, tmp_path, capsys):
    for folder, hint in ((tmp_path, ""), (job_folders(grid_sweep)[0], "single job's folder")):
        assert report_main([str(folder)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert "is not a sweep folder" in err and hint in err


def test_an_interpolated_override_is_one_setting_not_one_per_job(tmp_path):
    """pretrain.seed=${seed} follows the seed: the report groups by seed alone."""
    overrides = [
        parse_overrides(["pretrain.seed=${seed}", f"seed={seed}"], {"seed": seed, "pretrain": {"seed": seed}})
        for seed in (0, 1)
    ]
    assert overrides[1] == {"pretrain.seed": "${seed}", "seed": 1}
    jobs = [SimpleNamespace(overrides=o) for o in overrides]
    assert varied_keys(jobs) == ["seed"]


def test_jobs_resumed_with_trainer_resume_stay_in_their_setting():
    """A sweep rerun with trainer.resume=true (its failed jobs run again) is one sweep."""
    first = parse_overrides(["loss=rrr", "seed=0"], {})
    again = parse_overrides(["loss=rrr", "seed=1", "trainer.resume=true"], {"trainer": {"resume": True}})
    assert again == {"loss": "rrr", "seed": 1}
    assert varied_keys([SimpleNamespace(overrides=o) for o in (first, again)]) == ["seed"]


def markdown_rows(text: str, section: str) -> list[dict]:
    """The rows of the first table under the report's ``section`` heading, by column heading."""
    lines = text.split(f"## {section}")[1].split("\n\n")[1].splitlines()
    names = [name.strip() for name in lines[0].strip("|").split("|")]
    return [dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_a_figure_added_to_the_specs_reaches_every_table(grid_sweep, tmp_path, monkeypatch, plots_not_rendered):
    """Adding a figure is one function and one spec: the report's tables show it, with its
    label and style, the references' rows too, without a change to the report's code."""
    sweep = tmp_path / "sweep"
    shutil.copytree(grid_sweep, sweep, ignore=shutil.ignore_patterns("report"))
    shares = {}
    for number, folder in enumerate(job_folders(sweep)):
        record = json.loads((folder / "metrics.json").read_text())
        shares[folder.name] = record["ink_share"] = 0.123456 + 0.01 * number
        record["confounded"]["ink_share"], record["oracle"]["ink_share"] = 0.9, 0.1
        (folder / "metrics.json").write_text(json.dumps(record))
    monkeypatch.setattr(metrics, "FIGURES", dict(metrics.FIGURES))
    monkeypatch.setattr(metrics, "RELIANCE", list(metrics.RELIANCE))
    metrics.register(metrics.RelianceFigure("ink_share", "ink share %", style="percent"))
    text = write_report(sweep)
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(jobs.ink_share) == [shares[name] for name in jobs.job]
    assert (jobs["oracle.ink_share"] == 0.1).all()
    shown = [row["ink share %"] for row in markdown_rows(text, "Jobs")]
    assert shown == [f"{100 * share:.2f}" for share in jobs.ink_share]  # its style: percent
    assert all("ink share %" in row for row in markdown_rows(text, "Over seeds"))
    reliance = markdown_rows(text, "Does the model still rely on the confounder?")
    cells = {row["loss"]: row["ink share %"] for row in reliance}
    assert cells["oracle (floor)"] == "10.00 ± 0.00" and cells["confounded (ceiling)"] == "90.00 ± 0.00"


def reference_job(overrides: dict, status: str = "done", **trained) -> Job:
    """A job whose reference models were trained with ``trained`` (their records' settings)."""
    record = {kind: {"settings": {"kind": kind, **trained}} for kind in metrics.REFERENCE_KINDS}
    return Job(Path("job"), overrides, record, status, "")


def test_reference_rows_are_grouped_by_what_the_references_were_trained_with():
    """One pair of reference models per seed is one group (pooled in one pair of rows); a
    setting the references are trained with, whatever its name, gives a pair per value."""
    losses, seeds = ("balanced", "rrr"), (0, 1)
    per_seed = [reference_job({"loss": loss, "seed": seed}, seed=seed, epochs=5) for loss in losses for seed in seeds]
    assert reference_keys(per_seed, ["loss", "seed"]) == []
    per_model = [
        reference_job({"model": model, "loss": loss, "seed": seed}, seed=seed, model=model)
        for model in ("mlp", "cnn")
        for loss in losses
        for seed in seeds
    ]
    assert reference_keys(per_model, ["model", "loss", "seed"]) == ["model"]
    per_debug = [
        reference_job({"debug": debug, "loss": loss, "seed": 0}, seed=0, epochs=epochs)
        for debug, epochs in (("tiny", 1), (None, 5))
        for loss in losses
    ]
    assert reference_keys(per_debug, ["debug", "loss"]) == ["debug"]
    # failures leave each seed's references with one loss: still one group, not one per loss
    survived = {("balanced", 0), ("rrr", 1)}
    for job in per_seed:
        job.status = "done" if (job.overrides["loss"], job.overrides["seed"]) in survived else "failed"
    assert reference_keys(per_seed, ["loss", "seed"]) == []
