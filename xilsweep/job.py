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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import xilsweep
from xilsweep.config import (  # importing it registers the config schemas
    GROUPS,
    SUPPLIED,
    defaults,
    registered_class,
    target_path,
)
from xilsweep.correction import UserCorrectedDataset, dotted_validation
from xilsweep.data import Split, XILData
from xilsweep.errors import NonFiniteLossError, SettingError
from xilsweep.files import atomic_torch_save, read_checked, save_state_dict
from xilsweep.losses import Method
from xilsweep.metrics import REFERENCE_KINDS, RELIANCE, reliance_key, shortcut_removed_all
from xilsweep.pretrain import cached_figures
from xilsweep.queries import query_order
from xilsweep.reasons import Explainer, training_images, validation_reliance, view_images
from xilsweep.sampling import MixedBatchSampler
from xilsweep.tracking import METRICS_FILE, EpochRecorder, RunRecorder, round_line, round_tags, write_metrics
from xilsweep.training import FitData, FitResult, Trainer, scores

log = logging.getLogger("xilsweep")
CHECKPOINT_FILE = "checkpoint.pth"
ROUNDS_FILE = "rounds.pth"  # a job of several rounds: the finished rounds, while the job runs
# objective -> what a job returns to the sweeper: the best epoch's clean validation accuracy
# (maximise), or it and the validation dot flip rate (maximise, minimise) for a Pareto search
OBJECTIVES = ("clean", "pareto")
# hparams entry name -> the config key that sets it (a loss's own settings: ``loss.<name>``)
HPARAM_KEYS = {
    "lr": "trainer.lr",
    "loss": "loss",
    "pool_size": "pool.size",
    "seed": "seed",
    "pretrain_seed": "pretrain.seed",
    "correction": "pool.correction",
    "feedback": "pool.feedback",
    "select": "pool.select",
    "rounds": "pool.rounds",
    "k": "sampler.k",
    "batch_size": "sampler.batch_size",
    "optimizer": "trainer.optimizer",
    "stop_on": "trainer.stop_on",
    "n_train": "data.n_train",
    "data": "data",
}


class ConfigError(Exception):
    """A user-caused problem found before any work; printed as one line per problem."""


def registered_target(group: str, node: dict) -> type:
    """The class a group's node names, which must be one registered for the group
    (``xilsweep.config.GROUPS``): a config names classes, it cannot call any function."""
    target = registered_class(group, node.get("_target_"))
    if target is None:
        allowed = ", ".join(target_path(t) for t in GROUPS[group])
        raise ConfigError(f"{group}._target_={node.get('_target_')!r} is not allowed: one of {allowed}")
    return target


def build(cfg: DictConfig, group: str, **supplied):
    """Instantiate a config group, reporting bad values and unknown keys under the group's name."""
    # Resolved first: instantiating the node itself would copy the whole config for its interpolations.
    node = OmegaConf.to_container(cfg[group], resolve=True)
    target = registered_target(group, node)
    settings = defaults(target)
    unknown = [key for key in node if key != "_target_" and key not in settings]
    if unknown:
        allowed = ", ".join(key for key in settings if key not in SUPPLIED)
        raise ConfigError(
            f"{group}.{unknown[0]}={node[unknown[0]]!r} is not allowed: not a setting of {target.__name__} "
            f"(its settings: {allowed})"
        )
    try:
        return instantiate(node, _convert_="all", _execution_whitelist_=target_path(target), **supplied)
    except SettingError as e:
        raise ConfigError(str(e.in_group(group))) from None
    except hydra.errors.InstantiationException as e:
        if isinstance(e.__cause__, SettingError):
            raise ConfigError(str(e.__cause__.in_group(group))) from None
        raise


# Top-level settings besides the config groups; an experiment's own keys are those its
# interpolations read (``best_lr`` in ``trainer.lr: ${best_lr}``).
TOP_LEVEL = ("seed", "save_model", "objective", "run_name")


def unknown_top_level(cfg: DictConfig) -> list[str]:
    """Problems of top-level keys that are neither a group, a setting, nor read by an interpolation."""
    unresolved = json.dumps(OmegaConf.to_container(cfg, resolve=False))
    return [
        f"{key}={cfg[key]!r} is not allowed: not a setting (top-level settings: {', '.join(TOP_LEVEL)}; "
        f"groups: {', '.join(GROUPS)})"
        for key in cfg
        if key not in GROUPS and key not in TOP_LEVEL and "${" + key not in unresolved
    ]


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
    oracle_model: torch.nn.Module | None  # None: the data has no decorrelated training set
    oracle: dict
    pool: UserCorrectedDataset  # after the first round's queries; ``ask`` adds a round's
    round_sizes: list[int]  # the queries of each round (``pool.rounds``)
    select: str  # the query strategy (``pool.select``, ``xilsweep.queries``)
    sampler: MixedBatchSampler
    loss: Method
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
            "pool_size": sum(self.round_sizes),
            "seed": self.seed,
            "pretrain_seed": self.confounded["settings"].get("seed"),
            "correction": self.config["pool"]["correction"],
            "feedback": self.pool.feedback.label,
            "select": self.select,
            "rounds": len(self.round_sizes),
            "k": self.sampler.k_start,
            "batch_size": self.sampler.batch_size,
            "optimizer": self.trainer.optimizer_name,
            "stop_on": self.trainer.stop_on,
            "n_train": len(self.data.train),
            "data": self.data.key,
        }

    def varied_hparams(self, varied: Sequence[str]) -> list[str]:
        """The hparams entry's settings that the config keys in ``varied`` decide: a key itself, or
        the loss's choice, which decides the loss and its weight (the first of its settings: ``lam``,
        the Lagrangian's ``eps``; TensorBoard shows five settings, so not a penalty's constant ``base``)."""
        own = list(self.loss.hparams())
        keys = {**HPARAM_KEYS, **{name: f"loss.{name}" for name in own}}
        weight = own[0] if own and "loss" in varied else None
        return [name for name, key in keys.items() if key in varied or name == weight]

    def monitored_subset(self) -> str:
        """The test images the per-epoch reliance figures are measured on, in words."""
        n, total = self.explainer.monitor_images, len(self.data.test)
        return "whole test set" if n is None or n >= total else f"test subset of {n}"

    def reasons(
        self, model: torch.nn.Module, attributions: bool = True, monitor: bool = False, clean_pred=None
    ) -> dict:
        return self.explainer.reasons(model, self.data, self.confounded_class, attributions, monitor, clean_pred)

    def reference_reasons(self, model: torch.nn.Module | None, reference: dict) -> tuple[dict, dict]:
        """A reference model's figures under this job's explainer, on the whole test set and
        on the monitored subset, cached beside the cached model (``pretrain.cached_figures``);
        none for an absent reference (no oracle)."""
        if model is None:
            return ({f.key: None for f in RELIANCE},) * 2
        explainer = {k: v for k, v in self.config["explainer"].items() if k != "attribution_every"}
        both = cached_figures(
            reference,
            {"explainer": explainer, "figures": reliance_key()},
            lambda: {"full": self.reasons(model), "monitored": self.reasons(model, monitor=True)},
        )
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

    def start_record(self, out_dir: Path, overrides: list[str] | None) -> dict:
        """The record of a job under way: ``running``, with pid and host, so a killed job can be told apart."""
        return {
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "torch_threads": torch.get_num_threads(),
            "run_name": out_dir.name,
            "version": xilsweep.__version__,
            "settings": self.hparams(),
            "method_revision": type(self.loss).revision,
            "config": self.config,
            "overrides": list(overrides or []),
            "data_key": self.data.key,
            "data_hash": self.data.content_hash,
        }

    def record_references(self, record: dict) -> dict[str, dict]:
        """Both references' figures on the whole test set into ``record``; returns them on the monitored subset."""
        monitored = {}
        for kind, model, reference in (
            ("confounded", self.model, self.confounded),  # before the fit, self.model is the confounded model
            ("oracle", self.oracle_model, self.oracle),
        ):
            full, monitored[kind] = self.reference_reasons(model, reference)
            record[kind] = {**reference, **full}
        return monitored

    def epoch_recorder(self, recorder: RunRecorder, monitored: dict[str, dict]) -> EpochRecorder:
        return EpochRecorder(
            recorder,
            measure=lambda attributions: self.reasons(self.model, attributions, monitor=True),
            explain=lambda: self.explainer.views(self.model, self.shown_images()),
            references=monitored,
            attribution_every=self.explainer.attribution_every,
            max_epochs=self.trainer.max_epochs,
            subset=self.monitored_subset(),
            rounds_on=f"whole test set of {len(self.data.test)}" if len(self.round_sizes) > 1 else None,
        )

    def shown_images(self) -> dict[str, torch.Tensor]:
        return view_images(self.data, self.pool.corrected, self.pool.original, self.confounded_class)

    def fine_tune(self, on_epoch: EpochRecorder, checkpoint: Path) -> FitResult:
        torch.manual_seed(self.seed)
        train = self.pool.with_known_masks(self.data.train)  # mask-based losses see only the pool's masks
        data = FitData(train=train, pool=self.pool.corrected, val=self.data.val, sampler=self.sampler)
        return self.trainer.fit(
            self.model, data, self.loss, on_epoch=on_epoch, checkpoint=checkpoint, validate=self.validation()
        )

    def ask(self, n: int, chosen: torch.Tensor | None = None) -> torch.Tensor:
        """The next round's queries added to the pool: chosen by ``select`` on the current model
        (or the ``chosen`` training indices, replaying a recorded round); the dotted validation
        images and the sampler follow the grown pool. Returns the queries' training indices."""
        if chosen is None:
            chosen = self.pool.ask(n, partial(query_order, self.select, self.model, self.explainer))
        else:
            self.pool.add(chosen)
        self.val_dotted = dotted_validation(self.data.val, self.pool.original, self.seed)
        self.sampler.set_sizes(len(self.data.train), len(self.pool))
        return chosen

    def restore_rounds(self, path: Path) -> list[dict]:
        """The rounds a killed job finished (``ROUNDS_FILE``): their records, the pool grown by
        their queries, the model and the method as the last one left them."""
        state = read_checked(path)[1]
        for done in state["rounds"][1:]:
            self.ask(len(done["queries"]), torch.tensor(done["queries"]))
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["method"])
        return state["rounds"]

    def results(self, fit: FitResult, record: dict, epochs: EpochRecorder) -> dict:
        """The finished job's figures: the best epoch's validation figures, the test figures of the
        restored best model, the share of the shortcut removed, timings, the history."""
        test_logits = self.trainer.predict(self.model, self.data.test.x)
        test = scores(test_logits, self.data.test.labels.to(test_logits.device))
        final = self.reasons(self.model, clean_pred=test_logits.argmax(1))
        best = fit.history[fit.best_epoch]
        return {
            "status": "done",
            "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run,
            "best_val_accuracy": fit.best_val_accuracy,
            **{f.val_key: best.get(f.val_key.removeprefix("best_")) for f in RELIANCE if f.val_key},
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            **final,
            "shortcut_removed": shortcut_removed_all(record["confounded"], final, record["oracle"]),
            "reasons_seconds_per_epoch": epochs.mean_reason_seconds(),
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in fit.history if "seconds" in h] or [np.nan])),
            "history": fit.history,
        }

    def run(self, out_dir: Path, overrides: list[str] | None = None, varied: Sequence[str] = ()) -> dict:
        """Fine-tune, record every epoch, evaluate; returns the ``metrics.json`` record.
        ``varied``: the config keys the job's sweep varies, whose settings the hparams entry
        marks as varied (TensorBoard lists them first).

        With several rounds (``pool.rounds``), each round fine-tunes the model the last one
        left with the pool grown by its queries; the record is the last round's, with every
        round's figures under ``rounds``, and a killed job resumes in the round it was in.
        The record says ``running`` until it is replaced by ``done`` or ``failed``.
        """
        clock = {"began": time.perf_counter()}
        checkpoint, rounds_file = out_dir / CHECKPOINT_FILE, out_dir / ROUNDS_FILE
        resuming = self.trainer.resume and (checkpoint.exists() or rounds_file.exists())
        rounds = self.restore_rounds(rounds_file) if resuming and rounds_file.exists() else []
        step = sum(done["epochs_run"] + 1 for done in rounds)  # the TensorBoard step of this round's epoch 0
        resumed = read_checked(checkpoint)[1]["epoch"] if resuming and checkpoint.exists() else None
        if not resuming:
            start_over(out_dir, checkpoint, rounds_file)
        else:
            in_round = f"in round {len(rounds) + 1} " if len(self.round_sizes) > 1 else ""
            log.info("resumed %sfrom epoch %d (%s)", in_round, resumed or 0, checkpoint)
        # On resume, TensorBoard drops the killed run's events from the first step redone on.
        recorder = RunRecorder(out_dir, purge_step=step + (resumed or -1) + 1 if resuming else None)
        record = self.start_record(out_dir, overrides)
        write_metrics(out_dir, record)
        try:
            clock["references_began"] = time.perf_counter()
            monitored = self.record_references(record)
            clock["references_ended"] = time.perf_counter()
            if not resuming:
                recorder.images(training_images(self.data.train, self.pool, self.confounded_class))
            epochs = self.epoch_recorder(recorder, monitored)
            clock["fit_began"] = time.perf_counter()
            for number, size in enumerate(self.round_sizes[len(rounds) :], start=len(rounds)):
                queries = self.pool.index if number == 0 else self.ask(size)
                epochs.begin_round(step, None if number else monitored["confounded"])
                fit = self.fine_tune(epochs, checkpoint)
                clock["fit_ended"] = time.perf_counter()
                result = self.results(fit, record, epochs)
                record.update(result)
                clock["final_reasons"] = time.perf_counter()
                if len(self.round_sizes) > 1:
                    rounds.append(self.round_record(number, queries, result))
                    recorder.round(rounds[-1], {kind: record[kind] for kind in REFERENCE_KINDS})
                    log.info("%s", round_line(rounds[-1], len(self.round_sizes), record))
                    step += fit.epochs_run + 1
                    checkpoint.unlink(missing_ok=True)  # first: a round recorded below never meets its checkpoint
                    state = {"rounds": rounds, "model": self.model.state_dict(), "method": self.loss.state_dict()}
                    atomic_torch_save(state, rounds_file)
            if rounds:
                record["rounds"] = rounds
            recorder.hparams(record["settings"], final_metrics(record), self.varied_hparams(varied), round_tags(rounds))
            if self.save_model:
                save_state_dict(self.model, out_dir / "model.pth")
            record["seconds_by_stage"] = self.stages(clock, epochs)
            for done in (checkpoint, rounds_file):  # the job is complete; model.pth holds the result
                done.unlink(missing_ok=True)
        except Exception as e:
            reason = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
            record.update({"status": "failed", "reason": reason, "traceback": traceback.format_exc()})
            raise
        finally:
            record["seconds"] = time.perf_counter() - clock["began"]
            recorder.close()
            write_metrics(out_dir, record)
        return record

    def round_record(self, number: int, queries: torch.Tensor, result: dict) -> dict:
        """One round's figures (``results`` without the history and timings), with its queries."""
        left_out = ("status", "history", "seconds_per_epoch", "reasons_seconds_per_epoch")
        figures = {key: value for key, value in result.items() if key not in left_out}
        return {"round": number + 1, "corrections": len(self.pool), "queries": queries.tolist(), **figures}

    def stages(self, clock: dict[str, float], epochs: EpochRecorder) -> dict:
        """Where the job's time went, from the moments ``run`` noted."""
        return {
            "assemble": self.assemble_seconds,
            "start": clock["fit_began"] - clock["began"],  # TensorBoard run, sample grids, the references' reasons
            "fit": clock["fit_ended"] - clock["fit_began"],  # the epochs, their evaluation and reason metrics
            "end": time.perf_counter() - clock["fit_ended"],  # test evaluation, final reasons, hparams, weights
            "reasons": sum(
                (
                    clock["references_ended"] - clock["references_began"],
                    *epochs.reason_seconds,
                    clock["final_reasons"] - clock["fit_ended"],
                )
            ),
        }


def start_over(out_dir: Path, checkpoint: Path, rounds_file: Path) -> None:
    """Remove what an unfinished earlier run of the job in ``out_dir`` (its record says so) left
    for this run to add to: its checkpoint and finished rounds, its TensorBoard events, so that
    this run's curves start at epoch 0 alone."""
    saved = [path for path in (checkpoint, rounds_file) if path.exists()]
    left = [*saved, *sorted(out_dir.glob("events.out.tfevents.*"))]
    if not left or not (out_dir / METRICS_FILE).exists():
        return
    log.warning(
        "%s holds an unfinished earlier run of this job: starting over from epoch 0, its %s removed%s",
        out_dir,
        "checkpoint and TensorBoard events" if saved else "TensorBoard events",
        " (trainer.resume=true continues a killed job instead)" if saved else "",
    )
    for path in left:
        path.unlink()


def final_metrics(record: dict) -> dict:
    """The hparams entry's metrics, in the order TensorBoard lists them (showing the first five):
    the clean test accuracy, each reliance figure with its share of the shortcut removed, the
    validation figures at the kept epoch, the references' (``Final/oracle_<figure>``,
    ``Final/confounded_<figure>``: on the whole test set like the corrected model's, while the
    per-epoch ``Oracle/*`` and ``Confounded/*`` lines are on the monitored test subset)."""
    removed = record["shortcut_removed"]
    return {
        "Final/test_accuracy": record["test_accuracy"],
        **{
            tag: value
            for f in RELIANCE
            for tag, value in ((f"Final/{f.key}", record[f.key]), (f"Final/shortcut_removed_{f.key}", removed[f.key]))
        },
        "Final/best_val_accuracy": record["best_val_accuracy"],
        **{f"Final/{f.val_key}": record[f.val_key] for f in RELIANCE if f.val_key},
        **{
            f"Final/{kind}_{key}": record[kind][key]
            for kind in REFERENCE_KINDS
            for key in ("test_accuracy", *(f.key for f in RELIANCE))
        },
    }


@dataclass
class Settings:
    """The objects built from a config's groups, each checked on its own and against the model."""

    data: object  # the data set's settings (``load()`` makes the data)
    model: torch.nn.Module
    loss: Method
    trainer: Trainer
    explainer: Explainer
    pretrain: object
    pool: object  # the pool's settings (``draw()`` makes the pool)
    sampler: MixedBatchSampler


def checked_settings(cfg: DictConfig) -> Settings:
    """Every group built and checked before any data is generated or loaded; every problem
    found is reported, one line each, in one ConfigError."""
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
    built = {group: attempt(group) for group in ("trainer", "loss", "explainer", "pretrain", "pool", "sampler")}
    model = attempt("model", **(data_spec.model_inputs() if data_spec is not None else {}))
    for needs_model in (built["explainer"], built["loss"]):
        if model is not None and needs_model is not None:
            try:
                needs_model.check(model)
            except SettingError as e:
                problems.append(str(e))
    problems += objective_and_stopping_problems(cfg, built["trainer"], built["pool"], built["sampler"], data_spec)
    problems += unknown_top_level(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    return Settings(data=data_spec, model=model, **built)


def loaded_data(settings: Settings) -> XILData:
    """The data, with the pool's size and the sampler checked against it: the problems only
    sizes reveal, found before any model is trained."""
    try:
        data = settings.data.load()
    except SettingError as e:
        raise ConfigError(str(e.in_group("data"))) from None
    try:
        settings.pool.check_size(data.train, data.confounded_class)
    except SettingError as e:
        raise ConfigError(str(e.in_group("pool"))) from None
    sampler = settings.sampler
    try:
        sampler.set_sizes(len(data.train), settings.pool.round_sizes()[0])
    except SettingError as e:  # the only size a user sets here is the pool's
        raise ConfigError(
            str(SettingError("pool.size", settings.pool.size, f"{e.allowed} (sampler.k={sampler.k_start})"))
        ) from None
    return data


def first_pool(settings: Settings, data: XILData, seed: int, model: torch.nn.Module | None) -> UserCorrectedDataset:
    """The pool after the first round's queries, chosen by ``pool.select`` on ``model`` (the
    confounded model; ``random`` reads none)."""
    order = partial(query_order, settings.pool.select, model, settings.explainer)
    return settings.pool.draw(data.train, seed, data.confounded_class, order)


def assemble(cfg: DictConfig) -> Job:
    """Validate every setting and build the job's objects, each once (no output written):
    the settings that need no data first, then those the data's sizes decide."""
    began = time.perf_counter()
    settings = checked_settings(cfg)
    seed_everything(cfg.seed)
    settings.trainer.apply_process_settings()
    data = loaded_data(settings)
    model_settings = OmegaConf.to_container(cfg.model, resolve=True)

    def fresh_model():
        return build(cfg, "model", **data.model_inputs())

    trainer, pretrain = settings.trainer, settings.pretrain
    model, confounded = pretrain.confounded_model(data, fresh_model, model_settings, trainer)
    oracle_model, oracle = pretrain.oracle_model(data, fresh_model, model_settings, trainer)
    pool = first_pool(settings, data, cfg.seed, model)
    return Job(
        seed=cfg.seed,
        save_model=cfg.save_model,
        data=data,
        model=model,
        confounded=confounded,
        oracle_model=oracle_model,
        oracle=oracle,
        pool=pool,
        round_sizes=settings.pool.round_sizes(),
        select=settings.pool.select,
        sampler=settings.sampler,
        loss=settings.loss,
        trainer=trainer,
        explainer=settings.explainer,
        config=resolved_settings(cfg),
        assemble_seconds=time.perf_counter() - began,
        val_dotted=dotted_validation(data.val, pool.original, cfg.seed),
    )


def objective_and_stopping_problems(cfg: DictConfig, trainer, pool_spec, sampler, data_spec) -> list[str]:
    """Problems of the objective and of the stopping score (those other than clean read
    the validation reliance, which the pool's marked confounders make), and of a pool no batch uses."""
    problems = []
    objective = cfg.get("objective", "clean")
    if objective not in OBJECTIVES:
        problems.append(f"objective={objective!r} is not allowed: one of {', '.join(OBJECTIVES)}")
    empty_pool = pool_spec is not None and pool_spec.size == 0
    if sampler is not None and not (empty_pool or sampler.k_start or sampler.k_end):
        problems.append(
            f"sampler.k=0 is not allowed: an integer in [1, batch_size={sampler.batch_size}) with a pool "
            "(with k=0 and k_end=0 no batch holds a corrected sample; pool.size=0 fine-tunes without corrections)"
        )
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
