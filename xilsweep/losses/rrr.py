"""Right for the right reasons (Ross et al. 2017): an input-gradient penalty on the masked pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.losses.base import MaskPenalty


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


class RRR(MaskPenalty):
    """Right for the right reasons (Ross et al. 2017): ``base loss + lam * input_gradient_penalty``."""

    name = "rrr"
    tag = "RRR"

    def __init__(self, lam: float = 10.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def penalty(self, model, batch):
        return input_gradient_penalty(model, batch.x, batch.mask)
