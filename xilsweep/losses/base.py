"""The interface every fine-tuning objective implements.

Every loss returns ``(total, confounded_part, corrected_part)``: ``total`` is
what is minimised, the two parts are the mean cross-entropy of the confounded
and the corrected samples of the batch, for logging. A part with no samples in
the batch is 0. Targets may be one-hot ([B, C]) or class indices ([B]).

A loss with its own update rule (the Lagrangian: a primal-dual step) wraps the
optimiser in ``wrap_optimizer``; per-epoch extra scalars (named with a "/", as
TensorBoard tags) come from ``epoch_metrics``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import require


def as_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(dim=-1) if targets.ndim == 2 else targets


def split_cross_entropy(logits, targets, is_corrected):
    """Per-sample CE, and its mean over the confounded and the corrected part."""
    per_sample = F.cross_entropy(logits, as_labels(targets), reduction="none")
    zero = per_sample.new_zeros(())
    conf, corr = per_sample[~is_corrected], per_sample[is_corrected]
    return per_sample, (conf.mean() if len(conf) else zero), (corr.mean() if len(corr) else zero)


class XILLoss(nn.Module):
    """Base: ``batch_loss`` runs the model; subclasses define ``forward`` on logits."""

    name = "base"

    def batch_loss(self, model, x, targets, is_corrected, mask):
        """``(logits, (total, confounded_part, corrected_part))`` for one batch."""
        logits = model(x)
        return logits, self(logits, targets, is_corrected)

    def check(self, model) -> None:
        """Raise a SettingError when this loss cannot train ``model``."""

    def hparams(self) -> dict:
        """Settings shown in run names and the hparams table."""
        return {}

    def wrap_optimizer(self, optimizer, grad_clip: float | None = None):
        """What ``train_one_epoch`` steps. Plain losses: the optimiser itself.
        A loss with its own update returns an object whose ``train_step(model,
        x, targets, is_corrected, mask)`` does forward, backward (with
        ``grad_clip``) and step, returning what ``batch_loss`` returns."""
        return optimizer

    def epoch_metrics(self) -> dict:
        """Extra scalars of the epoch just trained ("Group/name" -> value); resets them."""
        return {}


def require_number(key: str, value, minimum: float = 0.0) -> None:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum,
        key,
        value,
        f"a number >= {minimum:g}",
    )
