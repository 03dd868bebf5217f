"""CDEP (Rieger et al. 2020): penalise the share of the logits that contextual
decomposition assigns to the masked pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import SettingError, require
from xilsweep.losses.base import MaskPenalty, has_feedback
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
        # both parts through the layer in one call, less its bias (its output on zeros)
        bias = 0.0 if layer.bias is None else layer.bias.view(-1, *[1] * (rel.ndim - 2))
        both, n = layer(torch.cat([rel, irrel])) - bias, len(rel)
        rel, irrel = both[:n], both[n:]
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
    the masked pixels (the region the penalty asks about, in the reference code's
    "relevant" slot, whose own activation the ReLU rule keeps) and to the rest;
    they sum to the logits.

    The leading ``Normalize`` acts on each pixel alone, so its output still
    belongs to the pixel's part: the decomposition starts after it, on the
    normalised image (as the CDEP code starts on normalised inputs).
    """
    layers = model.layers()
    while layers and isinstance(layers[0], Normalize):
        x = layers.pop(0)(x)
    rel, irrel = x * mask, x * ~mask
    for layer in layers:
        rel, irrel = propagate(layer, rel, irrel)
    return rel, irrel


def cdep_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: ``sum_i [mask_i given] mean_c softmax(rel_ic, irrel_ic)[0] / B``,
    the masked part's share of each class's logit, as the CDEP code computes it
    (``softmax(stack(rel, irrel))[:, 0]``).

    Samples are independent and those without a mask add nothing, so only the
    samples with one are decomposed; the logits are the model's on the whole batch."""
    given = has_feedback(mask)
    rel, irrel = contextual_decomposition(model, x[given], mask[given])
    return model(x), torch.sigmoid(rel - irrel).mean(dim=1).sum() / len(x)


class CDEP(MaskPenalty):
    """CDEP: ``base loss + lam * cdep_penalty``. Needs a model
    with ``layers()`` (ConvNet, MLP) made of the layer types ``propagate`` knows."""

    name = "cdep"
    tag = "CDEP"
    revision = 2  # the masked part in the relevant slot (the CDEP code's roles)

    def __init__(self, lam: float = 0.1, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def check(self, model) -> None:
        """Contextual decomposition walks a plain stack of the layers ``propagate`` knows;
        it has no rule for residual blocks or batch norm (a torchvision architecture)."""
        require(
            callable(getattr(model, "layers", None)),
            "model",
            getattr(model, "name", type(model).__name__),
            "a plain stack of layers (model=cnn, lenet, cnn_examples or mlp) for loss=cdep: its contextual "
            "decomposition has no rules for residual blocks or batch norm",
        )

    def penalty(self, model, batch):
        self.check(model)
        return cdep_penalty(model, batch.x, batch.mask)
