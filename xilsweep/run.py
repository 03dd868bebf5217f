"""Hydra entry point: ``python -m xilsweep.run [-m] [overrides]``.

Assembles the job from the config (``xilsweep.job.assemble``), runs it in
Hydra's output folder and returns the objective (``objective``): the best
epoch's clean validation accuracy, or with ``objective=pareto`` the list
[clean validation accuracy, validation dot flip rate] for a two-objective search.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xilsweep.errors import DataError, NonFiniteLossError
from xilsweep.job import ConfigError, assemble
from xilsweep.reasons import REASON_TAGS
from xilsweep.tracking import METRICS_FILE

log = logging.getLogger("xilsweep")


def run_name(lr, loss, lam, pool, seed, correction="zero") -> str:
    """Folder/run name from the settings a sweep usually varies (values as written,
    unchecked: validation happens in the job, which reports bad values clearly);
    a correction other than the guide's zero fill is named after the pool size."""
    lam_part = "" if lam is None else f"_lambda{lam}"
    correction_part = "" if correction == "zero" else f"_{correction}"
    return f"lr{lr}_loss{loss}{lam_part}_pool{pool}{correction_part}_seed{seed}"


OmegaConf.register_resolver("xil_run_name", run_name, replace=True)


def requeued_by_slurm() -> bool:
    """Whether SLURM is starting this job again: requeued by submitit at its time
    limit, preempted, or requeued with ``scontrol requeue``."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def objective_of(record: dict, objective: str) -> float | list[float]:
    """What the sweeper optimises, from a finished job's record; a missing flip
    rate (no eligible validation image) is NaN, which Optuna records as a failed trial."""
    accuracy = float(record["best_val_accuracy"])
    if objective == "clean":
        return accuracy
    flip_rate = record.get("best_val_dot_flip_rate")  # absent from jobs run before it existed
    return [accuracy, math.nan if flip_rate is None else float(flip_rate)]


def finished_objective(cfg: DictConfig, out_dir: Path) -> float | list[float] | None:
    """The objective of a job already finished in ``out_dir``; re-running one
    by accident is refused, ``trainer.resume=true`` returns its result."""
    metrics_file = out_dir / METRICS_FILE
    if not metrics_file.exists():
        return None
    record = json.loads(metrics_file.read_text())
    if record.get("status") != "done":
        return None
    if not cfg.trainer.get("resume", False):
        raise ConfigError(
            f"{out_dir} already holds a finished job; trainer.resume=true returns its result, "
            "another hydra.run.dir runs it again"
        )
    log.info("job already finished in %s; returning its recorded objective", out_dir)
    return objective_of(record, cfg.objective)


def run_job(cfg: DictConfig, out_dir: Path) -> float | list[float]:
    done = finished_objective(cfg, out_dir)
    if done is not None:
        return done
    job = assemble(cfg)
    log.info(
        "confounded model: train accuracy %.2f%%, clean test accuracy %.2f%% (%s)",
        100 * job.confounded["train_accuracy"],
        100 * job.confounded["test_accuracy"],
        job.confounded["path"],
    )
    log.info(
        "fine-tuning %s: %d confounded + %d corrected pool, batches of %d (%d corrected), output %s",
        job.loss.name,
        len(job.data.train),
        len(job.pool),
        job.sampler.batch_size,
        job.sampler.k_start,
        out_dir,
    )
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    record = job.run(out_dir, overrides)
    log.info(
        "clean test accuracy: confounded model %.2f%% -> corrected model %.2f%% (best val accuracy %.2f%% at epoch %d)",
        100 * job.confounded["test_accuracy"],
        100 * record["test_accuracy"],
        100 * record["best_val_accuracy"],
        record["best_epoch"],
    )
    if record["best_val_dotted_accuracy"] is not None:
        flip_rate = record.get("best_val_dot_flip_rate")  # absent from jobs run before it existed
        log.info(
            "validation reliance at that epoch (the pool's confounders pasted onto the validation images): "
            "dotted val accuracy %.2f%%, val dot flip rate %s",
            100 * record["best_val_dotted_accuracy"],
            "n/a" if flip_rate is None else f"{flip_rate:.3f}",
        )
    log.info(
        "reliance on the confounder (%s; oracle floor | confounded ceiling -> corrected, share of the "
        "shortcut removed):",
        job.explainer.name,
    )
    for key in REASON_TAGS:
        figures = (record["oracle"][key], record["confounded"][key], record[key], record["shortcut_removed"][key])
        log.info("  %-21s %s | %s -> %s  removed %s", key, *(f"{v:.3f}" if v is not None else "n/a" for v in figures))
    log.info("outputs: %s   (tensorboard --logdir %s)", out_dir, out_dir)
    return objective_of(record, cfg.objective)


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if requeued_by_slurm():  # started again by SLURM: continue from the last epoch's checkpoint
        cfg.trainer.resume = True
    try:
        return run_job(cfg, out_dir)
    except (ConfigError, DataError, NonFiniteLossError) as e:
        # One clear line; a single run exits with it, a sweep records the job as failed and goes on.
        log.error("%s", e)
        if HydraConfig.get().mode == RunMode.RUN:
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
