"""``hydra/sweeper=xilsweep``: a grid sweeper (every combination of the listed
values, in the order of Hydra's basic sweeper), minus settings that a job's
chosen config options do not have.

``loss=balanced,imbalanced loss.lam=0.1,1,10`` gives three balanced jobs and
one imbalanced job: the imbalanced loss has no ``lam``, so that override is
dropped from its jobs and the copies that then coincide are run once. An
override that no job's options have is kept, so a typo still fails loudly.

``grids`` (a list of ``params``-like mappings) sweeps a union of grids: each
grid is ``params``, then its own entries, then the command line; the jobs of
all grids run in one sweep, in order, each distinct job once. So pairings that
only some choices make sense in are written out: methods that need a
convolution only with ``model=cnn``, or the transplant correction only with
the balanced loss (``conf/experiment/compare_methods*.yaml``).

Hydra has no public way to make an override conditional on a group choice
(``++`` would add ``lam`` to the imbalanced loss, ``~`` fails on a missing
key), so this is a sweeper of its own, built on Hydra's public plugin API.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from xilsweep.progress import write_plan

log = logging.getLogger(__name__)


def grid(overrides: Sequence[Override]) -> list[list[str]]:
    """Every combination of the overrides' values as ``key=value`` lists, the last
    override of a key winning at the place of its first, as Hydra's basic sweeper does."""
    values: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(
                f"hydra/sweeper=xilsweep sweeps lists of values, not {override.value_type.name}: {override.input_line}"
            )
    return [list(job) for job in itertools.product(*values.values())]


def has_key(cfg: DictConfig, path: str) -> bool:
    """Whether ``path`` (dotted) names a key of ``cfg``, without resolving values."""
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # keys(): also a "???" value


def applicable_jobs(
    jobs: Sequence[Sequence[str]],
    overrides: Sequence[Override],
    is_group: Callable[[str], bool],
    compose: Callable[[list[str]], DictConfig],
) -> list[list[str]]:
    """``jobs`` (lists of ``key=value``) without the value overrides their
    group choices do not have, duplicates removed, order kept.

    ``compose(group_overrides)`` builds the config of one combination of
    group choices (once per distinct combination).
    """
    by_key = {o.get_key_element(): o for o in overrides}
    groups = {k for k, o in by_key.items() if is_group(o.key_or_group)}
    # Only plain `key=value` overrides of config values may be dropped.
    values = {
        k: o.key_or_group
        for k, o in by_key.items()
        if k not in groups and o.type == OverrideType.CHANGE and o.package is None
    }

    def key_of(entry: str) -> str:
        return entry.split("=", 1)[0]

    choices_of_job = [tuple(e for e in job if key_of(e) in groups) for job in jobs]
    missing: dict[tuple, set[str]] = {}  # group choices -> value keys their config lacks
    for choices in dict.fromkeys(choices_of_job):
        cfg = compose(list(choices))
        missing[choices] = {k for k, path in values.items() if not has_key(cfg, path)}
    missing_everywhere = set.intersection(*missing.values()) if missing else set()

    kept: dict[tuple, None] = {}
    for job, choices in zip(jobs, choices_of_job, strict=True):
        drop = missing[choices] - missing_everywhere
        kept.setdefault(tuple(e for e in job if key_of(e) not in drop))
    for choices, keys in missing.items():
        if keys - missing_everywhere:
            log.info(
                "%s: no %s; those jobs run once per remaining setting",
                " ".join(choices),
                ", ".join(sorted(keys - missing_everywhere)),
            )
    if len(kept) < len(jobs):
        log.info("%d jobs after dropping settings that do not apply (%d combinations)", len(kept), len(jobs))
    return [list(job) for job in kept]


def grid_lines(params: dict, grids: Sequence[dict] | None, arguments: Sequence[str]) -> list[list[str]]:
    """The override lines of each grid: ``params``, the grid's own entries, the
    command line (a later override of a key wins); one grid when ``grids`` is empty."""
    return [[*(f"{k}={v}" for k, v in {**params, **own}.items()), *arguments] for own in (grids or [{}])]


def planned_jobs(
    lines: Sequence[Sequence[str]],
    parse: Callable[[list[str]], list[Override]],
    is_group: Callable[[str], bool],
    compose: Callable[[list[str]], DictConfig],
) -> list[list[str]]:
    """``applicable_jobs`` of every grid in ``lines``, one after the other, each distinct job once."""
    jobs: dict[tuple, None] = {}
    for grid_overrides in lines:
        overrides = parse(list(grid_overrides))
        jobs.update(dict.fromkeys(map(tuple, applicable_jobs(grid(overrides), overrides, is_group, compose))))
    return [list(job) for job in jobs]


class XilSweeper(Sweeper):
    """The grid (or the union of ``grids``) of ``params`` and command-line overrides,
    ``applicable_jobs`` of it launched in batches of ``max_batch_size`` jobs (all at once if null)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, str]] | None = None,
    ):
        super().__init__()
        self.max_batch_size, self.params, self.grids = max_batch_size, params or {}, grids or []
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def jobs(self, arguments: list[str]) -> list[list[str]]:
        """The overrides of every job this sweep launches, in launch order."""
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        return planned_jobs(
            grid_lines(self.params, self.grids, arguments),
            parse=OverridesParser.create(config_loader=loader).parse_overrides,
            is_group=lambda key: bool(loader.get_group_options(key)),
            compose=lambda choices: loader.load_sweep_config(self.config, choices),
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = self.jobs(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_plan(sweep_dir, jobs=jobs)  # progress lines count against it, the report lists jobs never started
        size = len(jobs) if self.max_batch_size in (None, -1) else self.max_batch_size
        if size < 1:
            raise HydraException(
                f"hydra.sweeper.max_batch_size={self.max_batch_size} is not allowed: null, -1 or an integer >= 1"
            )
        returns = []
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal(batch)  # composition errors before any job of the batch runs
            results = self.launcher.launch(batch, initial_job_idx=start)
            for result in results:
                _ = result.return_value  # raises if the job failed, as Hydra's basic sweeper does
            returns.append(results)
        return returns


@dataclass
class XilSweeperConf:
    _target_: str = "hydra_plugins.xilsweep_sweeper.xilsweep_sweeper.XilSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    grids: list[dict[str, str]] | None = None  # a union of grids, each with params under it


ConfigStore.instance().store(group="hydra/sweeper", name="xilsweep", node=XilSweeperConf, provider="xilsweep")
