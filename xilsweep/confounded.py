"""The confounded model: trained once per (data, model, pretraining) setting
and cached as ``model_confounded.pth`` beside the data it was trained on."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from xilsweep.data import XILData
from xilsweep.errors import DataError, require
from xilsweep.files import atomic_torch_save, build_lock, checked_torch_load, digest, read_checked
from xilsweep.training import Trainer, train_confounded

log = logging.getLogger(__name__)


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first_line = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise DataError(f"{path} was saved from a different model ({first_line})") from e


def accuracies(model, data: XILData, trainer: Trainer) -> dict:
    return {f"{name}_accuracy": trainer.evaluate(model, split)["accuracy"]
            for name, split in (("train", data.pretrain_split), ("val", data.val), ("test", data.test),
                                ("test_dotted", data.test_dotted))}


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
    return model, {"settings": {"checkpoint": str(path)}, **accuracies(model, data, trainer), "path": str(path)}


def confounded_model(data: XILData, build_model: Callable[[], torch.nn.Module], model_settings: dict,
                     trainer: Trainer, epochs: int, lr: float, batch_size: int, seed: int):
    """The trained confounded model and its record (accuracies, settings).

    Built on first use; later jobs with the same settings load it. A damaged
    or stale file is rebuilt.
    """
    require(isinstance(epochs, int) and epochs >= 1, "epochs", epochs, "an integer >= 1")
    require(lr > 0, "lr", lr, "a number > 0")
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    settings = {"data": data.key, "model": model_settings, "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "seed": seed, "optimizer": trainer.optimizer_name}
    key = digest(json.dumps(settings, sort_keys=True))[:10]
    path = data.directory / "models" / key / "model_confounded.pth"
    model = build_model()
    with build_lock(path):
        payload = checked_torch_load(path, expect_meta=settings)
        if payload is None:
            log.info("training the confounded model (%d epochs) -> %s", epochs, path)
            torch.manual_seed(seed)
            model = build_model()

            def progress(epoch, m):
                log.info("confounded model epoch %d/%d: loss %.4f, train accuracy %.2f%% (%.1f s)",
                         epoch, epochs, m["loss"], 100 * m["accuracy"], m["seconds"])

            history = train_confounded(model, data.pretrain_split, trainer, epochs, lr, batch_size, seed, progress)
            record = {"settings": settings, "history": history, **accuracies(model, data, trainer)}
            payload = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                       "record": json.dumps(record)}
            atomic_torch_save(payload, path, meta=settings)
    load_weights(model, payload["state_dict"], path)
    record = json.loads(payload["record"])
    record["path"] = str(path)
    return trainer.place(model), record  # on the device, in the training memory format
