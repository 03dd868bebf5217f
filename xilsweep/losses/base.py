"""The protocol every fine-tuning method implements, and the registry of methods.

A method (config group ``loss``) turns one mixed batch into an update of the
model: ``objective`` gives the differentiable total and the named losses,
``update`` steps the optimiser on it (DomainBed's ``Algorithm.update``). The
named losses are detached scalars, at least ``total``, ``confounded`` and
``corrected`` (the mean cross-entropy of the batch's confounded and corrected
samples; 0 for a part without samples); a method may add its own, named as
TensorBoard tags (``"RRR/penalty"``). The training loop averages each over
the epoch. Gradient clipping is the optimiser's (a step pre-hook the Trainer
installs), so ``update`` never needs it.

A class that names a config option (``name``, the file ``conf/loss/<name>.yaml``)
registers itself in ``METHODS``; abstract bases name none.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import require, require_choice

# config option (loss=<name>) -> method class, filled as the method modules are imported
METHODS: dict[str, type[Method]] = {}
CROSS_ENTROPY_BASES = ("balanced", "imbalanced")


@dataclass(frozen=True)
class Batch:
    """One mixed batch: images, targets (one-hot [B, C] or class indices [B]),
    which samples are the pool's corrected ones, and the confounder masks the user gave."""

    x: torch.Tensor
    targets: torch.Tensor
    is_corrected: torch.Tensor
    mask: torch.Tensor


@dataclass
class Step:
    """What one update did: the logits it saw and its named losses (detached scalars)."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


def as_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(dim=-1) if targets.ndim == 2 else targets


def has_feedback(mask: torch.Tensor) -> torch.Tensor:
    """Which samples carry a mask the user gave (the only ones a mask penalty reads)."""
    return mask.flatten(1).any(1)


def split_cross_entropy(logits: torch.Tensor, batch: Batch):
    """Per-sample CE, and its mean over the confounded and the corrected part."""
    per_sample = F.cross_entropy(logits, as_labels(batch.targets), reduction="none")
    zero = per_sample.new_zeros(())
    conf, corr = per_sample[~batch.is_corrected], per_sample[batch.is_corrected]
    return per_sample, (conf.mean() if len(conf) else zero), (corr.mean() if len(corr) else zero)


def cross_entropy(logits: torch.Tensor, batch: Batch, base: str, lam: float = 1.0):
    """``(total, confounded, corrected)``: ``balanced`` weighs the corrected part by
    ``lam`` (``CE_conf + lam * CE_corr``), ``imbalanced`` is the CE of the whole batch."""
    per_sample, conf, corr = split_cross_entropy(logits, batch)
    total = per_sample.mean() if base == "imbalanced" else conf + lam * corr
    return total, conf, corr


def named_losses(total, confounded, corrected, own: dict | None = None) -> dict[str, torch.Tensor]:
    """The losses a step reports, detached: the three every method has, then its own (``own``)."""
    losses = {"total": total, "confounded": confounded, "corrected": corrected, **(own or {})}
    return {name: value.detach() for name, value in losses.items()}


class Method(nn.Module, abc.ABC):
    """One way to fine-tune on mixed batches (a config option of the group ``loss``)."""

    name: ClassVar[str]  # the config option: conf/loss/<name>.yaml
    # Raised whenever what the method computes changes, so that trainer.resume=true does not
    # continue a job recorded under another revision (its metrics.json keeps the number).
    revision: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):  # an abstract base
            return
        if cls.name in METHODS:
            raise TypeError(f"two methods named {cls.name!r}: {METHODS[cls.name].__qualname__}, {cls.__qualname__}")
        METHODS[cls.name] = cls

    @abc.abstractmethod
    def objective(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, total, losses)``: the differentiable total and the named losses of ``batch``."""

    def update(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer) -> Step:
        """One gradient step on ``objective``'s total."""
        logits, total, losses = self.objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return Step(logits, losses)

    def check(self, model: nn.Module) -> None:
        """Raise a SettingError when this method cannot train ``model``."""

    def hparams(self) -> dict:
        """Settings shown in run names and the hparams table."""
        return {}

    def state_metrics(self) -> dict:
        """The method's own state at the end of an epoch ("Group/name" -> value), not batch means."""
        return {}


class MaskPenalty(Method):
    """``cross-entropy + lam * penalty`` over the masks the batch carries (the
    corrected samples' and those of confounded samples whose masks the user gave).

    ``base`` is the cross-entropy part: ``balanced`` (weight ``base_lam`` on the
    corrected part) or ``imbalanced``. Subclasses give ``penalty`` and ``tag``, the
    TensorBoard group of the penalty's epoch mean (``"<tag>/penalty"``).
    """

    tag: ClassVar[str]

    def __init__(self, lam: float, base: str = "balanced", base_lam: float = 1.0):
        super().__init__()
        require_number("lam", lam)
        require_choice("base", base, CROSS_ENTROPY_BASES)
        require_number("base_lam", base_lam)
        self.lam, self.base, self.base_lam = float(lam), base, float(base_lam)

    @abc.abstractmethod
    def penalty(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` of the batch, the penalty differentiable."""

    def objective(self, model, batch):
        logits, penalty = self.penalty(model, batch)
        total, conf, corr = cross_entropy(logits, batch, self.base, self.base_lam)
        total = total + self.lam * penalty
        return logits, total, named_losses(total, conf, corr, {f"{self.tag}/penalty": penalty})

    def hparams(self) -> dict:
        base_lam = {"base_lam": self.base_lam} if self.base == "balanced" else {}
        return {"lam": self.lam, "base": self.base, **base_lam}


def require_number(key: str, value, minimum: float = 0.0) -> None:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum,
        key,
        value,
        f"a number >= {minimum:g}",
    )
