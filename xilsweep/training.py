"""Training loop on in-memory tensors: train_one_epoch, evaluate, and the
Trainer that holds their settings and fine-tunes with early stopping (``Trainer.fit``)."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from xilsweep.data import Split, concat
from xilsweep.devices import choose_device
from xilsweep.errors import NonFiniteLossError, require, require_choice
from xilsweep.files import atomic_torch_save, read_checked
from xilsweep.losses import Batch, Method
from xilsweep.losses.base import as_labels
from xilsweep.losses.baseline import Imbalanced
from xilsweep.sampling import MixedBatchSampler, create_is_user_corrected_mask

OPTIMIZERS = ("adam", "sgd")


def clean_score(metrics: dict) -> float:
    return metrics["val_accuracy"]


def dotted_score(metrics: dict) -> float:
    return metrics["val_dotted_accuracy"]


def mean_score(metrics: dict) -> float:
    # Same units, equal weight: a point of dotted accuracy is worth a point of clean accuracy.
    return (metrics["val_accuracy"] + metrics["val_dotted_accuracy"]) / 2


# trainer.stop_on -> the epoch's validation score that early stopping maximises
STOP_SCORES = {"clean": clean_score, "dotted": dotted_score, "both": mean_score}


# a step's named losses -> the epoch metric of their mean; a method's own (TensorBoard tags) keep their names
EPOCH_NAMES = {"total": "loss", "confounded": "loss_confounded", "corrected": "loss_corrected"}


def train_one_epoch(model, data: Split, batches, k: int, method: Method, optimizer) -> dict:
    """One pass over ``batches`` (index tensors into ``data``, the last ``k`` of
    each batch corrected), ``method.update`` on each. Returns the epoch means of
    the steps' named losses and the training accuracy; raises on a non-finite loss."""
    model.train()
    device = data.x.device
    names, sums, n_seen = [], None, 0
    for index in batches:
        index = index.to(device, non_blocking=True)
        is_corrected = create_is_user_corrected_mask(len(index), k, device)
        batch = Batch(data.x[index], data.targets[index], is_corrected, data.mask[index])
        step = method.update(model, batch, optimizer)
        hits = (step.logits.detach().argmax(dim=1) == as_labels(batch.targets)).sum()
        values = torch.stack([*step.losses.values(), hits.float()])
        if sums is None:
            names, sums = [*step.losses, "hits"], torch.zeros_like(values)
        sums += values
        n_seen += len(index)
    return epoch_means(dict(zip(names, sums.tolist(), strict=True)), len(batches), n_seen)  # one device sync


def epoch_means(sums: dict[str, float], n_batches: int, n_seen: int) -> dict:
    """Epoch metrics from the summed named losses and ``hits`` (correct predictions);
    raises on a non-finite loss."""
    if not math.isfinite(sums["total"]):
        raise NonFiniteLossError(
            f"training loss became {sums['total']}: lower trainer.lr or set trainer.grad_clip (e.g. 1.0)"
        )
    means = {EPOCH_NAMES.get(name, name): value / n_batches for name, value in sums.items() if name != "hits"}
    return {**means, "accuracy": sums["hits"] / n_seen}


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


@dataclass
class FitData:
    """What a fine-tuning reads: the training split (carrying only the confounder
    masks the user gave), the pool of corrected samples, the validation split, and
    the sampler that mixes the first two into batches."""

    train: Split
    pool: Split
    val: Split
    sampler: MixedBatchSampler

    def to(self, device) -> FitData:
        return FitData(self.train.to(device), self.pool.to(device), self.val.to(device), self.sampler)

    @cached_property
    def train_and_pool(self) -> Split:
        """The training split then the pool, the data the sampler's indices point into."""
        return concat(self.train, self.pool)


@dataclass
class Stopping:
    """Early stopping: the best epoch so far by ``score`` (ties broken by lower
    validation loss) and its weights; training goes on while the best is less
    than ``patience`` epochs old."""

    score: Callable[[dict], float]
    patience: int
    best: tuple[float, ...] = ()  # (score, -validation loss) of the best epoch
    best_epoch: int = 0
    best_state: dict | None = None

    def update(self, metrics: dict, model: torch.nn.Module) -> None:
        """Keep ``model``'s weights if its epoch (``metrics``) is the best so far (the first always is)."""
        key = (self.score(metrics), -metrics["val_loss"])
        if self.best_state is None or key > self.best:
            self.best, self.best_epoch = key, metrics["epoch"]
            self.best_state = copy.deepcopy(model.state_dict())

    def waiting(self, epoch: int) -> bool:
        return epoch - self.best_epoch < self.patience

    def state_dict(self) -> dict:
        return {"best": list(self.best), "best_epoch": self.best_epoch, "best_model": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.best_state = tuple(state["best"]), state["best_epoch"], state["best_model"]


def save_checkpoint(path: Path, model, optimizer, method: Method, stopping: Stopping, history: list[dict]) -> None:
    """The whole training state after the last epoch of ``history``, written atomically."""
    state = {
        "epoch": history[-1]["epoch"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "rng": torch.get_rng_state(),
        "history": history,
        **stopping.state_dict(),
    }
    atomic_torch_save(state, path)


def load_checkpoint(path: Path, model, optimizer, method: Method, stopping: Stopping) -> list[dict]:
    """Restore what ``save_checkpoint`` wrote into the objects; returns the history so far."""
    state = read_checked(path)[1]
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    torch.set_rng_state(state["rng"])
    stopping.load_state_dict(state)
    return state["history"]


def clip_before_step(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the gradient norm of ``optimizer``'s parameters at ``max_norm`` whenever it steps
    (a step pre-hook: also inside a method's own update rule, such as the Lagrangian's)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip(*_) -> None:  # a step pre-hook must return None (clip_grad_norm_ returns the norm)
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    optimizer.register_step_pre_hook(clip)


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
        self.device = choose_device(device)  # auto: spread over the visible GPUs in a sweep (devices.py)
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
        """The optimiser of ``params``; with ``grad_clip``, it clips their gradient norm before every step."""
        lr = self.lr if lr is None else lr
        # fused: one kernel per parameter instead of about ten; measured faster (README, "Speed")
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay, fused=True
            )
        else:
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, fused=True)
        if self.grad_clip:
            clip_before_step(optimizer, self.grad_clip)
        return optimizer

    def fit(self, model, data: FitData, method: Method, on_epoch=None, checkpoint=None, validate=None) -> FitResult:
        """Fine-tune ``model`` in place with ``method`` until the epoch's score (``stop_on``)
        has not improved for ``patience`` epochs, then restore the best weights.
        ``validate(model)`` adds further validation metrics to every epoch's (the
        score may read them).

        Epoch 0 is the starting model, so a fine-tuning that never beats it on
        validation returns it unchanged. ``on_epoch(epoch, metrics)`` is called
        after every epoch run here, epoch 0 included.

        With ``checkpoint``, the whole training state is saved there (atomically)
        after every epoch; with ``resume`` too, training continues from it. Batch
        order depends only on (seed, epoch) and the RNG state is saved, so a
        resumed run ends exactly where an uninterrupted one would.
        """
        self.place(model)
        data, method = data.to(self.device), method.to(self.device)
        optimizer = self.make_optimizer(model.parameters())
        stopping = Stopping(STOP_SCORES[self.stop_on], self.patience)
        if self.resume and checkpoint and Path(checkpoint).exists():
            history = load_checkpoint(checkpoint, model, optimizer, method, stopping)
        else:
            history = [{"epoch": 0, **self.validation(model, data.val, validate)}]
            stopping.update(history[0], model)
            if on_epoch:
                on_epoch(0, history[0])
        epoch = history[-1]["epoch"]
        while epoch < self.max_epochs and stopping.waiting(epoch):
            epoch += 1
            history.append(self.epoch(epoch, model, data, method, optimizer, validate))
            stopping.update(history[-1], model)
            if on_epoch:  # before the checkpoint: a job killed in between redoes (and re-logs) this epoch
                on_epoch(epoch, history[-1])
            if checkpoint:
                save_checkpoint(checkpoint, model, optimizer, method, stopping, history)
        model.load_state_dict(stopping.best_state)
        best = stopping.best_epoch
        return FitResult(best, history[best]["val_accuracy"], epoch, history, stopped_early=epoch < self.max_epochs)

    def epoch(self, epoch: int, model, data: FitData, method: Method, optimizer, validate=None) -> dict:
        """Train one epoch (numbered from 1) and validate: the epoch's metrics."""
        began = time.perf_counter()
        data.sampler.set_epoch(epoch - 1)
        k = data.sampler.k
        train = train_one_epoch(model, data.train_and_pool, data.sampler.batches(epoch - 1), k, method, optimizer)
        return {
            "epoch": epoch,
            **{(name if "/" in name else f"train_{name}"): value for name, value in train.items()},
            **self.validation(model, data.val, validate),
            "k": k,
            **method.state_metrics(),
            "seconds": time.perf_counter() - began,
        }

    def validation(self, model, val: Split, validate=None) -> dict:
        """Validation loss and accuracy, and what ``validate(model)`` adds."""
        scores = evaluate(model, val, self.eval_batch_size)
        return {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"], **(validate(model) if validate else {})}

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
        metrics = train_one_epoch(model, data, sampler.batches(epoch), 0, Imbalanced(), optimizer)
        metrics = {"epoch": epoch + 1, **metrics, "seconds": time.perf_counter() - began}
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch + 1, metrics)
    return history
