"""HINT (Selvaraju et al. 2019), as in the XIL typology benchmark: GradCAM aligned
with the relevant region by mean squared error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.errors import require, require_choice
from xilsweep.losses.base import MaskPenalty, as_labels
from xilsweep.losses.rrr_g import gradcam, require_conv

RELEVANT_REGIONS = ("ink",)


def ink(x: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """The relevant region the user's data gives: pixels brighter than
    ``threshold`` outside the confounder mask (the digit's strokes)."""
    return (x > threshold) & ~mask


def hint_penalty(model, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, relevant: torch.Tensor):
    """``(logits, penalty)``: ``sum_i [mask_i given] mean_pixels (G_i - r_i)^2 / B``
    with ``G_i`` the true class's GradCAM map upsampled (bilinear) to the input
    and min-max scaled to [0, 1] per image, ``r_i`` the relevant region (0/1).
    Only samples whose confounder mask the user gave carry feedback."""
    logits, maps = gradcam(model, x, as_labels(targets))
    maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    low, high = maps.amin(dim=(2, 3), keepdim=True), maps.amax(dim=(2, 3), keepdim=True)
    scaled = (maps - low) / (high - low).clamp_min(1e-12)
    per_image = (scaled - relevant.float()).pow(2).flatten(1).mean(1)
    has_feedback = mask.flatten(1).any(1)
    return logits, (per_image * has_feedback).sum() / len(x)


class HINT(MaskPenalty):
    """HINT: ``base loss + lam * hint_penalty``.

    ``relevant_region`` says where the relevant-region mask comes from:
    ``ink``, the image's pixels above ``ink_threshold`` outside the confounder
    mask. Needs a model with a convolution.
    """

    name = "hint"
    tag = "HINT"

    def __init__(
        self,
        lam: float = 100.0,
        base: str = "balanced",
        base_lam: float = 1.0,
        relevant_region: str = "ink",
        ink_threshold: float = 0.5,
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
        require_conv(model, self.name)

    def penalty(self, model, batch):
        self.check(model)
        return hint_penalty(model, batch.x, batch.targets, batch.mask, ink(batch.x, batch.mask, self.ink_threshold))

    def hparams(self) -> dict:
        return {**super().hparams(), "relevant_region": self.relevant_region, "ink_threshold": self.ink_threshold}
