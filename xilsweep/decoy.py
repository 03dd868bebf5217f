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

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from xilsweep.data import SOURCES, Split, XILData, load_mnist
from xilsweep.errors import SettingError, require, require_choice
from xilsweep.files import atomic_torch_save, atomic_write_json, build_lock, checked_torch_load

NUM_CLASSES = 10
SHADE_STEP = 25  # shade of digit d: 255 - 25 d
CACHE_FORMAT = 1


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


def split_from_file(d: dict) -> Split:
    return Split(d["x"].float() / 255, F.one_hot(d["labels"].long(), NUM_CLASSES).float(), d["mask"])


@dataclass
class DecoyMNIST:
    """Settings of Decoy-MNIST; ``load()`` builds or reads the cached splits
    under ``root/DecoyMNIST/<key>/`` (the key hashes every generation setting).
    ``n_train`` takes a seeded subset of the training split at load time."""

    root: str = "data"
    source: str = "bundled"
    val_fraction: float = 0.1
    val_confounded: bool = False
    n_train: int | None = None
    seed: int = 0
    patch_size: int = 4

    # Every training image carries a decoy, so the user may correct any class.
    confounded_class = None

    def __post_init__(self):
        require_choice("source", self.source, SOURCES)
        require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "a number in (0, 1)")
        require(self.n_train is None or (isinstance(self.n_train, int) and self.n_train >= 1),
                "n_train", self.n_train, "null (all) or an integer >= 1")
        require(isinstance(self.patch_size, int) and 1 <= self.patch_size <= 14, "patch_size",
                self.patch_size, "an integer from 1 to 14")
        if not Path(self.root).is_dir():
            raise SettingError("root", self.root, "an existing directory holding MNIST/raw/")

    @property
    def mnist_root(self) -> Path:
        return Path(self.root) / ("full" if self.source == "full" else "")

    def generation_settings(self) -> dict:
        s = asdict(self)
        del s["root"], s["n_train"]
        return {"format": CACHE_FORMAT, "dataset": "decoy_mnist", **s}

    @property
    def key(self) -> str:
        blob = json.dumps(self.generation_settings(), sort_keys=True).encode()
        return f"{self.source}-{hashlib.sha256(blob).hexdigest()[:10]}"

    @property
    def directory(self) -> Path:
        return Path(self.root) / "DecoyMNIST" / self.key

    def load(self) -> XILData:
        train_file, test_file = self.directory / "train.pth", self.directory / "test.pth"
        settings = self.generation_settings()
        with build_lock(self.directory / "build"):
            train_payload = checked_torch_load(train_file, expect_meta=settings)
            test_payload = checked_torch_load(test_file, expect_meta=settings)
            if train_payload is None or test_payload is None:
                train_payload, test_payload = self._generate()
                atomic_torch_save(train_payload, train_file, meta=settings)
                atomic_torch_save(test_payload, test_file, meta=settings)
                atomic_write_json(settings, self.directory / "settings.json")
        train = split_from_file(train_payload["train"])
        if self.n_train is not None:
            require(self.n_train <= len(train), "n_train", self.n_train,
                    f"at most {len(train)}, the size of the training split")
            g = torch.Generator().manual_seed(self.seed + 1)
            train = train.subset(torch.randperm(len(train), generator=g)[: self.n_train].sort().values)
        return XILData(train=train, val=split_from_file(train_payload["val"]),
                       test=split_from_file(test_payload["test"]),
                       test_dotted=split_from_file(test_payload["test_dotted"]),
                       key=self.key, directory=self.directory)

    def _generate(self):
        download = self.source == "full"
        g = torch.Generator().manual_seed(self.seed)

        def decoyed(images, labels, shade_digits):
            x, mask = add_patches(images.float().div(255).unsqueeze(1), shade_digits, self.patch_size, g)
            return Split(x, F.one_hot(labels, NUM_CLASSES).float(), mask).to_file()

        def random_digits(n):
            return torch.randint(NUM_CLASSES, (n,), generator=g)

        images, labels = load_mnist(self.mnist_root, train=True, download=download)
        order = torch.randperm(len(images), generator=g)
        n_val = round(self.val_fraction * len(images))
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        train = decoyed(images[train_idx], labels[train_idx], labels[train_idx])
        val_shades = labels[val_idx] if self.val_confounded else random_digits(n_val)
        val = decoyed(images[val_idx], labels[val_idx], val_shades)
        images, labels = load_mnist(self.mnist_root, train=False, download=download)
        test = decoyed(images, labels, random_digits(len(labels)))
        wrong = (labels + torch.randint(1, NUM_CLASSES, (len(labels),), generator=g)) % NUM_CLASSES
        test_dotted = decoyed(images, labels, wrong)
        return {"train": train, "val": val}, {"test": test, "test_dotted": test_dotted}
