"""UserCorrectedDataset: the pool of training 8s a user has corrected."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xilsweep.data import CONFOUNDED_CLASS, Split
from xilsweep.errors import require, require_choice
from xilsweep.sampling import CORRECTIONS


def correct(x: torch.Tensor, mask: torch.Tensor, method: str, generator: torch.Generator) -> torch.Tensor:
    """Replace the masked pixels: ``zero`` (the guide), ``random`` intensities
    (the XIL typology benchmark's counterexamples), or the ``mean`` of the
    unmasked pixels in the surrounding 5x5 window."""
    require_choice("correction", method, CORRECTIONS)
    if method == "zero":
        fill = torch.zeros_like(x)
    elif method == "random":
        fill = torch.rand(x.shape, generator=generator)
    else:
        keep = (~mask).float()
        total = F.avg_pool2d(x * keep, 5, stride=1, padding=2, count_include_pad=False)
        count = F.avg_pool2d(keep, 5, stride=1, padding=2, count_include_pad=False)
        fill = total / count.clamp_min(1e-6)
    return torch.where(mask, fill, x)


class UserCorrectedDataset:
    """``pool_size`` corrected instances drawn (seeded) from the training samples
    of ``confounded_class`` that carry a confounder (the dotted 8s; with
    ``confounded_class=None`` any class, as in Decoy-MNIST).

    ``original`` keeps their confounded inputs for visualisation, ``corrected``
    holds the corrected inputs with the same targets and masks, and ``index``
    says where each came from in the training split.
    """

    def __init__(self, train: Split, pool_size: int, correction: str = "zero", seed: int = 0,
                 confounded_class: int | None = CONFOUNDED_CLASS):
        in_class = True if confounded_class is None else train.labels == confounded_class
        candidates = torch.nonzero(in_class & train.mask.flatten(1).any(1)).flatten()
        what = "confounded training samples" if confounded_class is None else "dotted 8s in the training data"
        require(0 <= pool_size <= len(candidates), "pool_size", pool_size,
                f"an integer from 0 to {len(candidates)}, the number of {what}")
        g = torch.Generator().manual_seed(seed + 2)
        self.index = candidates[torch.randperm(len(candidates), generator=g)[:pool_size]].sort().values
        self.original = train.subset(self.index)
        self.corrected = Split(correct(self.original.x, self.original.mask, correction, g),
                               self.original.targets, self.original.mask)

    def with_known_masks(self, train: Split) -> Split:
        """``train`` with masks only on the pool's samples: the feedback the user
        gave (mask-based losses such as RRR must not see the other masks)."""
        known = torch.zeros(len(train), dtype=torch.bool, device=train.mask.device)
        known[self.index.to(known.device)] = True
        return Split(train.x, train.targets, train.mask & known.view(-1, 1, 1, 1))

    def __len__(self) -> int:
        return len(self.corrected)

    def __getitem__(self, i):
        return self.corrected.x[i], self.corrected.targets[i]
