"""Right for better reasons (Shao et al. 2021): an influence-function penalty on the masked pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.losses.base import MaskPenalty, as_labels


def influence_penalty(model, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum over masked pixels of (d/dx sum_theta
    dCE/dtheta * d/dx sum_c log p_c)^2 / B``, per sample: the input gradient of
    the summed parameter gradients of the sample's cross-entropy (how a
    perturbation of each pixel moves the parameters, the influence-function
    term) times its input gradient of the summed log-probabilities.

    Second order: the parameter gradients keep their graph and are
    differentiated again with respect to the input; samples are independent,
    so batch sums give each sample's own terms.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    log_probs = F.log_softmax(logits, dim=1)
    cross_entropy = F.nll_loss(log_probs, as_labels(targets), reduction="sum")
    params = [p for p in model.parameters() if p.requires_grad]
    param_grads = torch.autograd.grad(cross_entropy, params, create_graph=True)
    (influence,) = torch.autograd.grad(sum(g.sum() for g in param_grads), x, create_graph=True)
    (saliency,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)
    return logits, (influence * saliency * mask).pow(2).sum() / len(x)


class RBR(MaskPenalty):
    """RBR: ``base loss + lam * influence_penalty``."""

    name = "rbr"
    tag = "RBR"

    def __init__(self, lam: float = 10.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def penalty(self, model, batch):
        return influence_penalty(model, batch.x, batch.targets, batch.mask)
