"""RRR-G (Schramowski et al. 2020): the RRR penalty on GradCAM maps instead of input
gradients, as the XIL typology's ``RRRGradCamLoss`` computes it."""

from __future__ import annotations

import torch

from xilsweep.gradcam import gradcam, min_max, require_conv, resized_mask
from xilsweep.losses.base import MaskPenalty


def gradcam_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum_ij (m_ij * G_ij)^2 / B`` with ``G`` the predicted
    class's unrectified GradCAM map of each image min-max scaled to [0, 1] (negative
    evidence is the low end, not penalised as evidence) and ``m`` the mask shrunk to the
    map's size by torchvision's ``Resize`` (bilinear, antialiased)."""
    logits, maps = gradcam(model, x)
    mask_on_map = resized_mask(mask, maps.shape[-2:])
    return logits, (mask_on_map * min_max(maps)).pow(2).sum() / len(x)


class RRRG(MaskPenalty):
    """RRR-G: ``base loss + lam * gradcam_penalty``. Needs a model with a convolution."""

    name = "rrr_g"
    tag = "RRR-G"
    revision = 2  # min-max scaling, the mask resized by torchvision, constant channel weights (the typology's code)

    def __init__(self, lam: float = 1.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def check(self, model) -> None:
        require_conv(model, f"loss={self.name}")

    def penalty(self, model, batch):
        self.check(model)
        return gradcam_penalty(model, batch.x, batch.mask)
