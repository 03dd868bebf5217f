"""``hydra/sweeper=xilsweep``: Hydra's basic (grid) sweeper, minus settings
that a job's chosen config options do not have.

``loss=balanced,imbalanced loss.lam=0.1,1,10`` gives three balanced jobs and
one imbalanced job: the imbalanced loss has no ``lam``, so that override is
dropped from its jobs and the copies that then coincide are run once. An
override that no job's options have is kept, so a typo still fails loudly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def has_key(cfg: DictConfig, path: str) -> bool:
    """Whether ``path`` (dotted) names a key of ``cfg``, without resolving values."""
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # keys(): also a "???" value


def applicable_jobs(jobs: Sequence[Sequence[str]], overrides: Sequence[Override],
                    is_group: Callable[[str], bool],
                    compose: Callable[[list[str]], DictConfig]) -> list[list[str]]:
    """``jobs`` (lists of ``key=value``) without the value overrides their
    group choices do not have, duplicates removed, order kept.

    ``compose(group_overrides)`` builds the config of one combination of
    group choices (once per distinct combination).
    """
    by_key = {o.get_key_element(): o for o in overrides}
    groups = {k for k, o in by_key.items() if is_group(o.key_or_group)}
    # Only plain `key=value` overrides of config values may be dropped.
    values = {k: o.key_or_group for k, o in by_key.items()
              if k not in groups and o.type == OverrideType.CHANGE and o.package is None}

    def key_of(entry: str) -> str:
        return entry.split("=", 1)[0]

    choices_of_job = [tuple(e for e in job if key_of(e) in groups) for job in jobs]
    missing: dict[tuple, set[str]] = {}  # group choices -> value keys their config lacks
    for choices in dict.fromkeys(choices_of_job):
        cfg = compose(list(choices))
        missing[choices] = {k for k, path in values.items() if not has_key(cfg, path)}
    missing_everywhere = set.intersection(*missing.values()) if missing else set()

    kept: dict[tuple, None] = {}
    for job, choices in zip(jobs, choices_of_job):
        drop = missing[choices] - missing_everywhere
        kept.setdefault(tuple(e for e in job if key_of(e) not in drop))
    for choices, keys in missing.items():
        if keys - missing_everywhere:
            log.info("%s: no %s; those jobs run once per remaining setting",
                     " ".join(choices), ", ".join(sorted(keys - missing_everywhere)))
    if len(kept) < len(jobs):
        log.info("%d jobs after dropping settings that do not apply (%d combinations)", len(kept), len(jobs))
    return [list(job) for job in kept]


class XilSweeper(BasicSweeper):
    """The basic sweeper with ``applicable_jobs`` applied to its job list."""

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        jobs = applicable_jobs(
            BasicSweeper.split_arguments(overrides, None)[0], overrides,
            is_group=lambda key: bool(loader.get_group_options(key)),
            compose=lambda choices: loader.load_sweep_config(self.config, choices))
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))


@dataclass
class XilSweeperConf:
    _target_: str = "hydra_plugins.xilsweep_sweeper.xilsweep_sweeper.XilSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="xilsweep", node=XilSweeperConf, provider="xilsweep")
