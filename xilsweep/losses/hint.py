"""HINT (Selvaraju et al. 2019), as the XIL typology's ``HINTLoss`` computes it: GradCAM
aligned with the relevant region by squared error."""

from __future__ import annotations

import torch

from xilsweep.errors import require, require_choice
from xilsweep.gradcam import gradcam, min_max, nearest, require_conv
from xilsweep.losses.base import MaskPenalty, as_labels, has_feedback

RELEVANT_REGIONS = ("ink",)


def ink(x: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """The relevant region the user's data gives: pixels brighter than ``threshold`` in
    any channel outside the confounder mask, the digit's strokes (confounders lie on
    background, so this is the original image's ink); [N, 1, H, W]."""
    return (x > threshold).any(1, keepdim=True) & ~mask


def hint_penalty(model, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, relevant: torch.Tensor):
    """``(logits, penalty)``: ``sum_i [mask_i given] sum_pixels (G_i - r_i)^2 / B`` with
    ``G_i`` the true class's unrectified GradCAM map min-max scaled to [0, 1] and then
    stretched over the input (nearest neighbour), ``r_i`` the relevant region (0/1).
    Only samples whose confounder mask the user gave carry feedback."""
    logits, maps = gradcam(model, x, as_labels(targets))
    scaled = nearest(min_max(maps), tuple(x.shape[-2:]))
    per_image = (scaled - relevant.float()).pow(2).flatten(1).sum(1)
    return logits, (per_image * has_feedback(mask)).sum() / len(x)


class HINT(MaskPenalty):
    """HINT: ``base loss + lam * hint_penalty``.

    ``relevant_region`` says where the relevant-region mask comes from:
    ``ink``, the image's pixels above ``ink_threshold`` outside the confounder
    mask (the typology: pixels above 1/255 of the image without its confounder).
    Needs a model with a convolution.
    """

    name = "hint"
    tag = "HINT"
    revision = 2  # min-max before nearest upsampling, summed over pixels, ink above 1/255, constant channel weights

    def __init__(
        self,
        lam: float = 10.0,
        base: str = "balanced",
        base_lam: float = 1.0,
        relevant_region: str = "ink",
        ink_threshold: float = 1 / 255,
    ):
        super().__init__(lam, base, base_lam)
        require_choice("relevant_region", relevant_region, RELEVANT_REGIONS)
        require(
            isinstance(ink_threshold, (int, float)) and not isinstance(ink_threshold, bool) and 0 <= ink_threshold < 1,
            "ink_threshold",
            ink_threshold,
            "a number in [0, 1)",
        )
        self.relevant_region, self.ink_threshold = relevant_region, float(ink_threshold)

    def check(self, model) -> None:
        require_conv(model, f"loss={self.name}")

    def penalty(self, model, batch):
        self.check(model)
        return hint_penalty(model, batch.x, batch.targets, batch.mask, ink(batch.x, batch.mask, self.ink_threshold))

    def hparams(self) -> dict:
        return {**super().hparams(), "relevant_region": self.relevant_region, "ink_threshold": self.ink_threshold}
