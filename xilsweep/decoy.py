"""Decoy-MNIST (Ross et al. 2017): all ten digits, each image with a square
patch in a random corner. In training the patch's gray shade encodes the
label (``255 - 25 * label``); at test time it is the shade of a random digit,
so a model that reads the patch instead of the digit fails there. Masks mark
the patch. Config target of ``conf/data/decoy_mnist.yaml``.

Splits: ``train`` (label-encoding patches), ``val`` (random shades like the
test set, or label-encoding with ``val_confounded``), ``test`` (random shades:
the published benchmark), ``test_dotted`` (the shade of a wrong label on every
image: a model that reads the patch is misled on all of them, one that reads
the digit is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xilsweep.data import CachedMNISTData, Split, load_mnist
from xilsweep.errors import require

NUM_CLASSES = 10
SHADE_STEP = 25  # shade of digit d: 255 - 25 d


def shade(digits: torch.Tensor) -> torch.Tensor:
    """Patch intensity in [0, 1] that encodes each digit."""
    return (255 - SHADE_STEP * digits).float() / 255


def add_patches(x: torch.Tensor, shade_digits: torch.Tensor, size: int, generator: torch.Generator):
    """A ``size`` x ``size`` patch in a random corner of each image, shaded to
    encode ``shade_digits``; returns (images, masks)."""
    n, _, h, w = x.shape
    corner = torch.randint(4, (n,), generator=generator)
    bottom, right = (corner // 2).bool().view(-1, 1), (corner % 2).bool().view(-1, 1)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = torch.where(bottom, rows >= h - size, rows < size)  # [n, h]
    in_cols = torch.where(right, cols >= w - size, cols < size)  # [n, w]
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return torch.where(mask, shade(shade_digits).view(-1, 1, 1, 1), x), mask


@dataclass
class DecoyMNIST(CachedMNISTData):
    """Settings of Decoy-MNIST; ``load()`` builds or reads the cached splits
    under ``root/DecoyMNIST/<key>/``."""

    patch_size: int = 4

    name = "decoy_mnist"  # the data set in the tuned settings (xilsweep/losses/tuned.py)
    folder = "DecoyMNIST"
    num_classes = NUM_CLASSES
    class_names = tuple(str(d) for d in range(NUM_CLASSES))
    # Every training image carries a decoy, so the user may correct any class.
    confounded_class = None

    def __post_init__(self):
        super().__post_init__()
        require(
            isinstance(self.patch_size, int) and 1 <= self.patch_size <= 14,
            "patch_size",
            self.patch_size,
            "an integer from 1 to 14",
        )

    def _generate(self):
        download = self.source == "full"
        g = torch.Generator().manual_seed(self.seed)

        def decoyed(images, labels, shade_digits):
            x, mask = add_patches(images.float().div(255).unsqueeze(1), shade_digits, self.patch_size, g)
            return Split(x, F.one_hot(labels, NUM_CLASSES).float(), mask).to_file()

        def random_digits(n):
            return torch.randint(NUM_CLASSES, (n,), generator=g)

        images, labels = load_mnist(self.mnist_root, train=True, download=download)
        val_idx, train_idx = self.split_indices(len(images), g)
        train = decoyed(images[train_idx], labels[train_idx], labels[train_idx])
        val_shades = labels[val_idx] if self.val_confounded else random_digits(len(val_idx))
        val = decoyed(images[val_idx], labels[val_idx], val_shades)
        test_images, test_labels = load_mnist(self.mnist_root, train=False, download=download)
        test = decoyed(test_images, test_labels, random_digits(len(test_labels)))
        wrong = (test_labels + torch.randint(1, NUM_CLASSES, (len(test_labels),), generator=g)) % NUM_CLASSES
        test_dotted = decoyed(test_images, test_labels, wrong)
        # the oracle's: the same training digits, patch shades unrelated to the label
        decorrelated = decoyed(images[train_idx], labels[train_idx], random_digits(len(train_idx)))
        return (
            {"train": train, "val": val, "train_decorrelated": decorrelated},
            {"test": test, "test_dotted": test_dotted},
        )
