"""Right for the right reasons (Ross et al. 2017): an input-gradient penalty on the masked pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xilsweep.errors import require_choice
from xilsweep.losses.base import XILLoss, require_number
from xilsweep.losses.baseline import BaselineBalancedLoss, BaselineImbalancedLoss


def input_gradient_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: the penalty is the sum over masked pixels of the
    squared input gradient of ``sum_c log p_c``, divided by the batch size.

    One forward pass over the whole batch; samples are independent, so the
    gradient of the batch sum gives each sample's own input gradient. The graph
    is kept (``create_graph``) so the penalty can be trained on.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    log_probs = F.log_softmax(logits, dim=1).sum()
    (grad,) = torch.autograd.grad(log_probs, x, create_graph=True)
    return logits, (grad * mask).pow(2).sum() / len(x)


RRR_BASES = ("balanced", "imbalanced")


class RRRLoss(XILLoss):
    """Right for the right reasons (Ross et al. 2017): ``base loss + lam *
    input_gradient_penalty`` over the masks the batch carries (the corrected
    samples' and those of confounded samples whose masks the user gave).

    ``lam`` weighs the penalty (it plays the role of the balanced loss's
    ``lam`` in run names); ``base`` is the cross-entropy part, ``balanced``
    with weight ``base_lam`` on the corrected part, or ``imbalanced``.
    """

    name = "rrr"
    tag = "RRR"  # TensorBoard group of the penalty: "<tag>/penalty"

    def __init__(self, lam: float = 10.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__()
        require_number("lam", lam)
        require_choice("base", base, RRR_BASES)
        self.lam, self.base_name = float(lam), base
        self.base = BaselineBalancedLoss(base_lam) if base == "balanced" else BaselineImbalancedLoss()
        self._penalties: list[torch.Tensor] = []

    def penalty(self, model, x, targets, mask):
        """``(logits, penalty)`` of the batch; methods built on RRR replace this."""
        return input_gradient_penalty(model, x, mask)

    def batch_loss(self, model, x, targets, is_corrected, mask):
        logits, penalty = self.penalty(model, x, targets, mask)
        total, conf, corr = self.base(logits, targets, is_corrected)
        self._penalties.append(penalty.detach())
        return logits, (total + self.lam * penalty, conf, corr)

    def forward(self, logits, targets, is_corrected):
        """The cross-entropy part alone (the penalty needs the model and inputs)."""
        return self.base(logits, targets, is_corrected)

    def epoch_metrics(self) -> dict:
        penalty = torch.stack(self._penalties).mean().item() if self._penalties else math.nan
        self._penalties = []
        return {f"{self.tag}/penalty": penalty}

    def hparams(self) -> dict:
        lam = {"base_lambda": self.base.lam} if self.base_name == "balanced" else {}
        return {"lambda": self.lam, "base": self.base_name, **lam}
