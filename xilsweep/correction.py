"""UserCorrectedDataset: the pool of training 8s a user has corrected, the
pixels the user marked on them (``Feedback``: exactly the confounder, or a
flawed marking), the counterexamples made from the marks (pixel fills, or
transplants), and the dotted validation set made from the true confounders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xilsweep.data import CONFOUNDED_CLASS, Split, border_background
from xilsweep.errors import require, require_choice

FILLS = ("zero", "random", "mean")
CORRECTIONS = (*FILLS, "transplant")
# what the user marks on a pool sample (the XIL typology's feedback qualities), see ``Feedback``
FEEDBACK = ("exact", "incomplete", "wrong", "random", "adversarial", "dilated")


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


def lowest(scores: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` [N, P], its ``count`` [N] lowest finite entries (ties to the first)."""
    rank = torch.empty_like(scores, dtype=torch.long)
    order = scores.argsort(dim=1, stable=True)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return (rank < count.view(-1, 1)) & scores.isfinite()


def grown(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` [N, 1, H, W] grown by ``radius`` pixels in every direction, diagonals included."""
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def elsewhere(split: Split, generator: torch.Generator) -> torch.Tensor:
    """As many pixels as each image's confounder covers, on the background away from it: the
    ones nearest a random point of the border-connected background (not the digit's ink, nor
    its holes) that neither are nor touch a confounder pixel; a block of the same size elsewhere
    (fewer pixels where that background holds fewer)."""
    _, _, h, w = split.mask.shape
    allowed = (border_background(split.x.masked_fill(split.mask, 0)) & ~grown(split.mask, 1)).flatten(1)
    centre = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1).argmax(1, keepdim=True)
    row, col = torch.arange(h * w) // w, torch.arange(h * w) % w
    squared = (row - centre // w) ** 2 + (col - centre % w) ** 2
    # Squared distances are integers: a draw in [0, 1) only orders the pixels at the same distance.
    distance = (squared + torch.rand(allowed.shape, generator=generator)).masked_fill(~allowed, float("inf"))
    return lowest(distance, split.mask.flatten(1).sum(1)).view_as(split.mask)


def feedback_label(kind: str, fraction: float, radius: int) -> str:
    """The feedback as a run name or a settings table shows it: the kind, with the setting that
    shapes it (``incomplete0.5``, the fraction to 4 significant digits; ``dilated1``). Unchecked:
    a run name is made before the settings are validated."""
    return {"incomplete": f"incomplete{fraction:.4g}", "dilated": f"dilated{radius}"}.get(kind, str(kind))


@dataclass(frozen=True)
class Feedback:
    """What the user marks on a pool sample whose true confounder is its mask: ``exact`` (the
    confounder), ``incomplete`` (a seeded ``fraction`` of its pixels, rounded), ``wrong`` (as many
    pixels on the background away from it, see ``elsewhere``), ``random`` (each pixel with the
    probability that the confounder covers a pixel of that image), ``adversarial`` (every pixel),
    ``dilated`` (the confounder grown by ``radius`` pixels: a sloppy brush)."""

    kind: str = "exact"
    fraction: float = 0.5
    radius: int = 1

    def __post_init__(self):
        require_choice("feedback", self.kind, FEEDBACK)
        require(
            isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool) and 0 <= self.fraction <= 1,
            "feedback_fraction",
            self.fraction,
            "a number in [0, 1], the share of the confounder's pixels marked with feedback=incomplete",
        )
        require(
            isinstance(self.radius, int) and not isinstance(self.radius, bool) and self.radius >= 0,
            "feedback_radius",
            self.radius,
            "an integer >= 0, the pixels the marks grow by with feedback=dilated",
        )

    @property
    def label(self) -> str:
        return feedback_label(self.kind, self.fraction, self.radius)

    def marks(self, split: Split, generator: torch.Generator) -> torch.Tensor:
        """The user's marks [N, 1, H, W] on the images of ``split``, whose masks are the true confounders."""
        mask = split.mask
        if self.kind == "exact":
            return mask
        if self.kind == "incomplete":
            count = (mask.flatten(1).sum(1).double() * self.fraction).round().long()
            scores = torch.rand(mask.shape, generator=generator).masked_fill(~mask, float("inf"))
            return lowest(scores.flatten(1), count).view_as(mask)
        if self.kind == "wrong":
            return elsewhere(split, generator)
        if self.kind == "random":
            density = mask.flatten(1).float().mean(1).view(-1, 1, 1, 1)
            return torch.rand(mask.shape, generator=generator) < density
        if self.kind == "adversarial":
            return torch.ones_like(mask)
        return grown(mask, self.radius)


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

    ``original`` keeps their confounded inputs and true confounder masks (what
    reliance is measured against), ``marks`` the pixels the user marked on them
    (``feedback``), ``corrected`` the inputs with the marked pixels replaced,
    the same targets and the marks as masks, and ``index`` says where each came
    from in the training split. With ``correction="transplant"``, ``corrected``
    holds instead their marked pixels pasted onto training images of other
    classes (see ``transplant``).
    """

    def __init__(
        self,
        train: Split,
        pool_size: int,
        correction: str = "zero",
        seed: int = 0,
        confounded_class: int | None = CONFOUNDED_CLASS,
        feedback: Feedback = Feedback(),
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
        self.feedback = feedback
        # a generator of its own, so that exact feedback draws nothing and changes no other draw
        self.marks = feedback.marks(self.original, torch.Generator().manual_seed(seed + 4))
        marked = Split(self.original.x, self.original.targets, self.marks)
        if correction == "transplant":
            self.corrected = transplant(marked, train, g)
        else:
            self.corrected = Split(correct(marked.x, marked.mask, correction, g), marked.targets, marked.mask)

    def with_known_masks(self, train: Split) -> Split:
        """``train`` (the split the pool was drawn from) with masks only on the pool's
        samples, their user's marks: the feedback the user gave (mask-based losses
        such as RRR must not see the other masks, nor the true confounders)."""
        mask = torch.zeros_like(train.mask)
        mask[self.index.to(mask.device)] = self.marks.to(mask.device)
        return Split(train.x, train.targets, mask)

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
    pasted onto images of the other classes); which pixels the user marks:
    ``feedback`` with its ``feedback_fraction`` and ``feedback_radius`` (see
    ``Feedback``; ``exact``: the confounder)."""

    size: int = 100
    correction: str = "zero"
    feedback: str = "exact"
    feedback_fraction: float = 0.5
    feedback_radius: int = 1

    def __post_init__(self):
        require(
            isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 0,
            "size",
            self.size,
            "an integer >= 0",
        )
        require_choice("correction", self.correction, CORRECTIONS)
        self.user_feedback()  # checks the feedback settings before any data is loaded

    def user_feedback(self) -> Feedback:
        return Feedback(self.feedback, self.feedback_fraction, self.feedback_radius)

    def draw(self, train: Split, seed: int, confounded_class: int | None) -> UserCorrectedDataset:
        return UserCorrectedDataset(train, self.size, self.correction, seed, confounded_class, self.user_feedback())
