"""Patch-MNIST: the 0-vs-8 digits in RGB where every training 8 (with
``patched_class=0``, every 0) carries a coloured square patch (the shape of the
coloured patches beside skin lesions in ISIC 2019, the XIL typology's real-world
benchmark), so the three-channel path runs end to end on the bundled digits.
Config target of ``conf/data/patch_mnist.yaml``.

The patch lies on background connected to the image border with a one-pixel margin
(``data.background_squares``), never in a digit's hole, so it never draws part of
the other class's shape. Splits as 08MNIST: ``train`` (every 8 patched), ``val``
(clean, or patched like training with ``val_confounded``), ``test`` (clean),
``test_dotted`` (every test image patched, image for image), ``train_decorrelated``
(the oracle's: the same training digits, the patch on a random half of each class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xilsweep.data import (
    CONFOUNDED_CLASS,
    DIGITS,
    MNIST_MEAN,
    MNIST_STD,
    POSITION_RULES,
    CachedMNISTData,
    Split,
    background_squares,
    digit_pair,
    half_of_each_class,
    load_mnist,
)
from xilsweep.errors import require, require_choice

CHANNELS = 3


@dataclass
class PatchMNIST(CachedMNISTData):
    """Settings of Patch-MNIST; ``load()`` builds or reads the cached splits under
    ``root/PatchMNIST/<key>/``. ``image_size``: pixels per side (the 28-pixel digit
    in the middle of a black frame); ``patch_size``: the patch's pixels per side;
    ``colour``: its red, green and blue in [0, 1]; ``positions``: ``corners`` (a
    random free corner) or ``random`` (anywhere on the border-connected background);
    ``patched_class``: the class whose training images carry it (0: the 0s, 1: the 8s);
    ``fraction_patched``: the share of them that do."""

    # A large frame and patch: a 4-pixel patch on the 28-pixel digits is learned beside the digit,
    # not instead of it (the confounded model keeps 99% clean accuracy); this one is (about 50%).
    image_size: int = 48
    patch_size: int = 16
    colour: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    positions: str = "corners"
    patched_class: int = CONFOUNDED_CLASS
    fraction_patched: float = 1.0

    name = "patch_mnist"  # the data set in the tuned settings (xilsweep/losses/tuned.py)
    folder = "PatchMNIST"
    num_classes = len(DIGITS)
    class_names = tuple(str(d) for d in DIGITS)
    # the digits are gray (the same in every channel); the small patch barely moves the statistics
    mean, std = MNIST_MEAN * CHANNELS, MNIST_STD * CHANNELS

    @property
    def confounded_class(self) -> int:
        return self.patched_class

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (CHANNELS, self.image_size, self.image_size)

    def __post_init__(self):
        super().__post_init__()
        require(
            isinstance(self.image_size, int) and 28 <= self.image_size <= 64,
            "image_size",
            self.image_size,
            "an integer from 28 to 64 (the 28-pixel digit in the middle)",
        )
        require(
            isinstance(self.patch_size, int) and 1 <= self.patch_size <= self.image_size // 3,
            "patch_size",
            self.patch_size,
            f"an integer from 1 to {self.image_size // 3} (a third of image_size)",
        )
        self.colour = list(self.colour)
        require(
            len(self.colour) == CHANNELS and all(0 <= c <= 1 for c in self.colour) and any(self.colour),
            "colour",
            self.colour,
            "three numbers in [0, 1] (red, green, blue), not all 0",
        )
        require_choice("positions", self.positions, POSITION_RULES)
        require(self.patched_class in (0, 1), "patched_class", self.patched_class, "0 (the 0s) or 1 (the 8s)")
        require(0 <= self.fraction_patched <= 1, "fraction_patched", self.fraction_patched, "a number in [0, 1]")

    def _generate(self):
        download = self.source == "full"
        g = torch.Generator().manual_seed(self.seed)
        colour = torch.tensor(self.colour).view(1, CHANNELS, 1, 1)
        x, y = digit_pair(*load_mnist(self.mnist_root, train=True, download=download))
        val_idx, train_idx = self.split_indices(len(x), g)

        def framed(digits: torch.Tensor) -> torch.Tensor:
            margin = self.image_size - digits.shape[-1]
            return F.pad(digits, (margin // 2, margin - margin // 2) * 2)  # the digit in the middle

        def place(gray: torch.Tensor) -> torch.Tensor:
            """Where each image's patch goes, when it has one (the same place in every copy)."""
            return background_squares(gray, 1, self.patch_size, g, self.positions == "corners")

        def patched(gray: torch.Tensor, labels: torch.Tensor, place: torch.Tensor, chosen: torch.Tensor) -> dict:
            mask = place & chosen.view(-1, 1, 1, 1)
            rgb = torch.where(mask, colour, gray.expand(-1, CHANNELS, -1, -1))
            return Split(rgb, F.one_hot(labels, len(DIGITS)).float(), mask).to_file()

        def confounded(labels: torch.Tensor) -> torch.Tensor:
            share = torch.where(labels == self.patched_class, self.fraction_patched, 0.0)
            return torch.rand(len(labels), generator=g) < share

        x_train, y_train, x_val, y_val = framed(x[train_idx]), y[train_idx], framed(x[val_idx]), y[val_idx]
        on_train, on_val = place(x_train), place(x_val)
        train = patched(x_train, y_train, on_train, confounded(y_train))
        none = torch.zeros(len(y_val), dtype=torch.bool)
        val = patched(x_val, y_val, on_val, confounded(y_val) if self.val_confounded else none)
        decorrelated = patched(x_train, y_train, on_train, half_of_each_class(y_train, g))
        xt, yt = digit_pair(*load_mnist(self.mnist_root, train=False, download=download))
        xt = framed(xt)
        on_test = place(xt)
        test = patched(xt, yt, on_test, torch.zeros(len(yt), dtype=torch.bool))
        test_dotted = patched(xt, yt, on_test, torch.ones(len(yt), dtype=torch.bool))
        return (
            {"train": train, "val": val, "train_decorrelated": decorrelated},
            {"test": test, "test_dotted": test_dotted},
        )
