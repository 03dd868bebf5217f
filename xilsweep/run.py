"""Hydra entry point: ``python -m xilsweep.run [-m] [overrides]``.

The only module that reads the config. It builds the objects from their
config groups, fine-tunes the confounded model on mixed batches, records the
job in its own folder and returns the objective (best validation accuracy).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import xilsweep
from xilsweep.confounded import confounded_model
from xilsweep.correction import UserCorrectedDataset
from xilsweep.data import XILData
from xilsweep.errors import DataError, NonFiniteLossError, SettingError
from xilsweep.tracking import RunRecorder, write_metrics

log = logging.getLogger("xilsweep")


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: DictConfig) -> Job:
    """Validate every setting and build the job's objects (no output written)."""
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r} is not allowed: an integer")
    trainer = build(cfg, "trainer")
    trainer.apply_threads()
    loss = build(cfg, "loss")
    model_settings = OmegaConf.to_container(cfg.model, resolve=True)
    build(cfg, "model")  # validate the architecture before any data work
    data_spec = build(cfg, "data")
    try:
        data = data_spec.load()
    except SettingError as e:
        raise ConfigError(str(e.in_group("data"))) from None
    if len(data.train) == 0:
        raise ConfigError("data: the training selection is empty")
    sampler = build(cfg, "sampler", n_confounded=len(data.train))
    try:
        pool = UserCorrectedDataset(data.train, sampler.pool_size, sampler.correction, seed=cfg.seed)
    except SettingError as e:
        raise ConfigError(str(e.in_group("sampler"))) from None
    pre = cfg.pretrain
    try:
        model, record = confounded_model(data, lambda: build(cfg, "model"), model_settings, trainer,
                                         pre.epochs, pre.lr, pre.batch_size, pre.seed)
    except SettingError as e:
        raise ConfigError(str(e.in_group("pretrain"))) from None
    return Job(data, model, record, pool, sampler, loss, trainer)


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
    recorder = RunRecorder(out_dir)
    settings = hparam_settings(cfg, job)
    record = {"status": "running", "run_name": name, "version": xilsweep.__version__,
              "settings": settings, "config": OmegaConf.to_container(cfg, resolve=True),
              "overrides": HydraConfig.get().overrides.task if HydraConfig.initialized() else [],
              "data_key": job.data.key, "data_hash": job.data.content_hash,
              "confounded": job.confounded}
    try:
        confounded_split = job.data.train.subset(job.data.train.labels == 1)
        recorder.images({"Images/confounded_samples": confounded_split.x,
                         "Images/corrected_original": job.pool.original.x,
                         "Images/corrected_samples": job.pool.corrected.x})
        max_epochs = job.trainer.max_epochs

        def on_epoch(epoch: int, metrics: dict) -> None:
            recorder.epoch(epoch, metrics)
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
        fit = job.trainer.fit(job.model, job.data.train, job.pool.corrected, job.data.val,
                              job.sampler, job.loss, on_epoch)
        test = job.trainer.evaluate(job.model, job.data.test)
        test_dotted = job.trainer.evaluate(job.model, job.data.test_dotted)
        epoch_seconds = [h["seconds"] for h in fit.history if "seconds" in h]
        record.update({
            "status": "done", "objective": fit.best_val_accuracy, "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run, "best_val_accuracy": fit.best_val_accuracy,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "test_dotted_accuracy": test_dotted["accuracy"],
            "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else None,
            "history": fit.history,
        })
        recorder.hparams(settings, {"Final/best_val_accuracy": fit.best_val_accuracy,
                                    "Final/test_accuracy": test["accuracy"],
                                    "Final/test_dotted_accuracy": test_dotted["accuracy"],
                                    "Final/confounded_test_accuracy": job.confounded["test_accuracy"]})
        if cfg.save_model:
            torch.save({k: v.cpu() for k, v in job.model.state_dict().items()}, out_dir / "model.pth")
    except Exception as e:
        reason = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
        record.update({"status": "failed", "reason": reason, "traceback": traceback.format_exc()})
        raise
    finally:
        record["seconds"] = time.perf_counter() - began
        recorder.close()
        write_metrics(out_dir, record)
    return record


def run_job(cfg: DictConfig, out_dir: Path) -> float:
    seed_everything(cfg.seed)
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
    log.info("outputs: %s   (tensorboard --logdir %s)", out_dir, out_dir)
    return float(record["objective"])


@hydra.main(config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
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
