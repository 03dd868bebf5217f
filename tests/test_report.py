"""The sweep report on real (tiny) sweeps: the full grid run in parallel, and a
sweep with failing jobs; plus folders of older or interrupted runs."""

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers import job_folders, run_sweep
from xilsweep.report import answer_lambda, find_jobs, parse_overrides, varied_keys, write_report
from xilsweep.report import main as report_main

FAST = ["trainer.max_epochs=1", "save_model=false", "explainer.n_images=16"]
PLOTS = (
    "val_accuracy_vs_lr.png",
    "test_accuracy_vs_lambda.png",
    "test_accuracy_vs_pool_size.png",
    "training_curves_best.png",
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
        (m["settings"]["loss"], m["settings"].get("lambda"), m["settings"]["pool_size"], m["settings"]["seed"])
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
    for name in PLOTS[1:]:
        assert (out / name).stat().st_size > 10_000, name
    assert not (out / "val_accuracy_vs_lr.png").exists()  # one learning rate only
    assert "**Learning rate:** not enough data" in text


def test_report_answers_balanced_vs_imbalanced_with_the_seed_spread(grid_sweep):
    text = write_report(grid_sweep)
    summary = pd.read_csv(grid_sweep / "report" / "summary.csv")
    best = summary.sort_values(
        ["best_val_accuracy_mean", "best_val_loss_mean"], ascending=[False, True], kind="stable"
    ).drop_duplicates("loss")  # ties to the lower validation loss
    best = best.set_index("loss")
    difference = 100 * (best.test_accuracy_mean["balanced"] - best.test_accuracy_mean["imbalanced"])
    answer = next(line for line in text.splitlines() if "Does balanced beat imbalanced?" in line)
    assert f"{abs(difference):.2f}" in answer
    assert f"std {100 * best.test_accuracy_std['balanced']:.2f}" in answer
    assert "At matched pool.size" in answer
    assert "**Pool size**" in text and "not enough data" not in text.split("**Pool size**")[1]


def test_failing_jobs_leave_the_sweep_running_and_show_as_failed(failing_sweep):
    sweep, result = failing_sweep
    assert result.returncode != 0  # Hydra reports the failures at the end
    folders = job_folders(sweep)
    assert len(folders) == 6  # jobs after the failures still ran
    text = write_report(sweep)
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(jobs.status) == ["done", "failed", "done", "failed", "failed", "failed"]
    bad_setting = jobs[jobs["loss.lam"] == -1]
    assert bad_setting.reason.str.contains("loss.lam=-1.0 is not allowed").all()
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
            "best_val_accuracy_mean": [0.99, 0.99, 0.98],
            "best_val_accuracy_std": [0.0, 0.0, 0.01],
            "best_val_loss_mean": [0.05, 0.03, 0.01],
            "best_val_loss_std": [0.0, 0.0, 0.0],
            "test_accuracy_mean": [0.98, 0.99, 0.97],
            "test_accuracy_std": [0.0, 0.0, 0.0],
        }
    )
    answer = answer_lambda(summary, ["loss.lam", "seed"])
    assert answer.startswith("**λ:** best loss.lam = 10 ") and "tied on validation accuracy with 0.5" in answer
    assert answer_lambda(summary.drop(columns=["best_val_loss_mean", "best_val_loss_std"]), ["loss.lam"]).startswith(
        "**λ:** best loss.lam = 0.5 "
    )  # older runs: first wins


def test_report_reads_older_interrupted_and_running_jobs(grid_sweep, tmp_path):
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
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = json.loads((killed / "metrics.json").read_text())
    (killed / "metrics.json").write_text(json.dumps({**record, "status": "running", "pid": dead.pid}))
    # started but no record yet
    (running / "metrics.json").unlink()
    (no_record / "metrics.json").unlink()
    (no_record / "run.log").write_text("[2026-01-01 00:00:00,000][xilsweep][INFO] - fine-tuning\n")
    write_report(sweep)
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(jobs.status) == ["done", "failed", "running", "running"]
    assert jobs.reason[1].startswith(f"killed: process {dead.pid}")
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
    assert [j.status for j in find_jobs(sweep)] == ["done", "failed", "running", "running"]


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
