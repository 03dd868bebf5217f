"""Image classifiers: two small hand-written networks and any torchvision
architecture. Inputs are pixels in [0, 1]; each model normalises them itself with
the data's per-channel statistics (supplied by the job from the data contract,
``XILData.model_inputs``), so masks, corrections and saliency stay in pixel space."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xilsweep.data import MNIST_MEAN, MNIST_STD
from xilsweep.errors import SettingError, require


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (one value: every channel). The statistics are
    buffers outside the state dict: they come from the data, not the weights."""

    def __init__(self, mean: tuple[float, ...] = MNIST_MEAN, std: tuple[float, ...] = MNIST_STD):
        super().__init__()
        require(len(mean) == len(std) >= 1, "std", list(std), f"one value per value of mean ({list(mean)})")
        require(all(s > 0 for s in std), "std", list(std), "positive numbers")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class ConvNet(nn.Module):
    """conv(+optional 2x2 max-pool, +ReLU) blocks, then a ReLU MLP head.

    ``channels=[32, 64], pool=[False, True], hidden=[128]`` is the
    pytorch/examples MNIST network; ``[6, 16]`` with 5x5 kernels and pooling
    after each is LeNet-5 sized.
    """

    def __init__(
        self,
        channels: list[int] = (32, 64),
        kernel_size: int = 3,
        pool: list[bool] = (False, True),
        hidden: list[int] = (128,),
        dropout: float = 0.0,
        num_classes: int = 2,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        mean: tuple[float, ...] = MNIST_MEAN,
        std: tuple[float, ...] = MNIST_STD,
    ):
        super().__init__()
        channels, pool, hidden = list(channels), list(pool), list(hidden)
        require(
            len(channels) >= 1 and all(c >= 1 for c in channels),
            "channels",
            channels,
            "a non-empty list of positive integers",
        )
        require(len(pool) == len(channels), "pool", pool, f"one true/false per conv layer ({len(channels)})")
        require(0 <= dropout < 1, "dropout", dropout, "a number in [0, 1)")
        layers: list[nn.Module] = [Normalize(mean, std)]
        in_ch = in_shape[0]
        for out_ch, pooled in zip(channels, pool, strict=True):
            # Pooling before the ReLU is the same function (ReLU is monotone) on a quarter of the values.
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size), *([nn.MaxPool2d(2)] if pooled else []), nn.ReLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *in_shape)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            head += [nn.Linear(n_flat, width), nn.ReLU(), nn.Dropout(dropout)]
            n_flat = width
        head.append(nn.Linear(n_flat, num_classes))
        self.classifier = nn.Sequential(*head)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The layer GradCAM explains."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)][-1]

    def layers(self) -> list[nn.Module]:
        """The layers in the order ``forward`` applies them (contextual decomposition walks them)."""
        return [*self.features, *self.classifier]

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network (Ross et al. 2017 use 50-30 for Decoy-MNIST)."""

    def __init__(
        self,
        hidden: list[int] = (50, 30),
        num_classes: int = 2,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        mean: tuple[float, ...] = MNIST_MEAN,
        std: tuple[float, ...] = MNIST_STD,
    ):
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
        width = in_shape[0] * in_shape[1] * in_shape[2]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    last_conv = None  # no convolution: GradCAM does not apply, input gradients do

    def layers(self) -> list[nn.Module]:
        """The layers in the order ``forward`` applies them (contextual decomposition walks them)."""
        return list(self.net)

    def forward(self, x):
        return self.net(x)


def first_and_last(net: nn.Module, kind: type) -> tuple[str | None, str | None]:
    """The names of the first and the last submodule of ``kind`` in ``net``."""
    names = [name for name, module in net.named_modules() if isinstance(module, kind)]
    return (names[0], names[-1]) if names else (None, None)


def replace_module(net: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent), child, new)


def adapted_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """``conv`` taking ``channels`` input channels; pretrained filters averaged over their
    input channels and spread over the new ones, so a gray image excites them as before."""
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(1, keepdim=True).expand_as(new.weight) * conv.in_channels / channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def torchvision_weights(name: str, weights: str):
    """torchvision's weights ``weights`` of architecture ``name``, their file downloaded into
    torch hub's cache on first use (torch writes a temporary file and moves it in whole, so a
    failed download leaves no partial file); one SettingError line when that is not possible."""
    from torchvision import models

    allowed = [w.name for w in models.get_model_weights(name)]
    require(weights in allowed, "weights", weights, f"null (random) or one of {', '.join(allowed)}")
    chosen = models.get_model_weights(name)[weights]
    try:
        return chosen.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, HTTPError, OSError, a hash mismatch: all the same to the user
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise SettingError(
            "weights",
            weights,
            f"weights torchvision can fetch ({type(e).__name__}: {' '.join(str(e).split())}); offline, "
            f"put {Path(chosen.url).name} into {hub} or use weights=null",
        ) from None


class TorchvisionModel(nn.Module):
    """Any torchvision classification architecture by ``name`` (``resnet18``, ``vgg11``,
    ``efficientnet_b0``, ...; ``torchvision.models.list_models``), its first convolution
    adapted to the data's channels and its head to the data's classes, after the data's
    normalisation. ``weights``: null (random initialisation) or a torchvision weights name
    (``IMAGENET1K_V1``); ``gradcam_layer``: the submodule GradCAM explains (a name such as
    ``layer4``; null: the last convolution)."""

    def __init__(
        self,
        name: str = "resnet18",
        weights: str | None = None,
        gradcam_layer: str | None = None,
        num_classes: int = 2,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        mean: tuple[float, ...] = MNIST_MEAN,
        std: tuple[float, ...] = MNIST_STD,
    ):
        super().__init__()
        from torchvision import models

        names = models.list_models(module=models)
        require(name in names, "name", name, f"a torchvision classification model: {', '.join(names)}")
        self.name = name
        if weights is None:
            net = models.get_model(name, num_classes=num_classes)
        else:
            net = models.get_model(name)
            net.load_state_dict(torchvision_weights(name, weights))
            _, head = first_and_last(net, nn.Linear)
            require(head is not None, "name", name, "an architecture with a linear head for pretrained weights")
            old = net.get_submodule(head)
            replace_module(net, head, nn.Linear(old.in_features, num_classes, old.bias is not None))
        first, last = first_and_last(net, nn.Conv2d)
        require(first is not None, "name", name, "an architecture with a convolution")
        if net.get_submodule(first).in_channels != in_shape[0]:
            replace_module(net, first, adapted_conv(net.get_submodule(first), in_shape[0]))
        self.normalize = Normalize(mean, std)
        self.net = net
        self.gradcam_layer = last if gradcam_layer is None else gradcam_layer
        try:
            net.get_submodule(self.gradcam_layer)
        except AttributeError:
            conv_names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
            raise SettingError(
                "gradcam_layer", gradcam_layer, f"null or a submodule of {name}, e.g. {conv_names[-1]}"
            ) from None
        with torch.no_grad():
            try:
                self.eval()(torch.zeros(1, *in_shape))
            except (RuntimeError, AssertionError, ValueError) as e:  # torchvision's own size checks
                raise SettingError(
                    "name", name, f"an architecture that takes {'x'.join(map(str, in_shape))} images ({e})"
                ) from None
        self.train()

    @property
    def last_conv(self) -> nn.Module:
        """The layer GradCAM explains (a name, not a second registration of the module)."""
        return self.net.get_submodule(self.gradcam_layer)

    def forward(self, x):
        return self.net(self.normalize(x))
