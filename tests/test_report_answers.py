"""The report's answers and plots on synthetic sweep folders (records written here, no
training): each method read against the balanced loss paired by seed, settings chosen by
the jobs' own stopping rule per method, the flags, the methods' weights from their configs,
one report over several folders, Optuna's results, and searched settings drawn as points."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from xilsweep import metrics
from xilsweep.results import plots
from xilsweep.results.collect import NEVER_IMPROVED, find_jobs, job_table
from xilsweep.results.curves import picked_jobs
from xilsweep.results.plots import PlotData, plot_against
from xilsweep.results.report import main as report_main
from xilsweep.results.report import write_report
from xilsweep.results.select import searched_keys, summary_table, varied_keys
from xilsweep.results.shortcut import HIDDEN
from xilsweep.results.stats import paired, t_interval, verdict

REFERENCES = {  # the same pair of reference figures for every seed
    "confounded": {"test_accuracy": 0.5, "dot_flip_rate": 0.9, "test_dotted_accuracy": 0.5, "attribution_in_mask": 0.3},
    "oracle": {"test_accuracy": 0.99, "dot_flip_rate": 0.1, "test_dotted_accuracy": 0.98, "attribution_in_mask": 0.1},
}


# the answers are in the text and tables: the plots are drawn, not rendered (conftest.py)
pytestmark = pytest.mark.usefixtures("plots_not_rendered")


def record(overrides: dict, seed: int, flip: float | None, stop_on: str = "clean", **figures) -> dict:
    """A finished job's metrics.json: its overrides (and config), the corrected model's figures
    (``flip``: its dot flip rate; None on data without one) read against ``REFERENCES``."""
    corrected = {
        "test_accuracy": 0.97,
        "dot_flip_rate": flip,
        "test_dotted_accuracy": 0.9,
        "attribution_in_mask": 0.25,
        **{k: v for k, v in figures.items() if k in REFERENCES["oracle"]},
    }
    kept = [k for k in REFERENCES["oracle"] if k != "dot_flip_rate" or flip is not None]
    references = {kind: {**{k: REFERENCES[kind][k] for k in kept}, "path": f"{kind}/{seed}"} for kind in REFERENCES}
    val, dotted = figures.get("val", 0.97), figures.get("dotted", 0.6)
    history = [{"epoch": 0, "val_loss": 1.0, "val_accuracy": 0.5, "val_dotted_accuracy": 0.5}]
    history += [{"epoch": 1, "train_loss": 0.3, "train_accuracy": 0.95, "val_loss": 0.1, "val_accuracy": val}]
    history[1].update({"val_dotted_accuracy": dotted, **({"val_dot_flip_rate": flip} if flip is not None else {})})
    return {
        "status": "done",
        "overrides": [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}"],
        "settings": {"seed": seed, "stop_on": stop_on},
        "config": {"loss": {"lam": figures["lam"]} if "lam" in figures else {}, "trainer": {"stop_on": stop_on}},
        **{k: v for k, v in corrected.items() if v is not None},
        **references,
        "shortcut_removed": metrics.shortcut_removed_all(references["confounded"], corrected, references["oracle"]),
        "best_epoch": figures.get("best_epoch", 1),
        "epochs_run": 1,
        "best_val_accuracy": val,
        "best_val_dotted_accuracy": dotted,
        "history": history,
    }


def write_sweep(folder: Path, records: list[dict]) -> Path:
    for number, job in enumerate(records):
        (folder / f"{number}_job").mkdir(parents=True)
        (folder / f"{number}_job" / "metrics.json").write_text(json.dumps(job))
    return folder


def table_rows(text: str, column: str) -> list[dict]:
    """The rows of the first Markdown table with a column headed ``column``, by heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and f"| {column} |" in f"{line} ")
    names = [name.strip() for name in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def test_intervals_and_verdicts_over_seeds():
    interval = t_interval([0.2, 0.3, 0.25, None])
    sem = stats.sem([0.2, 0.3, 0.25])
    assert interval.n == 3 and interval.mean == pytest.approx(0.25)
    assert interval.high - interval.mean == pytest.approx(stats.t.ppf(0.975, 2) * sem)
    assert verdict(interval) == "ahead (3 seeds)" and verdict(interval, higher_is_better=False) == "behind (3 seeds)"
    assert verdict(t_interval([0.1, -0.2, 0.05])) == "not distinguishable (3 seeds)"
    assert verdict(t_interval([0.4])) == "not distinguishable (1 seed)"  # one seed: no interval, no verdict
    # paired by seed: a seed's own level cancels (the same confounded model and pool), the constant gap stays
    difference = paired({0: 0.55, 1: 0.75, 2: 0.95}, {0: 0.5, 1: 0.7, 2: 0.9, 3: 0.1})
    assert (difference.n, difference.low, difference.high) == (3, pytest.approx(0.05), pytest.approx(0.05))
    assert verdict(difference) == "ahead (3 seeds)"


def test_each_method_is_read_against_balanced_paired_by_seed(tmp_path):
    """rrr removes the shortcut, balanced and imbalanced do not; a method a little ahead of
    balanced on every seed is ahead paired by seed although its seeds' shares overlap."""
    flips = {"balanced": (0.85, 0.75, 0.65), "imbalanced": (0.86, 0.74, 0.67), "rrr": (0.12, 0.14, 0.1)}
    flips["rbr"] = tuple(f - 0.05 for f in flips["balanced"])
    sweep = write_sweep(
        tmp_path / "sweep",
        [record({"loss": loss}, seed, flip) for loss, values in flips.items() for seed, flip in enumerate(values)],
    )
    text = write_report(sweep)
    rows = {row["loss"]: row for row in table_rows(text, "removed?")}
    jobs = pd.read_csv(sweep / "report" / "jobs.csv")
    shares = jobs.pivot(index="seed", columns="loss", values="removed.dot_flip_rate")
    assert rows["rrr"]["removed?"] == "yes" and rows["balanced"]["removed?"] == rows["imbalanced"]["removed?"] == "no"
    assert rows["balanced"]["against"] == "confounded model"  # balanced itself: the share against 0
    assert rows["rrr"]["against"] == rows["rbr"]["against"] == "balanced"
    gap = (shares.rrr - shares.balanced).mean()
    assert rows["rrr"]["difference"].startswith(f"+{gap:.3f} [") and rows["rrr"]["verdict"] == "ahead (3 seeds)"
    assert rows["rbr"]["verdict"] == "ahead (3 seeds)"  # 0.0625 ahead on each seed
    assert shares.rbr.min() < shares.balanced.max()  # unpaired, their seeds overlap
    assert rows["imbalanced"]["verdict"] == "not distinguishable (3 seeds)"
    assert "removes it (shortcut removed (flip rate) at least 0.5): loss=rrr;" in text
    assert "keeps it (at most 0.2): loss=balanced; loss=imbalanced;" in text
    balanced = table_rows(text, "balanced: chosen")  # balanced vs imbalanced: one condition, paired
    difference = (jobs[jobs.loss == "balanced"].set_index("seed").dot_flip_rate) - (
        jobs[jobs.loss == "imbalanced"].set_index("seed").dot_flip_rate
    )
    assert len(balanced) == 1 and balanced[0]["dot flip rate, difference"].startswith(f"{difference.mean():+.3f}")


def test_settings_are_chosen_per_method_by_the_jobs_stopping_rule(tmp_path):
    """Each penalty's own λ, chosen by its stopping score (clean + dotted validation accuracy
    here), not one λ pooled across penalties by clean validation accuracy."""
    jobs = []
    for seed in (0, 1):
        jobs += [
            record({"loss": "rrr", "loss.lam": 10}, seed, 0.5, "both", val=0.99, dotted=0.5),
            record({"loss": "rrr", "loss.lam": 100}, seed, 0.2, "both", val=0.97, dotted=0.9),
            record({"loss": "hint", "loss.lam": 10}, seed, 0.3, "both", val=0.96, dotted=0.9),
            record({"loss": "hint", "loss.lam": 1000}, seed, 0.6, "both", val=0.98, dotted=0.6),
        ]
    sweep = write_sweep(tmp_path / "sweep", jobs)
    text = write_report(sweep)
    rows = {row["loss"]: row for row in table_rows(text, "removed?")}
    assert rows["rrr"]["setting chosen"] == "loss.lam=100" and rows["hint"]["setting chosen"] == "loss.lam=10"
    found = find_jobs(sweep)
    picked = picked_jobs(found, job_table(found, varied_keys(found)), ["loss"])  # whose training curves are drawn
    assert {method: job.overrides["loss.lam"] for method, job in picked} == {"rrr": 100, "hint": 10}
    answer = next(line for line in text.splitlines() if line.startswith("- **λ:**"))
    assert "mean of clean and dotted validation accuracy" in answer
    assert "rrr: best loss.lam = 100 " in answer and "hint: best loss.lam = 10 " in answer
    curves = sorted(p.name for p in (tmp_path / "sweep" / "report").glob("training_curves_*.png"))
    assert curves == ["training_curves_hint.png", "training_curves_rrr.png"]  # one per method


def test_a_hidden_shortcut_and_a_job_that_never_improved_are_flagged(tmp_path):
    """The attribution says removed (share >= 0.5) while the flip rate says kept (<= 0.2); a job
    that kept epoch 0 is the confounded model."""
    jobs = [record({"loss": "balanced"}, seed, 0.85) for seed in (0, 1)]
    jobs += [record({"loss": "cdep"}, seed, 0.86, attribution_in_mask=0.15) for seed in (0, 1)]
    jobs[1]["best_epoch"] = 0
    sweep = write_sweep(tmp_path / "sweep", jobs)
    text = write_report(sweep)
    rows = {row["loss"]: row for row in table_rows(text, "removed?")}
    assert HIDDEN in rows["cdep"]["note"] and HIDDEN not in rows["balanced"]["note"]
    assert f"1 of 2 jobs {NEVER_IMPROVED}" in rows["balanced"]["note"]
    assert "**Warning:** 1 finished job(s) never improved on the confounded model" in text
    assert "Flagged, an explanation that hides a shortcut the model still uses" in text and "loss=cdep" in text
    assert pd.read_csv(sweep / "report" / "jobs.csv").reason[1] == NEVER_IMPROVED


def test_each_methods_weight_is_a_setting_column_where_the_loss_varies(tmp_path):
    """Methods named without loss.lam overrides (their tuned weights) still show their weight."""
    jobs = [record({"loss": "rrr"}, seed, 0.1, lam=100.0) for seed in (0, 1)]
    jobs += [record({"loss": "imbalanced"}, seed, 0.8) for seed in (0, 1)]
    sweep = write_sweep(tmp_path / "sweep", jobs)
    assert varied_keys(find_jobs(sweep)) == ["loss", "seed"]
    write_report(sweep)
    table = pd.read_csv(sweep / "report" / "jobs.csv")
    assert list(table.columns[:3]) == ["job", "loss", "loss.lam"]
    assert list(table["loss.lam"][:2]) == [100.0, 100.0] and table["loss.lam"][2:].isna().all()


def test_one_report_over_the_calls_of_a_study(tmp_path):
    """Two calls' sweep folders under a parent: one report in the parent, the folders named,
    the job numbers kept with a folder prefix where they collide, Optuna's results in words."""
    parent = tmp_path / "study"
    for name, lam, best in (("10-00-00", 0.5, 0.97), ("11-00-00", 5.0, 0.98)):
        folder = write_sweep(parent / name, [record({"loss.lam": lam + seed}, 0, 0.5 - 0.1 * seed) for seed in (0, 1)])
        (folder / "optimization_results.yaml").write_text(
            yaml.safe_dump({"name": "optuna", "best_params": {"loss.lam": lam}, "best_value": best})
        )
    text = write_report(parent)
    assert "# Sweep report: 2 sweep folders" in text and f"- `{parent / '10-00-00'}`: 2 jobs: 2 done" in text
    assert "In all: 4 jobs: 4 done." in text
    jobs = pd.read_csv(parent / "report" / "jobs.csv")
    assert list(jobs.job) == ["10-00-00/0_job", "10-00-00/1_job", "11-00-00/0_job", "11-00-00/1_job"]
    assert f"`{parent / '11-00-00'}`: best val acc 98.00% at loss.lam=5 (the study's best trial so far)." in text
    out = tmp_path / "elsewhere"
    assert report_main([str(parent / "10-00-00"), str(parent / "11-00-00"), "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "jobs.csv")) == 4
    # a two-objective study's Pareto solutions as a table
    (parent / "11-00-00" / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "solutions": [{"params": {"loss.lam": 3.0}, "values": [0.97, 0.125]}]})
    )
    pareto = table_rows(write_report(parent), "val dot flip rate")
    assert pareto[0] == {"loss.lam": "3", "best val acc %": "97.00", "val dot flip rate": "0.125"}


def drawn_lines(monkeypatch, data: PlotData, x: str, key: str, tmp_path: Path) -> list:
    """The lines (not the horizontal references) and the y label ``plot_against`` draws."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    assert plot_against(data, x, [key], tmp_path / "plot.png", x)
    ax = figures[0].axes[0]
    return [line for line in ax.lines if len(set(line.get_ydata())) > 1], ax.get_ylabel()


def test_searched_settings_are_points_and_one_seed_is_not_a_spread(tmp_path, monkeypatch):
    grid = [record({"loss.lam": lam}, seed, 0.5 / lam) for lam in (1, 10) for seed in (0, 1)]
    drawn = [record({"loss.lam": 0.1 * (1 + n)}, 0, 0.5 / (1 + n)) for n in range(4)]  # an Optuna study's trials
    for name, jobs, search in (("grid", grid, False), ("study", drawn, True)):
        found = find_jobs(write_sweep(tmp_path / name, jobs))
        varied = varied_keys(found)
        table = job_table(found, varied)
        searched = searched_keys(table, varied, search)
        data = PlotData(table, summary_table(table, varied), varied, searched, [])
        lines, label = drawn_lines(monkeypatch, data, "loss.lam", "dot_flip_rate", tmp_path)
        assert (len(lines), "mean ± std" in label) == ((1, True) if name == "grid" else (0, False))
    assert searched == {"loss.lam"}
    assert searched_keys(table, varied, False) == set()  # a grid of one seed is not told apart by its values


def test_without_a_flip_rate_the_dotted_accuracy_is_read(tmp_path, monkeypatch):
    """Decoy-MNIST has no confounded class: the answers read the dotted test accuracy (higher
    is better) and its share removed, where the figure specs show it."""
    monkeypatch.setattr(metrics, "FIGURES", dict(metrics.FIGURES))
    monkeypatch.setattr(metrics, "REMOVED_SHOWN", {**metrics.REMOVED_SHOWN, "test_dotted_accuracy": "dotted accuracy"})
    if "removed.test_dotted_accuracy" not in metrics.FIGURES:
        metrics.register(metrics.removed_figure("test_dotted_accuracy"))
    dotted = {"balanced": (0.6, 0.55), "imbalanced": (0.5, 0.45), "rrr": (0.95, 0.97)}
    jobs = [
        record({"loss": loss}, seed, None, test_dotted_accuracy=value)
        for loss, values in dotted.items()
        for seed, value in enumerate(values)
    ]
    text = write_report(write_sweep(tmp_path / "sweep", jobs))
    rows = {row["loss"]: row for row in table_rows(text, "removed?")}
    assert "dot flip rate" not in rows["rrr"] and rows["rrr"]["removed?"] == "yes"
    assert rows["rrr"]["shortcut removed (dotted accuracy)"].startswith("0.9")
    pair = table_rows(text, "balanced: chosen")[0]  # its last verdict column: the dotted accuracy's
    assert pair["dotted test acc %, difference"] == "+10.00 [+10.00, +10.00]" and pair["verdict"] == "ahead (2 seeds)"


def test_a_method_without_the_plotted_figure_draws_no_line(tmp_path, monkeypatch):
    """A sweep under way where one method has no value of the figure yet: the others' lines are
    drawn, the method without it none (it once failed the whole report)."""
    jobs = [record({"loss": "rrr", "loss.lam": lam}, seed, 0.5 / lam) for lam in (1, 10) for seed in (0, 1)]
    jobs += [record({"loss": "rbr", "loss.lam": lam}, 0, None) for lam in (1, 10)]  # no dot flip rate
    found = find_jobs(write_sweep(tmp_path / "sweep", jobs))
    varied = varied_keys(found)
    table = job_table(found, varied)
    data = PlotData(table, summary_table(table, varied), varied, searched_keys(table, varied, False), [])
    lines, _ = drawn_lines(monkeypatch, data, "loss.lam", "dot_flip_rate", tmp_path)
    assert [line.get_label().split(" ")[0] for line in lines] == ["rrr"]


def test_interaction_settings_are_read_against_their_reference_paired_by_seed(tmp_path, monkeypatch):
    """Each query strategy against random and each feedback kind against exact, per method and
    pool size, paired by seed: a strategy a little ahead of random on every seed is ahead
    although its seeds overlap; a strategy is a line of its own on the pool-size curve."""
    levels = (0.8, 0.6, 0.4)  # the seeds' own flip rates: what pairing cancels
    jobs = [
        record({"loss": loss, "pool.size": size, "pool.select": select}, seed, level - (gain + extra) / size)
        for loss, gain in (("rrr", 0.1), ("hint", 0.0))
        for size in (1, 2)
        for select, extra in (("random", 0.0), ("caipi", 0.05))
        for seed, level in enumerate(levels)
    ]
    sweep = write_sweep(tmp_path / "select", jobs)
    share = "shortcut removed (flip rate), difference to random"
    text = write_report(sweep)
    rows = table_rows(text, share)
    assert [(r["pool.size"], r["loss"], r["pool.select"]) for r in rows] == [
        ("1", "hint", "caipi"),
        ("1", "rrr", "caipi"),
        ("2", "hint", "caipi"),
        ("2", "rrr", "caipi"),
    ]
    table = pd.read_csv(sweep / "report" / "jobs.csv")
    columns = ["pool.size", "loss", "pool.select"]
    shares = table.pivot_table(index="seed", columns=columns, values="removed.dot_flip_rate")
    gap = (shares[(1, "rrr", "caipi")] - shares[(1, "rrr", "random")]).mean()
    assert rows[1][share].startswith(f"+{gap:.3f} [")
    for row in rows:  # the share's verdict, then the test accuracy's (equal accuracies)
        cells = [row[k] for k in ("pool.size", "loss", "pool.select", "setting chosen", "shortcut removed (flip rate)")]
        assert f"| {' | '.join(cells)} | {row[share]} | ahead (3 seeds) |" in text
        assert row["verdict"] == "not distinguishable (3 seeds)"
    assert shares[(1, "rrr", "caipi")].min() < shares[(1, "rrr", "random")].max()  # unpaired, they overlap
    found = find_jobs(sweep)
    varied = varied_keys(found)
    table = job_table(found, varied)
    data = PlotData(table, summary_table(table, varied), varied, set(), [])
    lines, _ = drawn_lines(monkeypatch, data, "pool.size", "removed.dot_flip_rate", tmp_path)
    assert sorted(line.get_label().split(" (")[0] for line in lines) == ["hint caipi", "rrr caipi", "rrr random"]

    same = [record({"loss": "rrr", "pool.feedback": kind}, seed, 0.2) for kind in ("exact", "wrong") for seed in (0, 1)]
    accuracy = "test acc %, difference to exact"
    rows = table_rows(write_report(write_sweep(tmp_path / "feedback", same)), accuracy)
    assert [(r["pool.feedback"], r[accuracy]) for r in rows] == [("wrong", "+0.00 [+0.00, +0.00]")]


def test_a_job_of_rounds_never_improved_only_if_every_round_kept_its_epoch_0(tmp_path):
    """A later round's epoch 0 is the model the round before kept, not the confounded model."""
    rounds = [[{"best_epoch": 3}, {"best_epoch": 0}], [{"best_epoch": 0}, {"best_epoch": 0}]]
    jobs = [
        {**record({"pool.rounds": 2, "pool.select": select}, seed, 0.2, best_epoch=0), "rounds": kept}
        for select, kept in zip(("caipi", "random"), rounds, strict=True)
        for seed in (0, 1)
    ]
    text = write_report(write_sweep(tmp_path / "rounds", jobs))
    notes = {row["pool.select"]: row["note"] for row in table_rows(text, "removed?")}
    assert notes == {"caipi": "", "random": f"2 of 2 jobs {NEVER_IMPROVED}"}
