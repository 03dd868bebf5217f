"""Which training samples the user is asked to correct (``pool.select``): the order in
which a query strategy puts the candidates (training samples of the confounded class that
carry a confounder, not yet in the pool), read on the current model.

A strategy reads what a user at the screen can see: the training images, their labels, the
model's predictions and explanations on them, and the confounder a user sees in the image
(its mask: where the explanation is judged to be right or wrong). Never test data, the
oracle, or another model.

- ``random``: the seeded order (the guide's pool; every strategy breaks its ties by it).
- ``least_confident``, ``margin`` (CAIPI's, Teso & Kersting 2019): the lowest top-class
  probability, the smallest gap between the two most probable classes (on two classes the
  same order).
- ``explanation``: the largest share of the true class's explanation on the confounder,
  what a user reading explanations flags first.
- ``caipi``: right for the wrong reason first (predicted correctly, the explanation's
  hottest pixel on the confounder), then the rest; least confident first within each.
"""

from __future__ import annotations

import torch
from torch import nn

from xilsweep.data import Split
from xilsweep.metrics import attribution_in_mask
from xilsweep.training import predict_logits

SELECTIONS = ("random", "least_confident", "margin", "explanation", "caipi")


def hottest_on_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, whether the map's largest value lies on the mask."""
    return masks.flatten(1).gather(1, maps.flatten(1).argmax(1, keepdim=True)).squeeze(1)


def query_scores(select: str, model: nn.Module, explainer, candidates: Split) -> torch.Tensor:
    """One score per candidate, the highest asked about first (``random``: all equal)."""
    if select == "random":
        return torch.zeros(len(candidates))
    labels = candidates.labels
    if select == "explanation":
        return attribution_in_mask(explainer.attribute(model, candidates.x, labels).cpu(), candidates.mask)
    device = next(model.parameters()).device
    probs = predict_logits(model, candidates.x.to(device)).softmax(1).cpu()
    top = probs.topk(2, dim=1).values
    if select == "least_confident":
        return 1 - top[:, 0]
    if select == "margin":
        return top[:, 1] - top[:, 0]
    maps = explainer.attribute(model, candidates.x, labels).cpu()
    wrong_reason = (probs.argmax(1) == labels) & hottest_on_mask(maps, candidates.mask)
    return wrong_reason.float() + (1 - top[:, 0])  # uncertainty < 1: the flag decides first


def query_order(select: str, model: nn.Module | None, explainer, candidates: Split) -> torch.Tensor:
    """The candidates' positions in the order the strategy asks about them (ties: as given)."""
    return query_scores(select, model, explainer, candidates).argsort(descending=True, stable=True)
