"""Hydra entry point: ``python -m xilsweep.run [-m] [overrides]``.

Assembles the job from the config (``xilsweep.job.assemble``), runs it in
Hydra's output folder and returns the objective (``objective``): the best
epoch's clean validation accuracy, or with ``objective=pareto`` the list
[clean validation accuracy, validation dot flip rate] for a two-objective search.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xilsweep.correction import feedback_label
from xilsweep.errors import DataError, NonFiniteLossError
from xilsweep.job import ConfigError, Job, assemble
from xilsweep.lifetime import end_with_sweep
from xilsweep.metrics import RELIANCE
from xilsweep.progress import NEVER_IMPROVED, override_keys, read_plan, readable
from xilsweep.resume import finished_record

log = logging.getLogger("xilsweep")


def shown(value) -> str:
    """A setting as a folder name shows it: a float to 4 significant digits (an Optuna trial's
    λ=12.345678901234567 as 12.35), anything else as written."""
    if isinstance(value, float):
        return str(float(f"{value:.4g}"))
    return str(value)


def run_name(
    lr, loss, lam, pool, seed, correction="zero", feedback="exact", fraction=0.5, radius=1, select="random", rounds=1
) -> str:
    """Folder/run name from the settings a sweep usually varies (values as written, floats
    rounded by ``shown``, unchecked: validation happens in the job, which reports bad values
    clearly); a correction other than the guide's zero fill is named after the pool size, then
    a feedback other than exact (``feedbackwrong``, ``feedbackincomplete0.5``), a query strategy
    other than random (``selectcaipi``) and rounds other than one (``rounds5``)."""
    lam_part = "" if lam is None else f"_lam{shown(lam)}"
    correction_part = "" if correction == "zero" else f"_{correction}"
    feedback_part = "" if feedback == "exact" else f"_feedback{feedback_label(feedback, fraction, radius)}"
    select_part = "" if select == "random" else f"_select{select}"
    rounds_part = "" if rounds == 1 else f"_rounds{rounds}"
    return (
        f"lr{shown(lr)}_loss{loss}{lam_part}_pool{pool}{correction_part}{feedback_part}{select_part}{rounds_part}"
        f"_seed{seed}"
    )


def log_label(mode, output_dir: str) -> str:
    """The job label of every log line (``hydra.job_logging``): in a sweep, whose jobs may run at
    once, ``[<job folder name>]``; nothing in a single run."""
    return f"[{Path(output_dir).name}]" if mode == RunMode.MULTIRUN else ""


OmegaConf.register_resolver("xil_run_name", run_name, replace=True)
OmegaConf.register_resolver("xil_log_label", log_label, replace=True)


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


def job_overrides() -> list[str]:
    """This job's overrides as written (``pretrain.seed=${seed}`` is kept, not resolved)."""
    if not HydraConfig.initialized():
        return []
    return readable(OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))


def sweep_varied(overrides: list[str]) -> list[str]:
    """The config keys this job's sweep varies (its plan's, ``xilsweep.progress``); in a single
    run or a sweep without a readable plan, those the job's own overrides set."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        try:
            varied = read_plan(Path(HydraConfig.get().sweep.dir)).varied
        except DataError:
            varied = None
        if varied is not None:
            return varied
    return override_keys(overrides)


def stopping_line(record: dict, max_epochs: int) -> str:
    """How the fine-tuning ended and which epoch it kept; epoch 0 (the confounded model) is flagged."""
    ran, kept = record["epochs_run"], record["best_epoch"]
    if ran >= max_epochs:
        how = f"ran all {ran} epochs" if ran > 1 else "ran its 1 epoch"
    else:
        how = f"stopped early at epoch {ran} of {max_epochs}"
    return f"{how}, kept epoch {kept}" + (f": {NEVER_IMPROVED}" if kept == 0 else "")


def log_summary(job: Job, record: dict, out_dir: Path) -> None:
    """The finished job's lines: clean test accuracy, the validation figures at the kept epoch,
    the reliance figures on the whole test set, and last how it stopped and where its outputs are."""
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
            "dotted val acc %.2f%%, val dot flip rate %s",
            100 * record["best_val_dotted_accuracy"],
            "n/a" if flip_rate is None else f"{flip_rate:.3f}",
        )
    log.info(
        "reliance on the confounder on the whole test set of %d (%s; oracle floor | confounded ceiling -> "
        "corrected, share of the shortcut removed):",
        len(job.data.test),
        job.explainer.name,
    )
    if "absent" in record["oracle"]:
        log.info("%s", record["oracle"]["absent"])
    for f in RELIANCE:
        figures = (record["oracle"][f.key], record["confounded"][f.key], record[f.key])
        removed = record["shortcut_removed"][f.key]
        log.info(
            "  %-21s %s | %s -> %s  removed %s",
            f.key,
            *(f.text(v) for v in figures),
            "n/a" if removed is None else f"{removed:.3f}",
        )
    log.log(
        logging.WARNING if record["best_epoch"] == 0 else logging.INFO,
        "%s; outputs: %s   (tensorboard --logdir %s)",
        stopping_line(record, job.trainer.max_epochs),
        out_dir,
        out_dir,
    )


def run_job(cfg: DictConfig, out_dir: Path) -> float | list[float]:
    finished = finished_record(cfg, out_dir)
    if finished is not None:
        log.info("job already finished in %s; returning its recorded objective", out_dir)
        return objective_of(finished, cfg.objective)
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
    overrides = job_overrides()
    record = job.run(out_dir, overrides, sweep_varied(overrides))
    log_summary(job, record, out_dir)
    return objective_of(record, cfg.objective)


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if requeued_by_slurm():  # started again by SLURM: continue from the last epoch's checkpoint
        cfg.trainer.resume = True
    end_with_sweep()
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
