"""UserCorrectedDataset: the pool of training 8s a user has corrected, the
counterexamples made from it (pixel fills, or confounder transplants), and the
dotted validation set made from its marked confounders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xilsweep.data import CONFOUNDED_CLASS, Split
from xilsweep.errors import require, require_choice

FILLS = ("zero", "random", "mean")
CORRECTIONS = (*FILLS, "transplant")


def correct(x: torch.Tensor, mask: torch.Tensor, method: str, generator: torch.Generator) -> torch.Tensor:
    """Replace the masked pixels: ``zero`` (the guide), ``random`` intensities
    (the XIL typology benchmark's counterexamples), or the ``mean`` of the
    unmasked pixels in the surrounding 5x5 window."""
    require_choice("correction", method, FILLS)
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


def transplant(donors: Split, train: Split, generator: torch.Generator) -> Split:
    """One counterexample per donor: a training image of another class (drawn
    without repeats while there are enough) with the donor's masked pixels
    pasted in at the same positions; it keeps its own label and its mask is
    the pasted pixels. The confounder then appears in every class, so it
    predicts none."""
    recipients = torch.empty(len(donors), dtype=torch.long)
    for label in donors.labels.unique():  # one draw per class, not per sample
        takers = torch.nonzero(donors.labels == label).flatten()
        others = torch.nonzero(train.labels != label).flatten()
        require(len(others) > 0, "correction", "transplant", "training data with more than one class")
        order = others[torch.randperm(len(others), generator=generator)]
        recipients[takers] = order[torch.arange(len(takers)) % len(order)]
    return paste(donors, train.subset(recipients))


def paste(donors: Split, hosts: Split) -> Split:
    """``hosts`` with each donor's masked pixels pasted in at the same positions
    (image for image); labels kept, the mask is the pasted pixels."""
    return Split(torch.where(donors.mask, donors.x, hosts.x), hosts.targets, donors.mask)


def dotted_validation(val: Split, pool_original: Split, seed: int) -> Split | None:
    """The validation images, each with the confounder of a pool sample (drawn with
    repeats, seeded) pasted in: what a user who marked the confounder can measure
    reliance on without the test set. None for an empty pool."""
    if len(pool_original) == 0:
        return None
    g = torch.Generator().manual_seed(seed + 3)
    return paste(pool_original.subset(torch.randint(len(pool_original), (len(val),), generator=g)), val)


class UserCorrectedDataset:
    """``pool_size`` corrected instances drawn (seeded) from the training samples
    of ``confounded_class`` that carry a confounder (the dotted 8s; with
    ``confounded_class=None`` any class, as in Decoy-MNIST).

    ``original`` keeps their confounded inputs for visualisation, ``corrected``
    holds the corrected inputs with the same targets and masks, and ``index``
    says where each came from in the training split. With
    ``correction="transplant"``, ``corrected`` holds instead their confounders
    pasted onto training images of other classes (see ``transplant``).
    """

    def __init__(
        self,
        train: Split,
        pool_size: int,
        correction: str = "zero",
        seed: int = 0,
        confounded_class: int | None = CONFOUNDED_CLASS,
    ):
        require_choice("correction", correction, CORRECTIONS)
        in_class = True if confounded_class is None else train.labels == confounded_class
        candidates = torch.nonzero(in_class & train.mask.flatten(1).any(1)).flatten()
        what = "confounded training samples" if confounded_class is None else "dotted 8s in the training data"
        require(
            0 <= pool_size <= len(candidates),
            "size",
            pool_size,
            f"an integer from 0 to {len(candidates)}, the number of {what}",
        )
        g = torch.Generator().manual_seed(seed + 2)
        self.index = candidates[torch.randperm(len(candidates), generator=g)[:pool_size]].sort().values
        self.original = train.subset(self.index)
        if correction == "transplant":
            self.corrected = transplant(self.original, train, g)
        else:
            self.corrected = Split(
                correct(self.original.x, self.original.mask, correction, g), self.original.targets, self.original.mask
            )

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


@dataclass
class CorrectedPool:
    """The user's feedback (config group ``pool``): how many training samples
    of the confounded class the user corrects (``size``, N in the guide), and
    what ``correction`` makes of their marked pixels: ``zero`` (the guide),
    ``random`` or ``mean`` fills, or ``transplant`` (the marked confounder
    pasted onto images of the other classes)."""

    size: int = 100
    correction: str = "zero"

    def __post_init__(self):
        require(
            isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 0,
            "size",
            self.size,
            "an integer >= 0",
        )
        require_choice("correction", self.correction, CORRECTIONS)

    def draw(self, train: Split, seed: int, confounded_class: int | None) -> UserCorrectedDataset:
        return UserCorrectedDataset(train, self.size, self.correction, seed, confounded_class)
