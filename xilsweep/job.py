"""One correction job: ``assemble`` turns a config into a validated ``Job``
(every object built once); ``Job.run`` fine-tunes the confounded model on
mixed batches and records everything into the job's folder.

Everything that needs a job (the Hydra entry point, ``xilsweep.explain``,
the benchmark, the tests) goes through ``assemble``.
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import xilsweep
import xilsweep.config  # noqa: F401 (registers the config schemas Hydra composes from)
from xilsweep.correction import UserCorrectedDataset, dotted_validation
from xilsweep.data import Split, XILData
from xilsweep.errors import NonFiniteLossError, SettingError
from xilsweep.files import atomic_write_json, digest, read_checked, save_state_dict
from xilsweep.losses import XILLoss
from xilsweep.reasons import REASON_TAGS, Explainer, shortcut_removed_all, validation_reliance
from xilsweep.sampling import MixedBatchSampler
from xilsweep.tracking import EpochRecorder, RunRecorder, write_metrics
from xilsweep.training import Trainer, scores

log = logging.getLogger("xilsweep")
CHECKPOINT_FILE = "checkpoint.pth"
REFERENCES = ("confounded", "oracle")
# objective -> what a job returns to the sweeper: the best epoch's clean validation accuracy
# (maximise), or it and the validation dot flip rate (maximise, minimise) for a Pareto search
OBJECTIVES = ("clean", "pareto")


class ConfigError(Exception):
    """A user-caused problem found before any work; printed as one line per problem."""


def build(cfg: DictConfig, group: str, **supplied):
    """Instantiate a config group, reporting bad values under the group's name."""
    try:
        # Resolved first: instantiating the node itself would copy the whole config for its interpolations.
        node = OmegaConf.to_container(cfg[group], resolve=True)
        # Only xilsweep's own classes may be instantiated from a config.
        return instantiate(node, _convert_="all", _execution_whitelist_="xilsweep.*", **supplied)
    except SettingError as e:
        raise ConfigError(str(e.in_group(group))) from None
    except hydra.errors.InstantiationException as e:
        if isinstance(e.__cause__, SettingError):
            raise ConfigError(str(e.__cause__.in_group(group))) from None
        if isinstance(e.__cause__, TypeError):
            raise ConfigError(f"{group}: {e.__cause__}") from None
        raise


def seed_everything(seed: int) -> None:
    """Same config and seed, same numbers (bit-identical on the CPU with the same thread count)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    # = use_deterministic_algorithms(True, warn_only=True), without importing torch._inductor
    torch.set_deterministic_debug_mode("warn")
    # which would also fill every new tensor with NaN, a debugging aid that costs a pass over memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Job:
    """Everything one correction job needs, built and validated up front."""

    seed: int
    save_model: bool
    data: XILData
    model: torch.nn.Module  # the confounded model, fine-tuned in place into the corrected one
    confounded: dict  # the confounded model's record (accuracies, settings, cache path)
    oracle_model: torch.nn.Module
    oracle: dict
    pool: UserCorrectedDataset
    sampler: MixedBatchSampler
    loss: XILLoss
    trainer: Trainer
    explainer: Explainer
    config: dict  # the resolved config, kept in metrics.json
    assemble_seconds: float = 0.0
    val_dotted: Split | None = None  # the validation images with the pool's confounders (None: empty pool)

    @property
    def confounded_class(self) -> int | None:
        return self.data.confounded_class

    def hparams(self) -> dict:
        """The settings of the hparams entry: those a sweep usually varies first, constants after."""
        return {
            "lr": self.trainer.lr,
            "loss": self.loss.name,
            **self.loss.hparams(),
            "pool_size": len(self.pool),
            "seed": self.seed,
            "pretrain_seed": self.confounded["settings"].get("seed"),
            "correction": self.config["pool"]["correction"],
            "k": self.sampler.k_start,
            "batch_size": self.sampler.batch_size,
            "optimizer": self.trainer.optimizer_name,
            "stop_on": self.trainer.stop_on,
            "n_train": len(self.data.train),
            "data": self.data.key,
        }

    def reasons(
        self, model: torch.nn.Module, attributions: bool = True, monitor: bool = False, clean_pred=None
    ) -> dict:
        return self.explainer.reasons(model, self.data, self.confounded_class, attributions, monitor, clean_pred)

    def reference_reasons(self, model: torch.nn.Module, reference: dict) -> tuple[dict, dict]:
        """A reference model's reasons under this job's explainer, on the whole
        test set and on the monitored subset, cached beside the cached model:
        every job of a sweep needs them. A user's own checkpoint is not written beside."""

        def compute() -> dict:
            return {"full": self.reasons(model), "monitored": self.reasons(model, monitor=True)}

        if "checkpoint" in reference["settings"]:
            both = compute()
        else:
            settings = {k: v for k, v in self.config["explainer"].items() if k != "attribution_every"}
            name = f"reasons_{digest(json.dumps(settings, sort_keys=True))[:10]}.json"
            path = Path(reference["path"]).with_name(name)
            if path.exists():
                both = json.loads(path.read_text())
            else:
                both = compute()
                atomic_write_json(both, path)
        return both["full"], both["monitored"]

    def validation(self):
        """``validate(model)`` of the fit: the reliance figures on the dotted validation
        images (validation data only; the test set stays unseen until the end); None
        without a pool."""
        if self.val_dotted is None:
            return None
        device = self.trainer.device
        return partial(
            validation_reliance,
            val=self.data.val.to(device),
            val_dotted=self.val_dotted.to(device),
            confounded_class=self.confounded_class,
        )

    def run(self, out_dir: Path, overrides: list[str] | None = None) -> dict:
        """Fine-tune, record every epoch, evaluate; returns the ``metrics.json`` record.

        The record says ``running`` (with pid and host, so a killed job can be
        told apart) until it is replaced by ``done`` or ``failed``.
        """
        began = time.perf_counter()
        checkpoint = out_dir / CHECKPOINT_FILE
        resuming = self.trainer.resume and checkpoint.exists()
        # On resume, TensorBoard drops the killed run's events from the first epoch redone on.
        recorder = RunRecorder(out_dir, purge_step=read_checked(checkpoint)[1]["epoch"] + 1 if resuming else None)
        record = {
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "torch_threads": torch.get_num_threads(),
            "run_name": out_dir.name,
            "version": xilsweep.__version__,
            "settings": self.hparams(),
            "config": self.config,
            "overrides": list(overrides or []),
            "data_key": self.data.key,
            "data_hash": self.data.content_hash,
        }
        write_metrics(out_dir, record)
        try:
            # Before fit, self.model is the confounded model (epoch 0), also when resuming.
            started = time.perf_counter()
            confounded, confounded_monitored = self.reference_reasons(self.model, self.confounded)
            oracle, oracle_monitored = self.reference_reasons(self.oracle_model, self.oracle)
            references_seconds = time.perf_counter() - started
            record["confounded"], record["oracle"] = {**self.confounded, **confounded}, {**self.oracle, **oracle}
            epochs = EpochRecorder(recorder, self, confounded_monitored, oracle_monitored, resuming)
            torch.manual_seed(self.seed)
            fit_began = time.perf_counter()
            train = self.pool.with_known_masks(self.data.train)  # mask-based losses see only the pool's masks
            fit = self.trainer.fit(
                self.model,
                train=train,
                pool=self.pool.corrected,
                val=self.data.val,
                sampler=self.sampler,
                loss_fn=self.loss,
                on_epoch=epochs,
                checkpoint=checkpoint,
                validate=self.validation(),
            )
            fit_ended = time.perf_counter()
            test_logits = self.trainer.predict(self.model, self.data.test.x)
            test = scores(test_logits, self.data.test.labels.to(test_logits.device))
            final = self.reasons(self.model, clean_pred=test_logits.argmax(1))  # of the best (restored) model
            final_reasons_seconds = time.perf_counter() - fit_ended
            record.update(
                {
                    "status": "done",
                    "best_epoch": fit.best_epoch,
                    "epochs_run": fit.epochs_run,
                    "best_val_accuracy": fit.best_val_accuracy,
                    "best_val_dotted_accuracy": fit.history[fit.best_epoch].get("val_dotted_accuracy"),
                    "best_val_dot_flip_rate": fit.history[fit.best_epoch].get("val_dot_flip_rate"),
                    "test_accuracy": test["accuracy"],
                    "test_loss": test["loss"],
                    **final,
                    "shortcut_removed": shortcut_removed_all(record["confounded"], final, record["oracle"]),
                    "reasons_seconds_per_epoch": epochs.mean_reason_seconds(),
                    "seconds_per_epoch": float(
                        np.mean([h["seconds"] for h in fit.history if "seconds" in h] or [np.nan])
                    ),
                    "history": fit.history,
                }
            )
            recorder.hparams(record["settings"], final_metrics(record))
            if self.save_model:
                save_state_dict(self.model, out_dir / "model.pth")
            record["seconds_by_stage"] = {  # where the job's time went
                "assemble": self.assemble_seconds,
                "start": fit_began - began,  # TensorBoard run, sample grids, the references' reasons
                "fit": fit_ended - fit_began,  # the epochs, their evaluation and reason metrics included
                "end": time.perf_counter() - fit_ended,  # test evaluation, final reasons, hparams, weights
                "reasons": references_seconds + sum(epochs.reason_seconds) + final_reasons_seconds,
            }
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


def final_metrics(record: dict) -> dict:
    """The hparams entry's metrics: the corrected model's, the share of the shortcut removed, the references'."""
    return {
        "Final/best_val_accuracy": record["best_val_accuracy"],
        "Final/best_val_dotted_accuracy": record["best_val_dotted_accuracy"],
        "Final/best_val_dot_flip_rate": record["best_val_dot_flip_rate"],
        "Final/test_accuracy": record["test_accuracy"],
        **{f"Final/{key}": record[key] for key in REASON_TAGS},
        **{f"Final/shortcut_removed_{key}": value for key, value in record["shortcut_removed"].items()},
        **{
            f"{kind.title()}/{key}": record[kind][key] for kind in REFERENCES for key in ("test_accuracy", *REASON_TAGS)
        },
    }


def assemble(cfg: DictConfig) -> Job:
    """Validate every setting and build the job's objects, each once (no output written).

    Settings that need no data are checked first, and every problem found is
    reported, one line each, before any data is generated or loaded; the pool
    and the sampler, which depend on the data's sizes, are checked next.
    """
    began = time.perf_counter()
    problems: list[str] = []

    def attempt(group: str, **supplied):
        try:
            return build(cfg, group, **supplied)
        except ConfigError as e:
            problems.append(str(e))
            return None

    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):  # other groups read it: stop here
        raise ConfigError(f"seed={cfg.seed!r} is not allowed: an integer")
    data_spec = attempt("data")
    num_classes = data_spec.num_classes if data_spec is not None else 2
    trainer, loss, explainer, pretrain = (attempt(group) for group in ("trainer", "loss", "explainer", "pretrain"))
    model = attempt("model", num_classes=num_classes)
    pool_spec, sampler = attempt("pool"), attempt("sampler")
    for needs_model in (explainer, loss):
        if model is not None and needs_model is not None:
            try:
                needs_model.check(model)
            except SettingError as e:
                problems.append(str(e))
    problems += objective_and_stopping_problems(cfg, trainer, pool_spec, data_spec)
    if problems:
        raise ConfigError("\n".join(problems))
    seed_everything(cfg.seed)
    trainer.apply_process_settings()
    try:
        data = data_spec.load()
    except SettingError as e:
        raise ConfigError(str(e.in_group("data"))) from None
    try:
        pool = pool_spec.draw(data.train, cfg.seed, data.confounded_class)
    except SettingError as e:
        raise ConfigError(str(e.in_group("pool"))) from None
    try:
        sampler.set_sizes(len(data.train), len(pool))
    except SettingError as e:  # the only size a user sets here is the pool's
        raise ConfigError(
            str(SettingError("pool.size", len(pool), f"{e.allowed} (sampler.k={sampler.k_start})"))
        ) from None

    model_settings = OmegaConf.to_container(cfg.model, resolve=True)

    def fresh_model():
        return build(cfg, "model", num_classes=num_classes)

    val_dotted = dotted_validation(data.val, pool.original, cfg.seed)
    model, confounded = pretrain.confounded_model(data, fresh_model, model_settings, trainer)
    oracle_model, oracle = pretrain.oracle_model(data, fresh_model, model_settings, trainer)
    return Job(
        seed=cfg.seed,
        save_model=cfg.save_model,
        data=data,
        model=model,
        confounded=confounded,
        oracle_model=oracle_model,
        oracle=oracle,
        pool=pool,
        sampler=sampler,
        loss=loss,
        trainer=trainer,
        explainer=explainer,
        config=resolved_settings(cfg),
        assemble_seconds=time.perf_counter() - began,
        val_dotted=val_dotted,
    )


def objective_and_stopping_problems(cfg: DictConfig, trainer, pool_spec, data_spec) -> list[str]:
    """Problems of the objective and of the stopping score; those other than clean read
    the validation reliance, which the pool's marked confounders make."""
    problems = []
    objective = cfg.get("objective", "clean")
    if objective not in OBJECTIVES:
        problems.append(f"objective={objective!r} is not allowed: one of {', '.join(OBJECTIVES)}")
    empty_pool = pool_spec is not None and pool_spec.size == 0
    if trainer is not None and trainer.stop_on != "clean" and empty_pool:
        problems.append(
            f"trainer.stop_on={trainer.stop_on!r} is not allowed: clean with pool.size=0 "
            "(the dotted validation images are made from the pool)"
        )
    if objective == "pareto" and empty_pool:
        problems.append("objective='pareto' is not allowed: clean with pool.size=0 (no validation flip rate)")
    if objective == "pareto" and data_spec is not None and data_spec.confounded_class is None:
        problems.append(
            f"objective='pareto' is not allowed: clean with {type(data_spec).__name__} "
            "(no confounded class, so no dot flip rate)"
        )
    return problems


def resolved_settings(cfg: DictConfig) -> dict:
    """The job's settings with every interpolation resolved; ``run_name`` (a
    folder name read from Hydra's runtime) is left out, so a config composed
    outside a Hydra run resolves too."""
    settings = OmegaConf.to_container(cfg, resolve=False)
    settings.pop("run_name", None)
    return OmegaConf.to_container(OmegaConf.create(settings), resolve=True)
