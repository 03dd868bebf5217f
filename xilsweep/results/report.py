"""``python -m xilsweep.report DIR [DIR ...] [--out FOLDER]``: one report over the sweep
folders named (or found under a parent folder: every call of one Optuna study, two sweeps
to compare), written into the first folder's ``report/`` (or ``--out``): ``jobs.csv`` (one
row per job), ``summary.csv`` (mean, std and n over seeds per setting), the plots as PNG,
and ``report.md`` (reliance first: the reliance table, the answers and the plots, then
the tables over seeds and per job), which is also printed.
Fields that older runs lack are left empty."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from xilsweep import metrics
from xilsweep.errors import DataError
from xilsweep.results.answers import answer_fit, answer_lambda, answer_lr, answer_pool
from xilsweep.results.collect import (
    REPORT_DIR,
    TEST,
    VAL,
    VAL_LOSS,
    Job,
    NotASweepError,
    counts_line,
    find_jobs,
    job_names,
    job_table,
    never_improved,
)
from xilsweep.results.curves import file_name, picked_jobs, plot_training_curves
from xilsweep.results.folders import is_search, optuna_lines, sweep_folders
from xilsweep.results.interaction import answer_interaction
from xilsweep.results.pareto import is_pareto_search, pareto_table
from xilsweep.results.plots import PlotData, plot_against, plot_methods, plot_pareto
from xilsweep.results.select import (
    LAMBDA,
    LR,
    POOL,
    reference_keys,
    searched_keys,
    selection_rule,
    shared_settings,
    summary_table,
    varied_keys,
    with_method_weights,
)
from xilsweep.results.shortcut import answer_balanced, answer_removal, headline, hidden_settings
from xilsweep.results.tables import markdown, reliance_markdown, seed_note, summary_markdown

# The settings figures are drawn against: file name part, setting, x axis label.
SETTING_PLOTS = (
    ("lambda", LAMBDA, "λ (loss.lam)"),
    ("pool_size", POOL, "corrected samples (pool.size)"),
    ("lr", LR, "learning rate (trainer.lr)"),
)
# The clean accuracy plots: file, setting, figure, x axis label.
ACCURACY_PLOTS = (
    ("val_accuracy_vs_lr.png", LR, VAL, "learning rate (trainer.lr)"),
    ("test_accuracy_vs_lambda.png", LAMBDA, TEST, "λ (loss.lam)"),
    ("test_accuracy_vs_pool_size.png", POOL, TEST, "corrected samples (pool.size)"),
)


def make_plots(jobs: list[Job], data: PlotData, front: pd.DataFrame, out: Path) -> list[str]:
    """Draws the plots the sweep has data for, reliance first; their file names."""
    made = {}
    line = headline(data.table)
    reliance = [key for key in (line.figure.key, line.share) if key] if line else []
    if len(data.summary):
        for name, x, xlabel in SETTING_PLOTS:
            made[f"reliance_vs_{name}.png"] = plot_against(data, x, reliance, out / f"reliance_vs_{name}.png", xlabel)
        made["reliance_by_method.png"] = plot_methods(data, [*reliance, TEST], out / "reliance_by_method.png")
        for name, x, figure, xlabel in ACCURACY_PLOTS:
            made[name] = plot_against(data, x, [figure], out / name, xlabel)
    for method, job in picked_jobs(jobs, data.table, data.methods):
        made[file_name(method)] = plot_training_curves(job, method, out / file_name(method))
    if len(front):
        plot_pareto(front, out / "pareto_front.png")
        made["pareto_front.png"] = True
    return [name for name, ok in made.items() if ok]


def heading_lines(folders: list[Path], found: list[list[Job]], jobs: list[Job]) -> list[str]:
    """The title, the folders covered with their counts, the shared settings and the warnings."""
    if len(folders) == 1:
        lines = [f"# Sweep report: {folders[0]}", "", counts_line(jobs, folders[0]) + ".", ""]
    else:
        lines = [f"# Sweep report: {len(folders)} sweep folders", ""]
        lines += [f"- `{folder}`: {counts_line(part, folder)}" for folder, part in zip(folders, found, strict=True)]
        lines += ["", f"In all: {counts_line(jobs)}.", ""]
    if shared_settings(jobs):
        lines += [f"Shared by all finished jobs: {shared_settings(jobs)}.", ""]
    never = [name for job, name in zip(jobs, job_names(jobs, short=True), strict=True) if never_improved(job)]
    if never:
        lines += [
            f"**Warning:** {len(never)} finished job(s) never improved on the confounded model: they kept "
            f"epoch 0, the confounded model itself ({', '.join(never)}).",
            "",
        ]
    return lines


def optuna_section(folders: list[Path]) -> list[str]:
    found = [line for folder in folders for line in [*optuna_lines(folder), ""]]
    return ["## Optuna", "", *found] if any(found) else []


def answers_section(jobs: list[Job], table: pd.DataFrame, summary: pd.DataFrame, varied: list[str]) -> list[str]:
    rule = selection_rule(jobs)
    lines = ["## Answers", ""]
    if len(summary):
        lines += [*answer_removal(table, summary, varied, rule), ""]
        lines += [*answer_balanced(table, summary, varied, rule), ""]
        lines += answer_interaction(table, summary, varied, rule)
    lines += [f"- {answer_fit(table, jobs)}"]
    if len(summary):
        line = headline(table)
        figure = line.figure.key if line else None
        lines += [f"- {answer_lr(summary, varied, rule)}", f"- {answer_lambda(summary, varied, rule, figure)}"]
        lines += [f"- {answer_pool(summary, varied, figure)}"]
    return [*lines, ""]


def reliance_section(jobs: list[Job], table: pd.DataFrame, summary: pd.DataFrame, varied: list[str]) -> list[str]:
    if not len(summary) or "confounded.path" not in table:
        return []
    hidden = hidden_settings(table, summary, varied)
    oracles = [(job.metrics or {}).get("oracle") or {} for job in jobs]
    absent = next((oracle["absent"] for oracle in oracles if "absent" in oracle), None)  # one line, not one per job
    return [
        "## Does the model still rely on the confounder? (mean ± std over seeds)",
        "",
        reliance_markdown(table, summary, varied, reference_keys(jobs, varied)),
        "",
        "Shortcut removed: (confounded - corrected) / (confounded - oracle) per job, then averaged; "
        "1 = as free of the confounder as the oracle, 0 = no change, empty where the references "
        "differ too little to measure against. " + seed_note(table),
        "",
        *([f"{absent[0].upper()}{absent[1:]}.", ""] if absent else []),
        *([hidden, ""] if hidden else []),
    ]


def plots_section(made: list[str]) -> list[str]:
    shown = [name for name in made if name != "pareto_front.png"]
    return ["## Plots", "", *(f"![{name}]({name})" for name in shown), ""] if shown else []


def pareto_section(front: pd.DataFrame) -> list[str]:
    if not len(front):
        return []
    listed = front[front.front].drop(columns="front")
    return [
        "## Pareto front: clean validation accuracy vs validation dot flip rate",
        "",
        f"{len(listed)} of {len(front)} finished trials are not dominated (no other trial of these sweep "
        "folders has at least their validation accuracy and at most their validation flip rate); "
        "their test figures:",
        "",
        markdown(listed),
        "",
        "![Pareto front](pareto_front.png)",
        "",
    ]


def jobs_section(jobs: list[Job], table: pd.DataFrame, summary: pd.DataFrame, varied: list[str]) -> list[str]:
    """The summary over seeds and the jobs (the reference models are in the reliance section)."""
    references = tuple(f"{kind}." for kind in metrics.REFERENCE_KINDS)
    shown = table.drop(columns=[c for c in table if c in ("seconds", VAL_LOSS) or c.startswith(references)])
    shown["job"] = job_names(jobs, short=True)
    return [
        "## Over seeds (mean ± std, n = finished seeds)",
        "",
        summary_markdown(summary, varied) if len(summary) else "No finished jobs yet.",
        "",
        "## Jobs",
        "",
        markdown(shown),
        "",
    ]


def write_report(*sweep_dirs: Path, out: Path | None = None) -> str:
    """Write the report of the sweep folders (or those under a parent) into ``out`` (default: the
    first folder's ``report/``) and return report.md's text."""
    folders = sweep_folders(list(sweep_dirs))
    found = [find_jobs(folder) for folder in folders]
    jobs = with_method_weights([job for part in found for job in part])
    varied = varied_keys(jobs)
    table = job_table(jobs, varied)
    summary = summary_table(table, varied)
    out = Path(out) if out else Path(sweep_dirs[0]) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "jobs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    named = table.assign(job=job_names(jobs, short=True))
    front = pareto_table(named, varied) if is_pareto_search(jobs, table) else pd.DataFrame()
    searched = searched_keys(table, varied, is_search(folders))
    made = make_plots(jobs, PlotData(table, summary, varied, searched, reference_keys(jobs, varied)), front, out)
    lines = heading_lines(folders, found, jobs) + optuna_section(folders)
    lines += reliance_section(jobs, table, summary, varied)
    lines += answers_section(jobs, table, summary, varied)
    lines += plots_section(made) + pareto_section(front) + jobs_section(jobs, table, summary, varied)
    lines += [f"Files in {out}: jobs.csv, summary.csv" + "".join(f", {name}" for name in made) + "."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xilsweep.report",
        description="Tables, plots and answers from sweep folders (or a parent folder holding them), merged.",
    )
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="e.g. outputs/multirun/2026-01-01/12-00-00")
    parser.add_argument("--out", type=Path, help="where to write the report (default: FIRST_DIR/report)")
    args = parser.parse_args(argv)
    try:
        text = write_report(*args.sweep_dirs, out=args.out)
    except (NotASweepError, DataError) as e:  # not a sweep folder; a damaged planned_jobs.yaml
        print(f"xilsweep.report: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0
