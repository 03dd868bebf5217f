"""Right for better reasons (Shao et al. 2021): an influence-function penalty on the masked pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.losses.base import MaskPenalty, as_labels, has_feedback


def influence_penalty(model, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum over masked pixels of (d/dx sum_theta
    dCE/dtheta * d/dx sum_c log p_c)^2 / B``, per sample: the input gradient of
    the summed parameter gradients of the batch's mean cross-entropy (how a
    perturbation of each pixel moves the parameters, the influence-function
    term with the identity in place of the inverse Hessian, as the XIL
    typology's ``RBRLoss`` computes it) times the input gradient of the
    sample's summed log-probabilities.

    Second order: the parameter gradients keep their graph and are
    differentiated again with respect to the input. Samples are independent
    (batch sums give each sample's own terms) and those without a mask add
    nothing, so only the samples with one are differentiated twice; their
    cross-entropy keeps its share ``1/B`` of the batch mean. The logits are the
    model's on the whole batch.
    """
    given = has_feedback(mask)
    x_given, mask_given = x[given].detach().requires_grad_(True), mask[given]
    log_probs = F.log_softmax(model(x_given), dim=1)
    cross_entropy = F.nll_loss(log_probs, as_labels(targets)[given], reduction="sum") / len(x)
    params = [p for p in model.parameters() if p.requires_grad]
    param_grads = torch.autograd.grad(cross_entropy, params, create_graph=True)
    (influence,) = torch.autograd.grad(sum(g.sum() for g in param_grads), x_given, create_graph=True)
    (saliency,) = torch.autograd.grad(log_probs.sum(), x_given, create_graph=True)
    return model(x), (influence * saliency * mask_given).pow(2).sum() / len(x)


class RBR(MaskPenalty):
    """RBR: ``base loss + lam * influence_penalty``."""

    name = "rbr"
    tag = "RBR"
    revision = 2  # the batch's mean cross-entropy (the typology's code)

    def __init__(self, lam: float = 1e4, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def penalty(self, model, batch):
        return influence_penalty(model, batch.x, batch.targets, batch.mask)
