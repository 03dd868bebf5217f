"""The guide's two baselines: the balanced and the imbalanced cross-entropy."""

from __future__ import annotations

from xilsweep.losses.base import Method, cross_entropy, named_losses, require_number


class Balanced(Method):
    """``L = CE(confounded) + lam * CE(corrected)``."""

    name = "balanced"

    def __init__(self, lam: float = 1.0):
        super().__init__()
        require_number("lam", lam)
        self.lam = float(lam)

    def objective(self, model, batch):
        logits = model(batch.x)
        total, conf, corr = cross_entropy(logits, batch, "balanced", self.lam)
        return logits, total, named_losses(total, conf, corr)

    def hparams(self) -> dict:
        return {"lam": self.lam}


class Imbalanced(Method):
    """``L = CE(full batch)``; the parts are reported for information only."""

    name = "imbalanced"

    def objective(self, model, batch):
        logits = model(batch.x)
        total, conf, corr = cross_entropy(logits, batch, "imbalanced")
        return logits, total, named_losses(total, conf, corr)
