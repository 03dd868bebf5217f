"""The sweep folders one report covers and what they say about themselves: the folders
named, or every sweep folder under a parent folder (each call of a resumed Optuna study
writes its own); whether their jobs were drawn by a search (Optuna) rather than laid on a
grid; Optuna's ``optimization_results.yaml`` in words."""

from __future__ import annotations

from pathlib import Path

import yaml

from xilsweep import metrics
from xilsweep.progress import PLANNED_FILE, read_plan
from xilsweep.results.collect import REPORT_DIR, VAL, is_job_folder
from xilsweep.results.tables import pipe_table, setting

OPTUNA_FILE = "optimization_results.yaml"
# What a job returns to an Optuna study (xilsweep.run.objective_of): the clean validation
# accuracy, or it and the validation dot flip rate for a two-objective search.
OBJECTIVES = {1: (VAL,), 2: (VAL, metrics.reliance("dot_flip_rate").val_key)}


def is_sweep_folder(folder: Path) -> bool:
    return (folder / PLANNED_FILE).exists() or any(is_job_folder(p) for p in folder.iterdir())


def sweeps_below(folder: Path) -> list[Path]:
    """The sweep folders at or below ``folder``, in name order (a job's own folder is none)."""
    if is_sweep_folder(folder):
        return [folder]
    if (folder / ".hydra").exists():
        return []
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != REPORT_DIR)
    return [sweep for child in children for sweep in sweeps_below(child)]


def sweep_folders(paths: list[Path]) -> list[Path]:
    """Each of ``paths`` that is a sweep folder, or the sweep folders below it; a path that is
    neither is kept, for ``find_jobs`` to say what it is."""
    found = []
    for path in map(Path, paths):
        below = sweeps_below(path) if path.is_dir() else []
        found += [p for p in below or [path] if p not in found]
    return found


def sweeper_target(folder: Path) -> str:
    """The sweeper that ran the sweep, from Hydra's ``multirun.yaml`` (empty without one)."""
    path = folder / "multirun.yaml"
    if not path.exists():
        return ""
    sweeper = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("sweeper") or {}
    return str(sweeper.get("_target_", ""))


def is_search(folders: list[Path]) -> bool:
    """Whether a search drew the jobs' settings (Optuna: its results file, a plan of only a
    number of trials, or its sweeper in multirun.yaml), so they share no grid."""
    return any(
        (folder / OPTUNA_FILE).exists() or read_plan(folder).trials or "optuna" in sweeper_target(folder).lower()
        for folder in folders
    )


def optuna_lines(folder: Path) -> list[str]:
    """The best parameters and value (one objective) or the Pareto solutions (two) Optuna wrote
    at the end of the call into ``folder``: the study's best so far, over every call before it."""
    path = folder / OPTUNA_FILE
    if not path.exists():
        return []
    results = yaml.safe_load(path.read_text()) or {}
    if "best_params" in results:
        params = ", ".join(f"{key}={setting(value)}" for key, value in results["best_params"].items())
        figure = metrics.FIGURES[VAL]
        value = f"{figure.label.removesuffix(' %')} {figure.text(results['best_value'])}"
        return [f"`{folder}`: {value} at {params} (the study's best trial so far)."]
    solutions = results.get("solutions") or []
    if not solutions:
        return [f"`{folder}`: {OPTUNA_FILE} names no result."]
    names = list(dict.fromkeys(key for solution in solutions for key in solution["params"]))
    objectives = [metrics.FIGURES[key] for key in OBJECTIVES[len(solutions[0]["values"])]]
    rows = [
        [setting(solution["params"].get(key)) for key in names]
        + [figure.format(value) for figure, value in zip(objectives, solution["values"], strict=True)]
        for solution in solutions
    ]
    return [
        f"`{folder}`: {len(solutions)} Pareto solutions of the study so far:",
        "",
        pipe_table([*names, *(f.label for f in objectives)], rows),
    ]
