"""RRR-G (Schramowski et al. 2020): the RRR penalty on GradCAM maps instead of input gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.errors import require
from xilsweep.losses.base import MaskPenalty


def require_conv(model, loss: str) -> None:
    require(
        getattr(model, "last_conv", None) is not None,
        "model",
        type(model).__name__,
        f"a model with a convolution (model=cnn, lenet or cnn_examples) for loss={loss}",
    )


def gradcam(model, x: torch.Tensor, classes: torch.Tensor | None = None):
    """``(logits, maps)``: unrectified GradCAM maps [B, 1, h, w] at ``model.last_conv``
    for ``classes`` (None: the predicted ones), ``sum_k mean_ij(dz_c/dA_kij) A_k``.

    The activations come from a forward hook; the gradient keeps its graph
    (``create_graph``), so a penalty on the maps trains the model. Samples are
    independent, so the gradient of the batch's summed scores gives each
    sample's own map.
    """
    captured = []
    handle = model.last_conv.register_forward_hook(lambda _module, _inputs, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (activations,) = captured
    if classes is None:
        classes = logits.detach().argmax(dim=1)
    score = logits.gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, activations, create_graph=True)
    return logits, (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1, keepdim=True)


def gradcam_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum_ij (G_ij / max|G|)^2 * m_ij / B`` with ``G``
    the predicted class's unrectified GradCAM map of each image, scaled by its
    largest absolute value (to [-1, 1]), and ``m`` the mask average-pooled to
    the map's size (each map cell weighted by the masked share of its pixels)."""
    logits, maps = gradcam(model, x)
    scaled = maps / maps.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    masked_share = F.adaptive_avg_pool2d(mask.float(), maps.shape[-2:])
    return logits, (scaled.pow(2) * masked_share).sum() / len(x)


class RRRG(MaskPenalty):
    """RRR-G: ``base loss + lam * gradcam_penalty``. Needs a model with a convolution."""

    name = "rrr_g"
    tag = "RRR-G"

    def __init__(self, lam: float = 1.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def check(self, model) -> None:
        require_conv(model, self.name)

    def penalty(self, model, batch):
        self.check(model)
        return gradcam_penalty(model, batch.x, batch.mask)
