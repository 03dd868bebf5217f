"""UserCorrectedDataset: the pool of training 8s a user has corrected, the
pixels the user marked on them (``Feedback``: exactly the confounder, or a
flawed marking), the counterexamples made from the marks (pixel fills, or
transplants), and the dotted validation set made from the true confounders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xilsweep.data import CONFOUNDED_CLASS, Split, border_background, concat
from xilsweep.errors import require, require_choice
from xilsweep.queries import SELECTIONS

FILLS = ("zero", "random", "mean")
CORRECTIONS = (*FILLS, "transplant")
# a query strategy's order of the candidates it is given (``xilsweep.queries.query_order``)
Order = Callable[[Split], torch.Tensor]
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


def pool_candidates(train: Split, confounded_class: int | None, pool_size: int) -> torch.Tensor:
    """Indices of the training samples a user can be asked to correct: those of
    ``confounded_class`` (any class when None) that carry a confounder; at least ``pool_size``."""
    in_class = True if confounded_class is None else train.labels == confounded_class
    candidates = torch.nonzero(in_class & train.mask.flatten(1).any(1)).flatten()
    what = "training samples with a confounder" + ("" if confounded_class is None else f" in class {confounded_class}")
    require(
        0 <= pool_size <= len(candidates),
        "size",
        pool_size,
        f"an integer from 0 to {len(candidates)}, the number of {what}",
    )
    return candidates


def dotted_validation(val: Split, pool_original: Split, seed: int) -> Split | None:
    """The validation images, each with the confounder of a pool sample (drawn with
    repeats, seeded) pasted in: what a user who marked the confounder can measure
    reliance on without the test set. None for an empty pool."""
    if len(pool_original) == 0:
        return None
    g = torch.Generator().manual_seed(seed + 3)
    return paste(pool_original.subset(torch.randint(len(pool_original), (len(val),), generator=g)), val)


class UserCorrectedDataset:
    """The pool of training samples of ``confounded_class`` that carry a confounder (the
    dotted 8s; with ``confounded_class=None`` any class, as in Decoy-MNIST) the user has
    corrected: the first ``pool_size`` in a seeded order, then more asked about with ``ask``
    (interactive rounds, another query strategy's order).

    ``original`` keeps their confounded inputs and true confounder masks (what
    reliance is measured against), ``marks`` the pixels the user marked on them
    (``feedback``), ``corrected`` the inputs with the marked pixels replaced,
    the same targets and the marks as masks, and ``index`` says where each came
    from in the training split (each query's samples sorted, queries in order). With
    ``correction="transplant"``, ``corrected`` holds instead their marked pixels pasted onto
    training images of other classes (see ``transplant``). ``remaining`` holds the
    candidates not asked about yet, in the seeded order.
    """

    def __init__(
        self,
        train: Split,
        pool_size: int,
        correction: str = "zero",
        seed: int = 0,
        confounded_class: int | None = CONFOUNDED_CLASS,
        feedback: Feedback = Feedback(),
        order: Order | None = None,
    ):
        require_choice("correction", correction, CORRECTIONS)
        candidates = pool_candidates(train, confounded_class, pool_size)
        self.train, self.correction, self.feedback = train, correction, feedback
        # the fills' and transplants' draws continue this generator from query to query
        self.generator = torch.Generator().manual_seed(seed + 2)
        self.remaining = candidates[torch.randperm(len(candidates), generator=self.generator)]
        # a generator of its own, so that exact feedback draws nothing and changes no other draw
        self.marking = torch.Generator().manual_seed(seed + 4)
        self.index = torch.empty(0, dtype=torch.long)
        self.original = self.corrected = train.subset(self.index)
        self.marks = self.original.mask
        self.ask(pool_size, order)

    def ask(self, n: int, order: Order | None = None) -> torch.Tensor:
        """Add the ``n`` remaining candidates that ``order`` (positions of the remaining candidates,
        asked first first; default: the seeded order) puts first, marked and corrected; returns
        their indices in the training split."""
        ranked = self.remaining if order is None else self.remaining[order(self.train.subset(self.remaining))]
        chosen = ranked[:n].sort().values
        self.add(chosen)
        return chosen

    def add(self, chosen: torch.Tensor) -> None:
        """Add the candidates ``chosen`` (training indices, in this order), marked and corrected."""
        self.remaining = self.remaining[~torch.isin(self.remaining, chosen)]
        original = self.train.subset(chosen)
        marks = self.feedback.marks(original, self.marking)
        marked = Split(original.x, original.targets, marks)
        if self.correction == "transplant":
            corrected = transplant(marked, self.train, self.generator)
        else:
            corrected = Split(correct(marked.x, marks, self.correction, self.generator), marked.targets, marks)
        self.index = torch.cat([self.index, chosen])
        self.original, self.corrected = concat(self.original, original), concat(self.corrected, corrected)
        self.marks = torch.cat([self.marks, marks])

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
    ``Feedback``; ``exact``: the confounder); which samples the user is asked about:
    ``select`` (``xilsweep.queries``; ``random``: the guide's); over how many ``rounds``
    the ``size`` queries are spread, the model fine-tuned after each and the next
    queries chosen on it (``round_sizes``)."""

    size: int = 100
    correction: str = "zero"
    feedback: str = "exact"
    feedback_fraction: float = 0.5
    feedback_radius: int = 1
    select: str = "random"
    rounds: int = 1

    def __post_init__(self):
        require(
            isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 0,
            "size",
            self.size,
            "an integer >= 0",
        )
        require_choice("correction", self.correction, CORRECTIONS)
        self.user_feedback()  # checks the feedback settings before any data is loaded
        require_choice("select", self.select, SELECTIONS)
        require(
            isinstance(self.rounds, int)
            and not isinstance(self.rounds, bool)
            and 1 <= self.rounds <= max(self.size, 1),
            "rounds",
            self.rounds,
            f"an integer from 1 to size={self.size} (each round asks at least one query)",
        )

    def user_feedback(self) -> Feedback:
        return Feedback(self.feedback, self.feedback_fraction, self.feedback_radius)

    def round_sizes(self) -> list[int]:
        """The queries of each round: ``size`` split as evenly as whole numbers allow, the
        larger shares last (10 over 4 rounds: 2, 3, 2, 3)."""
        return [self.size * (r + 1) // self.rounds - self.size * r // self.rounds for r in range(self.rounds)]

    def check_size(self, train: Split, confounded_class: int | None) -> None:
        """The size against the data's candidates, before any model is trained."""
        pool_candidates(train, confounded_class, self.size)

    def draw(self, train: Split, seed: int, confounded_class: int | None, order: Order | None = None):
        """The pool after the first round's queries, in ``order`` (``query_order`` of ``select``)."""
        first = self.round_sizes()[0]
        return UserCorrectedDataset(train, first, self.correction, seed, confounded_class, self.user_feedback(), order)
