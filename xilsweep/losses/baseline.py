"""The guide's two baselines: the balanced and the imbalanced cross-entropy."""

from __future__ import annotations

from xilsweep.losses.base import XILLoss, require_number, split_cross_entropy


class BaselineBalancedLoss(XILLoss):
    """``L = CE(confounded) + lam * CE(corrected)``."""

    name = "balanced"

    def __init__(self, lam: float = 1.0):
        super().__init__()
        require_number("lam", lam)
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
