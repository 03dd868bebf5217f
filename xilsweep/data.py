"""The data contract (``XILData``: what a job needs from a data set), the cached
data sets' shared part (``CachedData``) and confounded 0-vs-8 MNIST ("08MNIST"):
loading, the dot confounder, cached splits.

Images live in memory as float tensors in [0, 1] with shape [N, C, H, W]
(08MNIST: [N, 1, 28, 28]); masks are bool [N, 1, H, W]; targets are one-hot
[N, classes] (08MNIST: class 0 = digit 0, class 1 = digit 8), as the
experiment guide's code expects; ``Split.labels`` gives the class indices.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from xilsweep.errors import DataError, SettingError, require, require_choice
from xilsweep.files import atomic_torch_save, atomic_write_json, build_lock, checked_torch_load

DIGITS = (0, 8)  # class index i is digit DIGITS[i]
CONFOUNDED_CLASS = 1  # the 8s carry the dots
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # per channel, of the MNIST training digits
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SOURCES = ("bundled", "full")
POSITION_RULES = ("random", "corners")
CACHE_FORMAT = 2  # 2: dots on border-connected background only, decorrelated training split


@dataclass
class Split:
    """Images, one-hot targets and dot masks of one data split."""

    x: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.targets.argmax(dim=-1)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.targets[index], self.mask[index])

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.targets.to(device), self.mask.to(device))

    def to_file(self) -> dict:
        """Compact on-disk form: uint8 pixels, bool masks, class indices."""
        return {
            "x": (self.x * 255).round().to(torch.uint8),
            "labels": self.labels.to(torch.uint8),
            "mask": self.mask,
        }

    @classmethod
    def from_file(cls, d: dict, num_classes: int) -> "Split":
        return cls(d["x"].float() / 255, F.one_hot(d["labels"].long(), num_classes).float(), d["mask"])


def concat(a: Split, b: Split) -> Split:
    return Split(torch.cat([a.x, b.x]), torch.cat([a.targets, b.targets]), torch.cat([a.mask, b.mask]))


@dataclass
class XILData:
    """The data contract: everything a job needs from a data set, in one place. The model
    (input shape, classes, normalisation), the explainer, the pool, the TensorBoard images
    and the report read it from here; nothing else assumes an image size, a channel count
    or a class.

    - ``train``, ``val``, ``test``: the splits, each image with its confounder mask (all
      False where an image carries none). ``train`` is what fine-tuning uses (a subset when
      ``n_train`` is set); ``full_train`` is the whole confounded training split the
      confounded model is trained on (None: same as ``train``).
    - ``test_dotted``: the test images with the confounder, image for image, and its masks:
      what the reliance figures compare against ``test``.
    - ``decorrelated_train``: the training images with the confounder on a random half of
      every class, what the oracle (the floor of every reliance figure) learns from; None
      when the data set has none: no oracle, reliance is read against the confounded
      model alone.
    - ``confounded_class``: the class the confounder points to; None: per sample only
      (every class carries one, as in Decoy-MNIST).
    - ``class_names``, ``mean`` and ``std`` (per channel, what the model normalises with);
      ``in_shape`` (channels, height, width) follows from the images.
    - ``key`` names the generation settings, ``directory`` holds the cache and the reference models.
    """

    train: Split
    val: Split
    test: Split
    test_dotted: Split
    key: str
    directory: Path
    confounded_class: int | None
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    full_train: Split | None = None
    decorrelated_train: Split | None = None

    @property
    def num_classes(self) -> int:
        return self.train.targets.shape[1]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def has_oracle(self) -> bool:
        return self.decorrelated_train is not None

    def model_inputs(self) -> dict:
        """What a model is built for: the constructor arguments the job supplies."""
        return {"num_classes": self.num_classes, "in_shape": self.in_shape, "mean": self.mean, "std": self.std}

    @property
    def pretrain_split(self) -> Split:
        return self.train if self.full_train is None else self.full_train

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test, self.test_dotted):
            for tensor in (split.x, split.targets, split.mask):
                h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Confounder:
    """Square bright dots on background pixels; the mask marks exactly them."""

    n_dots: int = 16
    dot_size: int = 3
    positions: str = "random"
    intensity: float = 1.0
    fraction_eights: float = 1.0
    fraction_zeros: float = 0.0

    def __post_init__(self):
        require(isinstance(self.n_dots, int) and self.n_dots >= 1, "n_dots", self.n_dots, "an integer >= 1")
        require(
            isinstance(self.dot_size, int) and 1 <= self.dot_size <= 4,
            "dot_size",
            self.dot_size,
            "an integer from 1 to 4",
        )
        require_choice("positions", self.positions, POSITION_RULES)
        require(
            self.positions != "corners" or self.n_dots <= 4,
            "n_dots",
            self.n_dots,
            "at most 4 with positions=corners (one dot per corner)",
        )
        require(0 < self.intensity <= 1, "intensity", self.intensity, "a number in (0, 1]")
        for name in ("fraction_eights", "fraction_zeros"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "a number in [0, 1]")

    def dot_masks(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Masks [N, 1, H, W] of up to n_dots separate dots per image (``background_squares``),
        or with ``positions=corners`` one dot per corner."""
        if self.positions != "corners":
            return background_squares(x, self.n_dots, self.dot_size, generator)
        n, _, h, w = x.shape
        s = self.dot_size
        rows, cols = h - s + 1, w - s + 1  # top-left positions
        top_left = torch.zeros(n, rows * cols)
        near, far_row, far_col = 1, h - 1 - s, w - 1 - s
        corners = torch.tensor(
            [near * cols + near, near * cols + far_col, far_row * cols + near, far_row * cols + far_col]
        )
        top_left[:, corners[: self.n_dots]] = 1.0
        return squares_at(top_left, n, rows, cols, s)

    def apply(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, chosen: torch.Tensor | None = None
    ):
        """Dot the images ``chosen`` (default: the configured share of 8s and 0s); returns (images, masks)."""
        if chosen is None:
            share = torch.where(labels == CONFOUNDED_CLASS, self.fraction_eights, self.fraction_zeros)
            chosen = torch.rand(len(x), generator=generator) < share
        masks = self.dot_masks(x, generator) & chosen.view(-1, 1, 1, 1)
        return torch.where(masks, torch.tensor(self.intensity), x), masks


def squares_at(top_left: torch.Tensor, n: int, rows: int, cols: int, size: int) -> torch.Tensor:
    """Masks [N, 1, H, W]: each top-left marker of ``top_left`` [N, rows * cols] spread over a ``size`` square."""
    square = F.conv_transpose2d(top_left.view(n, 1, rows, cols), torch.ones(1, 1, size, size))
    return square > 0


def background_squares(
    x: torch.Tensor, n_squares: int, size: int, generator: torch.Generator, corners: bool = False
) -> torch.Tensor:
    """Masks [N, 1, H, W] of up to ``n_squares`` separate ``size`` x ``size`` squares per image,
    at random places (``corners``: in the image's corners only).

    A square and a one-pixel margin around it lie on background connected to
    the image border, never in an enclosed hole (a dot inside a 0 would
    draw an 8's crossing), and squares never touch each other. An image with
    too little room gets fewer.
    """
    n, _, h, w = x.shape
    s = size
    rows, cols = h - s + 1, w - s + 1  # top-left positions
    top_left = torch.zeros(n, rows * cols)
    blocked = (~border_background(x)).float()
    free = F.max_pool2d(blocked, kernel_size=s + 2, stride=1, padding=1)[:, 0, :rows, :cols] == 0
    if corners:
        corner = torch.zeros(rows, cols, dtype=torch.bool)
        corner[:: rows - 1, :: cols - 1] = True
        free &= corner
    scores = torch.rand(free.shape, generator=generator).masked_fill(~free, -1.0).flatten(1)
    row_of, col_of = torch.arange(rows).view(1, -1, 1), torch.arange(cols).view(1, 1, -1)
    for _ in range(n_squares):  # one square per image per step, all images at once
        best, where = scores.max(1)
        placed = (best >= 0).float().view(-1, 1)
        top_left.scatter_add_(1, where.view(-1, 1), placed)
        # no later square within a square's width plus a gap of this one
        r, c = (where // cols).view(-1, 1, 1), (where % cols).view(-1, 1, 1)
        near = ((row_of - r).abs() <= s) & ((col_of - c).abs() <= s)
        scores = scores.masked_fill(near.flatten(1), -1.0)
    return squares_at(top_left, n, rows, cols, s)


def border_background(x: torch.Tensor) -> torch.Tensor:
    """Background pixels (0 in every channel) that a 4-connected path of background links
    to the image border: everything outside the digit, not its enclosed holes."""
    background = (x == 0).all(1)
    reached = torch.zeros_like(background)
    reached[:, 0, :] = reached[:, -1, :] = reached[:, :, 0] = reached[:, :, -1] = True
    reached &= background
    while True:  # grow from the border through background until nothing changes
        grown = reached.clone()
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown[:, :, 1:] |= reached[:, :, :-1]
        grown[:, :, :-1] |= reached[:, :, 1:]
        grown &= background
        if torch.equal(grown, reached):
            return reached.unsqueeze(1)
        reached = grown


def half_of_each_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A seeded choice of half the samples of every class (rounded down), so a
    confounder put on them says nothing about the label."""
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        chosen[members[torch.randperm(len(members), generator=generator)[: len(members) // 2]]] = True
    return chosen


def _extract(raw_dir: Path, name: str) -> Path:
    """torchvision reads the extracted IDX files; make them from the .gz once."""
    target = raw_dir / name
    if not target.exists():
        archive = raw_dir / f"{name}.gz"
        if not archive.exists():
            raise DataError(f"missing MNIST file {archive}; data.root must hold MNIST/raw/*.gz")
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        try:
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"corrupt MNIST file {archive}: {e}") from e
        os.replace(tmp, target)
    return target


def read_idx(read, path: Path) -> torch.Tensor:
    """An extracted MNIST file read by torchvision's ``read``; DataError naming it when it is not MNIST data."""
    try:
        return read(str(path))
    except Exception as e:  # torchvision asserts on the IDX header, often without a message
        reason = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} on the IDX header"
        raise DataError(
            f"{path} is not an MNIST IDX file ({reason}); delete it and put the original {path.name}.gz beside it"
        ) from e


def load_mnist(root: Path, train: bool, download: bool = False):
    """Raw MNIST as (uint8 images [N, 28, 28], int64 labels [N])."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw_dir = Path(root) / "MNIST" / "raw"
    if download:
        try:
            MNIST(str(root), train=train, download=True)
        except Exception as e:  # torchvision raises RuntimeError/URLError/OSError
            detail = " ".join(str(e).split())  # torchvision's message spans several lines
            raise DataError(
                f"could not download MNIST into {raw_dir} ({detail}); without internet use "
                f"data=mnist08 (the bundled subset), or put the four MNIST .gz files into {raw_dir}"
            ) from e
    image_file, label_file = (_extract(raw_dir, name) for name in MNIST_FILES[train])
    images, labels = read_idx(read_image_file, image_file), read_idx(read_label_file, label_file)
    if len(images) != len(labels):
        raise DataError(f"MNIST files in {raw_dir} disagree: {len(images)} images, {len(labels)} labels")
    return images, labels


def digit_pair(images: torch.Tensor, labels: torch.Tensor, digits: tuple[int, int] = DIGITS):
    """The images of two digits in [0, 1], [N, 1, H, W], and their class (1: ``digits[1]``)."""
    keep = (labels == digits[0]) | (labels == digits[1])
    x = images[keep].float().div(255).unsqueeze(1)
    return x, (labels[keep] == digits[1]).long()


# data set name -> class, filled as data set classes are defined (config group ``data``)
DATASETS: dict[str, type] = {}


@dataclass
class CachedData:
    """The shared part of every data option: the cache under ``root/<folder>/<key>/`` (the
    key hashes every generation setting, so a changed setting makes new files instead of
    reusing stale ones), atomic checked files, one builder at a time, the seeded ``n_train``
    subset taken at load time, and the contract (``XILData``) made from the files.

    Subclasses (one module and one ``conf/data/<name>.yaml`` each, docs/development.md)
    define ``name`` (the config option), ``folder``, ``train_file``/``test_file``, what
    the contract needs before any data is read (``num_classes``, ``in_shape``,
    ``class_names``, ``confounded_class``: the class index the confounder points to, or
    None), the normalisation (``mean``, ``std``, or ``statistics()``) and ``_generate()``,
    which returns the training payload (``train``, ``val``, optionally
    ``train_decorrelated``: without it there is no oracle) and the test payload (``test``,
    ``test_dotted``), each split in ``Split.to_file`` form.
    """

    root: str = "data"
    n_train: int | None = None
    seed: int = 0

    folder = "data"
    train_file, test_file = "train.pth", "test.pth"
    confounded_class = None  # the class the confounder points to; None: spread over all classes

    def __init_subclass__(cls, **kwargs):
        """A data set that names itself (``name``, as in the tuned settings) is a config option."""
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            if cls.name in DATASETS:
                raise TypeError(f"two data sets named {cls.name!r}")
            DATASETS[cls.name] = cls

    def __post_init__(self):
        require(
            self.n_train is None or (isinstance(self.n_train, int) and self.n_train >= 1),
            "n_train",
            self.n_train,
            "null (all) or an integer >= 1",
        )

    def model_inputs(self) -> dict:
        """What a model is built for, as far as the settings say before any data is read."""
        return {"num_classes": self.num_classes, "in_shape": tuple(self.in_shape)}

    def generation_settings(self) -> dict:
        s = asdict(self)
        del s["root"], s["n_train"]
        return {"format": CACHE_FORMAT, "dataset": self.folder, **s}

    key_prefix = "data"

    @property
    def key(self) -> str:
        blob = json.dumps(self.generation_settings(), sort_keys=True).encode()
        return f"{self.key_prefix}-{hashlib.sha256(blob).hexdigest()[:10]}"

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.folder / self.key

    def confounded_index(self) -> int | None:
        """The class index the confounder points to (None: per sample only)."""
        return self.confounded_class

    def statistics(self, train_payload: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel mean and standard deviation the model normalises with."""
        return self.mean, self.std

    def load(self) -> XILData:
        train_file, test_file = self.directory / self.train_file, self.directory / self.test_file
        settings = self.generation_settings()
        with build_lock(self.directory / "build"):
            train_payload = checked_torch_load(train_file, expect_meta=settings)
            test_payload = checked_torch_load(test_file, expect_meta=settings)
            if train_payload is None or test_payload is None:
                train_payload, test_payload = self._generate()
                atomic_torch_save(train_payload, train_file, meta=settings)
                atomic_torch_save(test_payload, test_file, meta=settings)
                atomic_write_json(settings, self.directory / "settings.json")

        def split(payload, name):
            return Split.from_file(payload[name], self.num_classes)

        train = full_train = split(train_payload, "train")
        if self.n_train is not None:
            require(
                self.n_train <= len(train),
                "n_train",
                self.n_train,
                f"at most {len(train)}, the size of the training split",
            )
            g = torch.Generator().manual_seed(self.seed + 1)
            train = train.subset(torch.randperm(len(train), generator=g)[: self.n_train].sort().values)
        mean, std = self.statistics(train_payload)
        return XILData(
            train=train,
            val=split(train_payload, "val"),
            test=split(test_payload, "test"),
            test_dotted=split(test_payload, "test_dotted"),
            key=self.key,
            directory=self.directory,
            full_train=full_train,
            decorrelated_train=split(train_payload, "train_decorrelated")
            if "train_decorrelated" in train_payload
            else None,
            confounded_class=self.confounded_index(),
            class_names=tuple(self.class_names),
            mean=tuple(mean),
            std=tuple(std),
        )

    def _generate(self):
        raise NotImplementedError


@dataclass
class CachedMNISTData(CachedData):
    """The MNIST-based data options' shared settings: the digits' ``source``, the
    validation share of the training digits and whether validation carries the confounder."""

    source: str = "bundled"
    val_fraction: float = 0.1
    val_confounded: bool = False

    in_shape = (1, 28, 28)
    mean, std = MNIST_MEAN, MNIST_STD

    def __post_init__(self):
        require_choice("source", self.source, SOURCES)
        require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "a number in (0, 1)")
        super().__post_init__()
        if not Path(self.root).is_dir():
            raise SettingError("root", self.root, "an existing directory holding MNIST/raw/")

    @property
    def key_prefix(self) -> str:
        return self.source

    @property
    def mnist_root(self) -> Path:
        # The full set gets its own folder so it never shadows the bundled subset.
        return Path(self.root) / ("full" if self.source == "full" else "")

    def split_indices(self, n: int, generator: torch.Generator):
        """Seeded (validation, training) indices of ``n`` training digits."""
        order = torch.randperm(n, generator=generator)
        n_val = round(self.val_fraction * n)
        return order[:n_val].sort().values, order[n_val:].sort().values


@dataclass
class ConfoundedMNIST08(CachedMNISTData):
    """Settings of the 08MNIST data; ``load()`` builds or reads the cached
    splits ``root/08MNIST/<key>/confounded_v1/train.pth`` (train and
    validation) and ``root/08MNIST/<key>/original/test.pth`` (clean test set
    and its dotted copy)."""

    confounder: Confounder = field(default_factory=Confounder)

    name = "mnist08"  # the data set in the tuned settings (xilsweep/losses/tuned.py)
    folder = "08MNIST"
    num_classes = len(DIGITS)
    class_names = tuple(str(d) for d in DIGITS)
    train_file, test_file = "confounded_v1/train.pth", "original/test.pth"
    confounded_class = CONFOUNDED_CLASS

    def __post_init__(self):
        if isinstance(self.confounder, dict):
            try:
                self.confounder = Confounder(**self.confounder)
            except SettingError as e:
                raise e.in_group("confounder") from None
        super().__post_init__()

    def _generate(self):
        download = self.source == "full"
        g = torch.Generator().manual_seed(self.seed)
        x, y = digit_pair(*load_mnist(self.mnist_root, train=True, download=download))
        val_idx, train_idx = self.split_indices(len(x), g)

        def confounded(x_part, y_part, dotted: bool, chosen: torch.Tensor | None = None):
            if dotted:
                xd, m = self.confounder.apply(x_part, y_part, g, chosen)
            else:
                xd, m = x_part, torch.zeros_like(x_part, dtype=torch.bool)
            return Split(xd, F.one_hot(y_part, len(DIGITS)).float(), m).to_file()

        train = confounded(x[train_idx], y[train_idx], True)
        val = confounded(x[val_idx], y[val_idx], self.val_confounded)
        decorrelated = confounded(x[train_idx], y[train_idx], True, half_of_each_class(y[train_idx], g))
        xt, yt = digit_pair(*load_mnist(self.mnist_root, train=False, download=download))
        test = confounded(xt, yt, False)
        test_dotted = confounded(xt, yt, True, torch.ones(len(xt), dtype=torch.bool))
        return (
            {"train": train, "val": val, "train_decorrelated": decorrelated},
            {"test": test, "test_dotted": test_dotted},
        )
