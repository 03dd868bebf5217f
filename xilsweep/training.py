"""Training loop on in-memory tensors: train_one_epoch, evaluate,
fit_until_early_stopping, and the Trainer that holds their settings."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xilsweep.data import Split
from xilsweep.errors import NonFiniteLossError, require, require_choice
from xilsweep.files import atomic_torch_save, read_checked
from xilsweep.losses import BaselineImbalancedLoss, XILLoss, as_labels
from xilsweep.sampling import MixedBatchSampler, create_is_user_corrected_mask

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")


def clean_score(metrics: dict) -> float:
    return metrics["val_accuracy"]


def dotted_score(metrics: dict) -> float:
    return metrics["val_dotted_accuracy"]


def mean_score(metrics: dict) -> float:
    # Same units, equal weight: a point of dotted accuracy is worth a point of clean accuracy.
    return (metrics["val_accuracy"] + metrics["val_dotted_accuracy"]) / 2


# trainer.stop_on -> the epoch's validation score that early stopping maximises
STOP_SCORES = {"clean": clean_score, "dotted": dotted_score, "both": mean_score}


def concat(a: Split, b: Split) -> Split:
    return Split(torch.cat([a.x, b.x]), torch.cat([a.targets, b.targets]), torch.cat([a.mask, b.mask]))


def train_one_epoch(
    model, data: Split, batches, k: int, loss_fn: XILLoss, optimizer, grad_clip: float | None = None
) -> dict:
    """One pass over ``batches`` (index tensors into ``data``, the last ``k`` of
    each batch corrected). Returns epoch means; raises on a non-finite loss."""
    model.train()
    device = data.x.device
    sums = torch.zeros(4, device=device)  # total, confounded, corrected, correct predictions
    n_seen = 0
    own_step = getattr(optimizer, "train_step", None)  # a loss's own update rule, see XILLoss.wrap_optimizer
    for index in batches:
        index = index.to(device, non_blocking=True)
        x, targets, mask = data.x[index], data.targets[index], data.mask[index]
        is_corrected = create_is_user_corrected_mask(len(index), k, device)
        if own_step:
            logits, (total, confounded, corrected) = own_step(model, x, targets, is_corrected, mask)
        else:
            logits, (total, confounded, corrected) = loss_fn.batch_loss(model, x, targets, is_corrected, mask)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        hits = (logits.detach().argmax(dim=1) == as_labels(targets)).sum()
        sums += torch.stack([total.detach(), confounded.detach(), corrected.detach(), hits.float()])
        n_seen += len(index)
    return epoch_means(sums.tolist(), len(batches), n_seen)  # one device sync per epoch


def epoch_means(sums: list[float], n_batches: int, n_seen: int) -> dict:
    """Epoch metrics from summed (total, confounded, corrected, hits); raises on a non-finite loss."""
    total, confounded, corrected, hits = sums
    n_batches = max(n_batches, 1)
    if not math.isfinite(total):
        raise NonFiniteLossError(f"training loss became {total}: lower trainer.lr or set trainer.grad_clip (e.g. 1.0)")
    return {
        "loss": total / n_batches,
        "loss_confounded": confounded / n_batches,
        "loss_corrected": corrected / n_batches,
        "accuracy": hits / max(n_seen, 1),
    }


# Images per evaluation pass: small batches stay in the CPU caches (bench/speed.py measures the sizes).
EVAL_BATCH_SIZE = 128


@torch.inference_mode()
def predict_logits(model, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in x.split(batch_size)])


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy and accuracy of ``logits`` against ``labels``."""
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return {"loss": loss, "accuracy": (logits.argmax(dim=1) == labels).float().mean().item()}


def evaluate(model, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on ``split``."""
    return scores(predict_logits(model, split.x, batch_size), split.labels)


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system.

    Every batch allocates activations and gradients of the same sizes; by default
    the larger ones come fresh from the system each time and their first write
    faults every page in (docs/speed.md). A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


@dataclass
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def fit_until_early_stopping(
    model,
    train: Split,
    pool: Split,
    val: Split,
    sampler: MixedBatchSampler,
    loss_fn: XILLoss,
    optimizer,
    max_epochs: int,
    patience: int,
    grad_clip: float | None = None,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    score: Callable[[dict], float] = clean_score,
) -> FitResult:
    """Train until the epoch's ``score`` (default: validation accuracy) has not
    improved for ``patience`` epochs (ties broken by lower validation loss), then
    restore the best weights. ``validate(model)`` adds further validation metrics
    to every epoch's (the score may read them).

    Epoch 0 is the starting model, so a fine-tuning that never beats it on
    validation returns it unchanged. ``on_epoch(epoch, metrics)`` is called
    after every epoch run here, epoch 0 included.

    With ``checkpoint``, the whole training state is saved there (atomically)
    after every epoch; with ``resume`` too, training continues from it. Batch
    order depends only on (seed, epoch) and the RNG state is saved, so a
    resumed run ends exactly where an uninterrupted one would.
    """
    optimizer = loss_fn.wrap_optimizer(optimizer, grad_clip)
    data = concat(train, pool)
    state = read_checked(checkpoint)[1] if resume and checkpoint and Path(checkpoint).exists() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loss_fn.load_state_dict(state["loss"])
        torch.set_rng_state(state["rng"])
        best, best_epoch, best_state = tuple(state["best"]), state["best_epoch"], state["best_model"]
        history, first_epoch = state["history"], state["epoch"] + 1
    else:
        start = evaluate(model, val, eval_batch_size)
        history = [{"epoch": 0, "val_loss": start["loss"], "val_accuracy": start["accuracy"]}]
        history[0].update(validate(model) if validate else {})
        best = (score(history[0]), -start["loss"])
        best_state, best_epoch, first_epoch = copy.deepcopy(model.state_dict()), 0, 1
        if on_epoch:
            on_epoch(0, history[0])
    epoch = first_epoch - 1
    while epoch < max_epochs and epoch - best_epoch < patience:
        epoch += 1
        began = time.perf_counter()
        sampler.set_epoch(epoch - 1)
        k = sampler.k
        train_metrics = train_one_epoch(model, data, sampler.batches(epoch - 1), k, loss_fn, optimizer, grad_clip)
        val_metrics = evaluate(model, val, eval_batch_size)
        metrics = {
            "epoch": epoch,
            **{f"train_{n}": v for n, v in train_metrics.items()},
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            **(validate(model) if validate else {}),
            "k": k,
            **loss_fn.epoch_metrics(),
            "seconds": time.perf_counter() - began,
        }
        history.append(metrics)
        epoch_score = (score(metrics), -val_metrics["loss"])
        if epoch_score > best:
            best, best_epoch = epoch_score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch:  # before the checkpoint: a job killed in between redoes (and re-logs) this epoch
            on_epoch(epoch, metrics)
        if checkpoint:
            atomic_torch_save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "rng": torch.get_rng_state(),
                    "best": list(best),
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                    "history": history,
                },
                checkpoint,
            )
    model.load_state_dict(best_state)
    return FitResult(best_epoch, history[best_epoch]["val_accuracy"], epoch, history, stopped_early=epoch < max_epochs)


class Trainer:
    """Optimisation settings: optimiser, learning rate, early stopping (on the clean,
    the dotted or the mean of both validation accuracies: ``stop_on``), device, threads."""

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        max_epochs: int = 20,
        patience: int = 3,
        grad_clip: float | None = None,
        device: str = "auto",
        num_threads: int | None = None,
        eval_batch_size: int = EVAL_BATCH_SIZE,
        resume: bool = False,
        stop_on: str = "clean",
    ):
        require(isinstance(lr, (int, float)) and lr > 0, "lr", lr, "a number > 0")
        require_choice("optimizer", optimizer, OPTIMIZERS)
        require(isinstance(max_epochs, int) and max_epochs >= 1, "max_epochs", max_epochs, "an integer >= 1")
        require(isinstance(patience, int) and patience >= 1, "patience", patience, "an integer >= 1")
        require(grad_clip is None or grad_clip > 0, "grad_clip", grad_clip, "null or a number > 0")
        require_choice("device", device, DEVICES)
        require(
            device != "cuda" or torch.cuda.is_available(),
            "device",
            device,
            "cuda only where a CUDA GPU is visible (use auto or cpu)",
        )
        require(
            num_threads is None or (isinstance(num_threads, int) and num_threads >= 1),
            "num_threads",
            num_threads,
            "null (from OMP_NUM_THREADS, else 1) or an integer >= 1",
        )
        require(
            isinstance(eval_batch_size, int) and eval_batch_size >= 1,
            "eval_batch_size",
            eval_batch_size,
            "an integer >= 1",
        )
        self.lr, self.optimizer_name, self.momentum, self.weight_decay = float(lr), optimizer, momentum, weight_decay
        self.max_epochs, self.patience, self.grad_clip = max_epochs, patience, grad_clip
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        )
        # Launchers other than joblib do not limit threads; parallel jobs must not oversubscribe.
        # One thread unless told: these small models gain 1.25x from a second thread on an idle
        # 2-core machine but lose 25x when another process holds a core (measured, README "Speed").
        self.num_threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or 1
        self.eval_batch_size = eval_batch_size
        require(isinstance(resume, bool), "resume", resume, "true or false")
        self.resume = resume
        require_choice("stop_on", stop_on, STOP_SCORES)
        self.stop_on = stop_on
        # Channels-last convolutions and max-pooling measured faster on the CPU (see README, "Speed").
        self.memory_format = torch.channels_last

    def apply_process_settings(self) -> None:
        """Threads, and the C allocator told to keep freed memory (``keep_freed_memory``)."""
        torch.set_num_threads(self.num_threads)
        keep_freed_memory()

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (in place) on the device, in the memory format training uses."""
        return model.to(self.device, memory_format=self.memory_format)

    def make_optimizer(self, params, lr: float | None = None):
        lr = self.lr if lr is None else lr
        # fused: one kernel per parameter instead of about ten; measured faster (README, "Speed")
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay, fused=True)
        return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, fused=True)

    def fit(
        self,
        model,
        train: Split,
        pool: Split,
        val: Split,
        sampler,
        loss_fn,
        on_epoch=None,
        checkpoint: Path | None = None,
        validate=None,
    ) -> FitResult:
        self.place(model)
        return fit_until_early_stopping(
            model,
            train=train.to(self.device),
            pool=pool.to(self.device),
            val=val.to(self.device),
            sampler=sampler,
            loss_fn=loss_fn.to(self.device),
            optimizer=self.make_optimizer(model.parameters()),
            max_epochs=self.max_epochs,
            patience=self.patience,
            grad_clip=self.grad_clip,
            eval_batch_size=self.eval_batch_size,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
            resume=self.resume,
            validate=validate,
            score=STOP_SCORES[self.stop_on],
        )

    def evaluate(self, model, split: Split) -> dict:
        return scores(self.predict(model, split.x), split.labels.to(self.device))

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` on images ``x``."""
        return predict_logits(self.place(model), x.to(self.device), self.eval_batch_size)


def train_confounded(
    model,
    train: Split,
    trainer: Trainer,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Plain cross-entropy on the confounded training split for a fixed number
    of epochs (no validation-based stopping: the clean validation set must not
    steer the model away from the shortcut)."""
    trainer.place(model)
    data = train.to(trainer.device)
    sampler = MixedBatchSampler(len(train), batch_size=batch_size, k=0, pool_size=0, seed=seed)
    optimizer = trainer.make_optimizer(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        began = time.perf_counter()
        metrics = train_one_epoch(
            model, data, sampler.batches(epoch), 0, BaselineImbalancedLoss(), optimizer, trainer.grad_clip
        )
        metrics = {"epoch": epoch + 1, **metrics, "seconds": time.perf_counter() - began}
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch + 1, metrics)
    return history
