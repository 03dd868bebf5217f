"""Small image classifiers. Inputs are pixels in [0, 1]; each model
normalises them itself with the data's per-channel statistics (supplied by the
job from the data contract, ``XILData.model_inputs``), so masks, corrections and
saliency stay in pixel space."""

from __future__ import annotations

import torch
from torch import nn

from xilsweep.data import MNIST_MEAN, MNIST_STD
from xilsweep.errors import require


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
