"""Objectives for fine-tuning on mixed batches.

Every loss returns ``(total, confounded_part, corrected_part)``: ``total`` is
what is minimised, the two parts are the mean cross-entropy of the confounded
and the corrected samples of the batch, for logging. A part with no samples in
the batch is 0. Targets may be one-hot ([B, C]) or class indices ([B]).
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

    def hparams(self) -> dict:
        """Settings shown in run names and the hparams table."""
        return {}


class BaselineBalancedLoss(XILLoss):
    """``L = CE(confounded) + lam * CE(corrected)``."""

    name = "balanced"

    def __init__(self, lam: float = 1.0):
        super().__init__()
        require(isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0,
                "lam", lam, "a number >= 0")
        self.lam = float(lam)

    def forward(self, logits, targets, is_corrected):
        _, conf, corr = split_cross_entropy(logits, targets, is_corrected)
        return conf + self.lam * corr, conf, corr

    def hparams(self) -> dict:
        return {"lambda": self.lam}


class BaselineImbalancedLoss(XILLoss):
    """``L = CE(full batch)``; the parts are reported for information only."""

    name = "imbalanced"

    def forward(self, logits, targets, is_corrected):
        per_sample, conf, corr = split_cross_entropy(logits, targets, is_corrected)
        return per_sample.mean(), conf.detach(), corr.detach()
