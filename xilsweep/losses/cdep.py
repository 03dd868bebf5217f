"""CDEP (Rieger et al. 2020): penalise the share of the logits that contextual
decomposition assigns to the masked pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import SettingError, require
from xilsweep.losses.base import MaskPenalty
from xilsweep.models import Normalize

CD_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout)


def propagate(layer: nn.Module, rel: torch.Tensor, irrel: torch.Tensor):
    """One layer of contextual decomposition (the rules of the CDEP code).

    Affine layers split their bias between the parts in proportion to the
    parts' absolute linear outputs; ReLU gives the relevant part its own
    activation and the irrelevant part the rest; max-pooling takes both parts
    at the position where their sum is largest; dropout drops the same units
    of both. Every rule keeps ``rel + irrel`` equal to the layer's output.
    """
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        bias = layer(torch.zeros_like(rel[:1]))
        rel, irrel = layer(rel) - bias, layer(irrel) - bias
        rel_weight, irrel_weight = rel.abs() + 1e-20, irrel.abs() + 1e-20
        rel_share = rel_weight / (rel_weight + irrel_weight)
        return rel + rel_share * bias, irrel + (1 - rel_share) * bias
    if isinstance(layer, nn.ReLU):
        rel_out = F.relu(rel)
        return rel_out, F.relu(rel + irrel) - rel_out
    if isinstance(layer, nn.MaxPool2d):
        both, index = F.max_pool2d(
            rel + irrel,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            ceil_mode=layer.ceil_mode,
            return_indices=True,
        )

        def at_max(part):
            return part.flatten(2).gather(2, index.flatten(2)).view_as(both)

        return at_max(rel), at_max(irrel)
    if isinstance(layer, nn.Dropout):
        keep = layer(torch.ones_like(rel))
        return rel * keep, irrel * keep
    if isinstance(layer, nn.Flatten):
        return layer(rel), layer(irrel)
    raise SettingError(
        "model",
        type(layer).__name__,
        "layers of types Normalize (first), " + ", ".join(t.__name__ for t in CD_LAYERS) + " for loss=cdep",
    )


def contextual_decomposition(model, x: torch.Tensor, mask: torch.Tensor):
    """``(relevant, irrelevant)`` logits of ``model`` on ``x``: the parts due to
    the unmasked and to the masked pixels; they sum to the logits.

    The leading ``Normalize`` acts on each pixel alone, so its output still
    belongs to the pixel's part: the decomposition starts after it, on the
    normalised image (as the CDEP code starts on normalised inputs).
    """
    layers = model.layers()
    while layers and isinstance(layers[0], Normalize):
        x = layers.pop(0)(x)
    rel, irrel = x * ~mask, x * mask
    for layer in layers:
        rel, irrel = propagate(layer, rel, irrel)
    return rel, irrel


def cdep_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum_i [mask_i given] mean_c softmax(irrel_ic, rel_ic)[0] / B``,
    the masked part's share of each class's logit, as the CDEP code computes it
    (``sigmoid(irrel - rel)``). The logits are ``rel + irrel``: the
    decomposition is itself the forward pass."""
    rel, irrel = contextual_decomposition(model, x, mask)
    masked_share = torch.sigmoid(irrel - rel).mean(dim=1)
    has_feedback = mask.flatten(1).any(1)
    return rel + irrel, (masked_share * has_feedback).sum() / len(x)


class CDEP(MaskPenalty):
    """CDEP: ``base loss + lam * cdep_penalty``. Needs a model
    with ``layers()`` (ConvNet, MLP) made of the layer types ``propagate`` knows."""

    name = "cdep"
    tag = "CDEP"

    def __init__(self, lam: float = 1000.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def check(self, model) -> None:
        require(
            callable(getattr(model, "layers", None)),
            "model",
            type(model).__name__,
            "a model with layers() (model=cnn, lenet, cnn_examples or mlp) for loss=cdep",
        )

    def penalty(self, model, batch):
        self.check(model)
        return cdep_penalty(model, batch.x, batch.mask)
