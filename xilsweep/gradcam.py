"""GradCAM (Selvaraju et al. 2017) on a model's last convolution, the one implementation
the explainer (``reasons.GradCAM``) and the penalties that train on it (RRR-G, HINT) share,
and the ways a map meets the input's pixels.

A map has one cell per unit of the last convolution's output. ``placed`` puts each cell
on the centre of its receptive field in the input (the explainer's pictures and figures);
``nearest`` stretches the map over the input as captum's ``LayerAttribution.interpolate``
does and ``resized_mask`` shrinks a mask onto the map as torchvision's ``Resize`` does (the
XIL typology's RRR-G and HINT code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import require


def require_conv(model: nn.Module, needed_by: str) -> None:
    require(
        getattr(model, "last_conv", None) is not None,
        "model",
        type(model).__name__,
        f"a model with a convolution (model=cnn, lenet, cnn_examples or torchvision) for {needed_by}",
    )


def gradcam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None):
    """``(logits, maps)``: unrectified GradCAM maps [B, 1, h, w] at ``model.last_conv``
    for ``classes`` (None: the predicted ones), ``sum_k mean_ij(dz_c/dA_kij) A_k``.

    The channel weights ``mean_ij(dz_c/dA_kij)`` are constants, as captum's
    ``LayerGradCam`` gives them (its gradients keep no graph); the activations keep
    theirs, so a penalty on the maps trains the layers up to the convolution, as the
    reference code's does. Samples are independent, so the gradient of the batch's
    summed scores gives each sample's own weights.
    """
    captured = []
    handle = model.last_conv.register_forward_hook(lambda _module, _inputs, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (activations,) = captured
    if classes is None:
        classes = logits.detach().argmax(dim=1)
    score = logits.gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, activations, retain_graph=True)
    return logits, (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1, keepdim=True)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map shifted to 0 at its minimum and divided by its range plus 1e-6: [0, 1)
    (the XIL typology's ``norm_saliencies_fast``)."""
    shifted = maps - maps.amin(dim=(2, 3), keepdim=True)
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + 1e-6)


def nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps stretched over ``size`` by nearest-neighbour interpolation (captum's
    ``LayerAttribution.interpolate``)."""
    return F.interpolate(maps, size=size, mode="nearest")


def resized_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A 0/1 mask [B, 1, H, W] shrunk to the map's ``size`` as torchvision's ``Resize`` does
    (bilinear, antialiased; its tensor path, without importing torchvision): each cell holds
    the marked share around it."""
    return F.interpolate(mask.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def receptive_field(layers) -> tuple[int, float]:
    """``(stride, offset)`` of the output units of a stack of convolutions and
    poolings: unit ``r`` of the last layer is centred on input pixel
    ``offset + stride * r`` (pixel centres at integer coordinates)."""
    stride, offset = 1, 0.0
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            kernel, step, padding = (layer.kernel_size, layer.stride, layer.padding)
            kernel, step, padding = (v[0] if isinstance(v, tuple) else v for v in (kernel, step, padding))
            offset += ((kernel - 1) / 2 - padding) * stride
            stride *= step
    return stride, offset


def align_to_input(maps: torch.Tensor, stride: int, offset: float, size: tuple[int, int]) -> torch.Tensor:
    """Layer maps [N, C, h, w] resampled (bilinearly) to the input ``size`` so
    that each unit lands on the centre of its receptive field; plain resizing
    would stretch the map over the whole image and shift it towards the border."""
    h, w = maps.shape[-2:]
    rows = (torch.arange(size[0], dtype=maps.dtype) - offset) / stride  # map coordinate of each input pixel
    cols = (torch.arange(size[1], dtype=maps.dtype) - offset) / stride
    grid_y = (2 * rows / max(h - 1, 1) - 1).view(-1, 1).expand(size)
    grid_x = (2 * cols / max(w - 1, 1) - 1).view(1, -1).expand(size)
    grid = torch.stack([grid_x, grid_y], dim=-1).to(maps.device).expand(len(maps), *size, 2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def placed(model: nn.Module, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``model``'s last-convolution maps with each unit on its receptive field's centre in an
    input of ``size``. A network that is not one stack of layers (residual blocks, a
    torchvision model) has no such simple centres: its maps are resized bilinearly over the
    input, each unit covering its share of the image (GradCAM's usual upsampling)."""
    layers = list(getattr(model, "features", ()))
    if model.last_conv not in layers:
        return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    stride, offset = receptive_field(layers[: layers.index(model.last_conv) + 1])
    return align_to_input(maps, stride, offset, size)
