"""Hydra entry point: ``python -m xilsweep.run [-m] [overrides]``.

The only module that reads the config. It builds the objects from their
config groups, fine-tunes the confounded model on mixed batches, records the
job in its own folder and returns the objective (best validation accuracy).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import xilsweep
from xilsweep.confounded import confounded_model, load_user_checkpoint
from xilsweep.correction import UserCorrectedDataset
from xilsweep.data import XILData
from xilsweep.errors import DataError, NonFiniteLossError, SettingError
from xilsweep.files import read_checked, save_state_dict
from xilsweep.reasons import REASON_TAGS, view_images
from xilsweep.tracking import METRICS_FILE, RunRecorder, write_metrics

log = logging.getLogger("xilsweep")
CHECKPOINT_FILE = "checkpoint.pth"


def run_name(lr, loss, lam, pool, seed) -> str:
    """Folder/run name from the settings a sweep usually varies (values as written,
    unchecked: validation happens in the job, which reports bad values clearly)."""
    lam_part = "" if lam is None else f"_lambda{lam}"
    return f"lr{lr}_loss{loss}{lam_part}_pool{pool}_seed{seed}"


OmegaConf.register_resolver("xil_run_name", run_name, replace=True)


class ConfigError(Exception):
    """A user-caused problem found before any work; printed as one line."""


def build(cfg: DictConfig, group: str, **kwargs):
    """Instantiate a config group, reporting bad values under the group's name."""
    try:
        # Only xilsweep's own classes may be instantiated from a config.
        return instantiate(cfg[group], _convert_="all", _execution_whitelist_="xilsweep.*", **kwargs)
    except SettingError as e:
        raise ConfigError(str(e.in_group(group))) from None
    except hydra.errors.InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, SettingError):
            raise ConfigError(str(cause.in_group(group))) from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"{group}: {cause}") from None
        raise


@dataclass
class Job:
    """Everything one correction job needs, built and validated up front."""

    data: XILData
    model: torch.nn.Module
    confounded: dict
    pool: UserCorrectedDataset
    sampler: object
    loss: object
    trainer: object
    explainer: object
    confounded_class: int | None  # the class the confounder points to (None: spread over all, as in Decoy-MNIST)


def seed_everything(seed: int) -> None:
    """Same config and seed, same numbers (bit-identical on the CPU with the same thread count)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    # = use_deterministic_algorithms(True, warn_only=True), without the import of torch._inductor
    # that costs each job process about 1.5 s (README, "Speed")
    torch.set_deterministic_debug_mode("warn")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: DictConfig) -> Job:
    """Validate every setting and build the job's objects (no output written).

    Settings that need no data are all checked first, and every problem found
    is reported, one line each, before any data is generated or loaded.
    """
    problems: list[str] = []

    def attempt(group: str, **kwargs):
        try:
            return build(cfg, group, **kwargs)
        except ConfigError as e:
            problems.append(str(e))
            return None

    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        problems.append(f"seed={cfg.seed!r} is not allowed: an integer")
    trainer, loss = attempt("trainer"), attempt("loss")
    model_check = attempt("model")  # the architecture, before any data work
    explainer = attempt("explainer")
    if model_check is not None and explainer is not None:
        try:
            explainer.check(model_check)
        except SettingError as e:
            problems.append(str(e))
    attempt("sampler", n_confounded=1)  # its own settings; the data size comes later
    data_spec = attempt("data")
    if problems:
        raise ConfigError("\n".join(problems))
    seed_everything(cfg.seed)
    trainer.apply_threads()
    model_settings = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        data = data_spec.load()
    except SettingError as e:
        raise ConfigError(str(e.in_group("data"))) from None
    # The model's output size follows the data (2 for 08MNIST, 10 for Decoy-MNIST).
    num_classes = data.train.targets.shape[1]
    model_settings["num_classes"] = num_classes
    build_model = partial(build, cfg, "model", num_classes=num_classes)
    sampler = build(cfg, "sampler", n_confounded=len(data.train))
    confounded_class = data_spec.confounded_class
    try:
        pool = UserCorrectedDataset(data.train, sampler.pool_size, sampler.correction, seed=cfg.seed,
                                    confounded_class=confounded_class)
    except SettingError as e:
        raise ConfigError(str(e.in_group("sampler"))) from None
    pre = cfg.pretrain
    try:
        if pre.checkpoint is not None:
            model, record = load_user_checkpoint(pre.checkpoint, build_model, data, trainer)
        else:
            model, record = confounded_model(data, build_model, model_settings, trainer,
                                             pre.epochs, pre.lr, pre.batch_size, pre.seed)
    except SettingError as e:
        raise ConfigError(str(e.in_group("pretrain"))) from None
    return Job(data, model, record, pool, sampler, loss, trainer, explainer, confounded_class)


def hparam_settings(cfg: DictConfig, job: Job) -> dict:
    return {
        "lr": job.trainer.lr, "loss": job.loss.name, **job.loss.hparams(),
        "pool_size": job.sampler.pool_size, "k": job.sampler.k_start, "batch_size": job.sampler.batch_size,
        "correction": job.sampler.correction, "optimizer": job.trainer.optimizer_name,
        "seed": cfg.seed, "n_train": len(job.data.train), "data": job.data.key,
    }


def train_and_record(cfg: DictConfig, job: Job, out_dir: Path, name: str) -> dict:
    """Fine-tune, log every epoch, evaluate; returns the metrics record."""
    began = time.perf_counter()
    checkpoint = out_dir / CHECKPOINT_FILE
    resuming = job.trainer.resume and checkpoint.exists()
    # On resume, TensorBoard drops the killed run's events from the first epoch redone on.
    recorder = RunRecorder(out_dir, purge_step=read_checked(checkpoint)[1]["epoch"] + 1 if resuming else None)
    settings = hparam_settings(cfg, job)
    record = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
              "torch_threads": torch.get_num_threads(),  # 1 per job under hydra/launcher=parallel
              "run_name": name, "version": xilsweep.__version__,
              "settings": settings, "config": OmegaConf.to_container(cfg, resolve=True),
              "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
              "data_key": job.data.key, "data_hash": job.data.content_hash,
              "confounded": job.confounded}
    write_metrics(out_dir, record)  # "running" until replaced; pid and host tell a killed job apart
    try:
        confounded_split = job.data.train.subset(job.data.train.labels == 1)
        if not resuming:
            recorder.images({"Images/confounded_samples": confounded_split.x,
                             "Images/corrected_original": job.pool.original.x,
                             "Images/corrected_samples": job.pool.corrected.x})
        max_epochs = job.trainer.max_epochs
        # Right-for-the-right-reasons metrics and explanation grids, every epoch; before fit,
        # job.model is the confounded model (epoch 0), also when resuming.
        shown = view_images(job.data, job.pool.corrected, job.pool.original, job.confounded_class)
        reasons_of = partial(job.explainer.reasons, data=job.data, confounded_class=job.confounded_class)
        record["confounded"] = {**job.confounded, **reasons_of(job.model)}
        reason_seconds = []

        def on_epoch(epoch: int, metrics: dict) -> None:
            began_reasons = time.perf_counter()
            reasons = record["confounded"] if epoch == 0 else reasons_of(job.model)
            recorder.images({f"Explanations/{view}": x for view, x in job.explainer.views(job.model, shown).items()},
                            step=epoch)
            if epoch > 0:  # epoch 0 reuses the confounded model's metrics
                reason_seconds.append(time.perf_counter() - began_reasons)
            recorder.epoch(epoch, {**metrics, **{tag: reasons[key] for key, tag in REASON_TAGS.items()}})
            if epoch == 0:
                log.info("epoch 0/%d (start): val loss %.4f, val accuracy %.2f%%",
                         max_epochs, metrics["val_loss"], 100 * metrics["val_accuracy"])
            else:
                log.info("epoch %d/%d: train loss %.4f (confounded %.4f, corrected %.4f), "
                         "train accuracy %.2f%%, val loss %.4f, val accuracy %.2f%% (%.1f s)",
                         epoch, max_epochs, metrics["train_loss"], metrics["train_loss_confounded"],
                         metrics["train_loss_corrected"], 100 * metrics["train_accuracy"],
                         metrics["val_loss"], 100 * metrics["val_accuracy"], metrics["seconds"])

        torch.manual_seed(cfg.seed)
        train = job.pool.with_known_masks(job.data.train)  # mask-based losses see only the pool's masks
        fit = job.trainer.fit(job.model, train, job.pool.corrected, job.data.val,
                              job.sampler, job.loss, on_epoch, checkpoint=checkpoint)
        test = job.trainer.evaluate(job.model, job.data.test)
        final_reasons = reasons_of(job.model)  # of the best (restored) model
        epoch_seconds = [h["seconds"] for h in fit.history if "seconds" in h]
        record.update({
            "status": "done", "objective": fit.best_val_accuracy, "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run, "best_val_accuracy": fit.best_val_accuracy,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            **final_reasons,
            "reasons_seconds_per_epoch": float(np.mean(reason_seconds)) if reason_seconds else None,
            "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else None,
            "history": fit.history,
        })
        recorder.hparams(settings, {"Final/best_val_accuracy": fit.best_val_accuracy,
                                    "Final/test_accuracy": test["accuracy"],
                                    **{f"Final/{key}": value for key, value in final_reasons.items()},
                                    "Final/confounded_test_accuracy": job.confounded["test_accuracy"]})
        if cfg.save_model:
            save_state_dict(job.model, out_dir / "model.pth")
        checkpoint.unlink(missing_ok=True)  # the job is complete; model.pth holds the result
    except Exception as e:
        reason = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
        record.update({"status": "failed", "reason": reason, "traceback": traceback.format_exc()})
        raise
    finally:
        record["seconds"] = time.perf_counter() - began
        recorder.close()
        write_metrics(out_dir, record)
    return record


def requeued_by_slurm() -> bool:
    """Whether SLURM is starting this job again: requeued by submitit at its time
    limit, preempted, or requeued with ``scontrol requeue``."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def finished_objective(cfg: DictConfig, out_dir: Path) -> float | None:
    """The objective of a job already finished in ``out_dir``; re-running one
    by accident is refused, ``trainer.resume=true`` returns its result."""
    metrics_file = out_dir / METRICS_FILE
    if not metrics_file.exists():
        return None
    record = json.loads(metrics_file.read_text())
    if record.get("status") != "done":
        return None
    if not cfg.trainer.get("resume", False):
        raise ConfigError(f"{out_dir} already holds a finished job; trainer.resume=true returns its result, "
                          "another hydra.run.dir runs it again")
    log.info("job already finished in %s; returning its recorded objective", out_dir)
    return float(record["objective"])


def run_job(cfg: DictConfig, out_dir: Path) -> float:
    done = finished_objective(cfg, out_dir)
    if done is not None:
        return done
    job = prepare(cfg)
    name = out_dir.name
    log.info("confounded model: train accuracy %.2f%%, clean test accuracy %.2f%% (%s)",
             100 * job.confounded["train_accuracy"], 100 * job.confounded["test_accuracy"],
             job.confounded["path"])
    log.info("fine-tuning %s: %d confounded + %d corrected pool, batches of %d (%d corrected), output %s",
             job.loss.name, len(job.data.train), len(job.pool), job.sampler.batch_size,
             job.sampler.k_start, out_dir)
    record = train_and_record(cfg, job, out_dir, name)
    log.info("clean test accuracy: confounded model %.2f%% -> corrected model %.2f%% "
             "(best val accuracy %.2f%% at epoch %d)", 100 * job.confounded["test_accuracy"],
             100 * record["test_accuracy"], 100 * record["best_val_accuracy"], record["best_epoch"])
    before, after = record["confounded"], record
    log.info("reasons (%s): attribution in mask %s -> %s, wrong-reason score %s -> %s, dot flip rate %s -> %s, "
             "dotted test accuracy %s -> %s", job.explainer.name,
             *(f"{r[key]:.3f}" if r[key] is not None else "n/a" for key in REASON_TAGS for r in (before, after)))
    log.info("outputs: %s   (tensorboard --logdir %s)", out_dir, out_dir)
    return float(record["objective"])


@hydra.main(config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
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
