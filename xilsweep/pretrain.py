"""The two reference models every reliance figure is read against, trained
once per setting and cached beside the data they were trained on.

- The **confounded** model (the ceiling): plain cross-entropy on the
  confounded training split, where every 8 carries the dots.
- The **oracle** (the floor): the same architecture and training budget on
  the same training images with the confounder on a random half of every
  class. It has seen the dots but had no reason to use them, so dotted images
  are not foreign to it (a model that never saw a dot is a poorer floor).

Both are keyed by every setting their training reads (data, model, and all
of ``Pretraining``'s fields), so a sweep over any of them trains new models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from xilsweep.data import Split, XILData
from xilsweep.errors import DataError, require
from xilsweep.files import (
    atomic_torch_save,
    atomic_write_checked_json,
    build_lock,
    checked_json_load,
    checked_torch_load,
    digest,
    read_checked,
)
from xilsweep.training import Trainer, train_confounded

log = logging.getLogger(__name__)


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first_line = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise DataError(f"{path} was saved from a different model ({first_line})") from e


SPLITS_EVALUATED = ("train", "val", "test", "test_dotted")  # a reference's accuracies
NO_ORACLE = (
    "no oracle: the data set has no decorrelated training set (train_decorrelated), so the reliance "
    "figures are read against the confounded model alone and no share of the shortcut removed is computed"
)


def accuracies(model, data: XILData, trainer: Trainer, train: Split) -> dict:
    splits = dict(zip(SPLITS_EVALUATED, (train, data.val, data.test, data.test_dotted), strict=True))
    return {f"{name}_accuracy": trainer.evaluate(model, split)["accuracy"] for name, split in splits.items()}


@dataclass
class Pretraining:
    """How the reference models are trained (config group ``pretrain``): a
    fixed number of epochs of plain cross-entropy with their own optimiser
    settings (no validation-based stopping: the clean validation set must not
    steer the confounded model away from the shortcut). ``checkpoint`` is a
    confounded model of the user's own, used instead of training one."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    checkpoint: str | None = None

    def __post_init__(self):
        require(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(
            isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"
        )
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", self.seed, "an integer")
        self.trainer()  # the optimiser settings, checked as the fine-tuning trainer checks its own

    def trainer(self, device: str = "cpu") -> Trainer:
        return Trainer(
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            device=device,
        )

    def settings(self) -> dict:
        settings = asdict(self)
        del settings["checkpoint"]
        return settings

    def reference_model(
        self,
        kind: str,
        data: XILData,
        build_model: Callable[[], torch.nn.Module],
        model_settings: dict,
        trainer: Trainer,
    ):
        """The trained ``kind`` model (confounded or oracle) and its record.

        Built on first use; later jobs with the same settings load it. A
        damaged or stale file is rebuilt; parallel jobs wait for one build.
        """
        split = data.pretrain_split if kind == "confounded" else data.decorrelated_train
        settings = {"kind": kind, "data": data.key, "model": model_settings, **self.settings()}
        key = digest(json.dumps(settings, sort_keys=True))[:10]
        path = data.directory / "models" / key / f"model_{kind}.pth"
        model = build_model()
        with build_lock(path):
            payload = checked_torch_load(path, expect_meta=settings)
            if payload is None:
                log.info("training the %s model (%d epochs) -> %s", kind, self.epochs, path)
                torch.manual_seed(self.seed)
                model = build_model()

                def progress(epoch, m):
                    log.info(
                        "%s model epoch %d/%d: loss %.4f, train accuracy %.2f%% (%.1f s)",
                        kind,
                        epoch,
                        self.epochs,
                        m["loss"],
                        100 * m["accuracy"],
                        m["seconds"],
                    )

                history = train_confounded(
                    model,
                    split,
                    self.trainer(str(trainer.device)),
                    self.epochs,
                    self.lr,
                    self.batch_size,
                    self.seed,
                    progress,
                )
                record = {"settings": settings, "history": history, **accuracies(model, data, trainer, split)}
                payload = {
                    "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "record": json.dumps(record),
                }
                atomic_torch_save(payload, path, meta=settings)
        load_weights(model, payload["state_dict"], path)
        record = json.loads(payload["record"])
        record["path"] = str(path)
        return trainer.place(model), record  # on the device, in the training memory format

    def confounded_model(self, data: XILData, build_model, model_settings: dict, trainer: Trainer):
        """The model fine-tuning starts from: the user's ``checkpoint`` or the cached confounded model."""
        if self.checkpoint is None:
            return self.reference_model("confounded", data, build_model, model_settings, trainer)
        return load_user_checkpoint(self.checkpoint, build_model, data, trainer)

    def oracle_model(self, data: XILData, build_model, model_settings: dict, trainer: Trainer):
        """The oracle and its record; without a decorrelated training set none (the model is
        None, the record says why and holds no figures)."""
        if not data.has_oracle:
            return None, {"absent": NO_ORACLE, **{f"{split}_accuracy": None for split in SPLITS_EVALUATED}}
        return self.reference_model("oracle", data, build_model, model_settings, trainer)


def cached_figures(reference: dict, meta: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``, a reference model's figures under the settings ``meta``, cached
    (checksummed) beside the cached model: every job of a sweep needs them. A damaged or
    stale file is recomputed; a user's own checkpoint gets nothing written beside it."""
    if "checkpoint" in reference["settings"]:
        return compute()
    path = Path(reference["path"]).with_name(f"reasons_{digest(json.dumps(meta, sort_keys=True))[:10]}.json")
    figures = checked_json_load(path, meta)
    if figures is None:
        figures = compute()
        try:
            atomic_write_checked_json(figures, path, meta)
        except DataError as e:  # a read-only data root: the figures are recomputed by every job
            log.warning("%s; the reference figures are not cached", e)
    return figures


def load_user_checkpoint(path: str, build_model: Callable[[], torch.nn.Module], data: XILData, trainer: Trainer):
    """A confounded model the user brings (``pretrain.checkpoint``): a plain
    state dict, or a file written by xilsweep."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pretrain.checkpoint={str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"pretrain.checkpoint={str(path)!r} is unreadable (truncated or corrupt): {e}") from e
    if isinstance(state, dict) and set(state) == {"meta", "payload", "digest"}:
        state = read_checked(path)[1]["state_dict"]
    model = build_model()
    load_weights(model, state, path)
    trainer.place(model)
    return model, {
        "settings": {"checkpoint": str(path)},
        **accuracies(model, data, trainer, data.pretrain_split),
        "path": str(path),
    }
