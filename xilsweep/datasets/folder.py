"""Your own images (``data=folder``): a manifest (CSV) of PNG or JPEG images, their labels,
splits and optional confounder masks, decoded once, resized to ``image_size``, into the
cache every data set uses, keyed by the manifest's content. Config target of
``conf/data/folder.yaml``; the format and a worked example: docs/data.md.

Columns: ``image`` (a path, relative to the manifest's folder or absolute), ``label`` (a
class name), ``split`` and, optionally, ``mask`` (a binary image of the image's size, any
non-zero pixel marks the confounder; empty: none). Splits: ``train``, ``val`` and ``test``
(needed); ``test_dotted`` (the test images with the confounder, row for row: its n-th row is
the n-th test row's image with it; without one, each test image gets the marked pixels of a
confounded training image pasted in, seeded, as the dotted validation images are made);
``train_decorrelated`` (the training images with the confounder unrelated to the label, what
the oracle learns from; without one there is no oracle).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from xilsweep.correction import paste
from xilsweep.data import CACHE_FORMAT, CachedData, Split
from xilsweep.errors import DataError, SettingError, require

COLUMNS = ("image", "label", "split")  # and the optional "mask"
NEEDED_SPLITS = ("train", "val", "test")
SPLITS = (*NEEDED_SPLITS, "test_dotted", "train_decorrelated")


@dataclass(frozen=True)
class Row:
    line: int  # in the manifest, the header being line 1
    image: Path
    label: str
    split: str
    mask: Path | None

    def where(self, manifest: Path) -> str:
        return f"{manifest} line {self.line} ({self.image.name})"


def read_manifest(manifest: Path) -> list[Row]:
    """The manifest's rows, paths resolved against its folder; one SettingError line (key
    ``manifest``) for a manifest that is missing, lacks a column or names an unknown split."""
    require(manifest.is_file(), "manifest", str(manifest), "a CSV file that exists (image,label,split[,mask])")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        require(not missing, "manifest", str(manifest), f"a CSV with the columns {', '.join(COLUMNS)}[, mask]")
        rows = []
        for line, cells in enumerate(reader, start=2):
            if cells["split"] not in SPLITS:
                raise SettingError(
                    "manifest",
                    str(manifest),
                    f"line {line}: split {cells['split']!r} is not one of {', '.join(SPLITS)}",
                )
            mask = (cells.get("mask") or "").strip()
            rows.append(
                Row(
                    line,
                    manifest.parent / cells["image"],
                    cells["label"],
                    cells["split"],
                    manifest.parent / mask if mask else None,
                )
            )
    for split in NEEDED_SPLITS:
        require(any(r.split == split for r in rows), "manifest", str(manifest), f"rows of the split {split}")
    return rows


def decode(path: Path, row: Row, manifest: Path, mode) -> torch.Tensor:
    """The image file as uint8 [C, H, W]; one DataError line naming the row when it cannot be read."""
    from torchvision.io import decode_image

    try:
        encoded = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except OSError as e:
        raise DataError(f"{row.where(manifest)}: {path} cannot be read ({e.strerror})") from None
    try:
        return decode_image(encoded, mode=mode)
    except (RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise DataError(f"{row.where(manifest)}: {path} is not a readable PNG or JPEG image ({reason})") from None


@dataclass
class FolderData(CachedData):
    """Settings of ``data=folder``. ``manifest``: the CSV; ``image_size``: [height, width]
    every image (and mask, by nearest neighbour) is resized to; ``channels``: 3 (RGB) or 1
    (gray); ``classes``: the class names in class-index order (null: the labels sorted);
    ``confounded_class``: the class the confounder points to (null: per sample only, every
    class may carry one); ``channel_mean``, ``channel_std``: the normalisation (null: the
    training images' own per-channel statistics); ``seed``: the ``n_train`` subset and the
    pasted test confounders."""

    manifest: str | None = None
    image_size: list[int] = field(default_factory=lambda: [28, 28])
    channels: int = 3
    classes: list[str] | None = None
    confounded_class: str | None = None
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None

    name = "folder"
    folder = "Folder"
    key_prefix = "folder"

    def __post_init__(self):
        super().__post_init__()
        require(self.channels in (1, 3), "channels", self.channels, "1 (gray) or 3 (RGB)")
        self.image_size = list(self.image_size)
        require(
            len(self.image_size) == 2 and all(isinstance(s, int) and s >= 8 for s in self.image_size),
            "image_size",
            self.image_size,
            "[height, width], integers >= 8",
        )
        for key in ("channel_mean", "channel_std"):
            value = getattr(self, key)
            require(
                value is None or (len(value) == self.channels and all(v > 0 or key == "channel_mean" for v in value)),
                key,
                value,
                f"null or {self.channels} number(s), one per channel" + (", > 0" if key == "channel_std" else ""),
            )
        require(self.manifest is not None, "manifest", None, "the path of a CSV file (image,label,split[,mask])")
        self.rows = read_manifest(Path(self.manifest))
        labels = sorted({r.label for r in self.rows})
        self.class_names = tuple(self.classes) if self.classes is not None else tuple(labels)
        require(len(set(self.class_names)) == len(self.class_names) >= 2, "classes", self.classes, "two or more names")
        outside = next((r for r in self.rows if r.label not in self.class_names), None)
        if outside is not None:
            raise SettingError(
                "manifest",
                self.manifest,
                f"line {outside.line}: label {outside.label!r} is not one of the classes {', '.join(self.class_names)}",
            )
        require(
            self.confounded_class is None or self.confounded_class in self.class_names,
            "confounded_class",
            self.confounded_class,
            f"null (per sample only) or one of the classes {', '.join(self.class_names)}",
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def confounded_index(self) -> int | None:
        return None if self.confounded_class is None else self.class_names.index(self.confounded_class)

    def generation_settings(self) -> dict:
        """Every setting the files depend on, the manifest by its content (a moved manifest
        finds its cache, an edited one makes a new one)."""
        s = asdict(self)
        del s["root"], s["n_train"], s["manifest"], s["channel_mean"], s["channel_std"]  # read at load time
        content = hashlib.sha256(Path(self.manifest).read_bytes()).hexdigest()
        return {"format": CACHE_FORMAT, "dataset": self.folder, "manifest_sha256": content, **s}

    def statistics(self, train_payload: dict):
        """The settings' normalisation, or the training images' per-channel mean and standard deviation."""
        x = train_payload["train"]["x"].float() / 255
        mean = self.channel_mean or x.mean(dim=(0, 2, 3)).tolist()
        std = self.channel_std or x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        return tuple(mean), tuple(std)

    def read_split(self, rows: list[Row]) -> Split:
        from torchvision.io import ImageReadMode
        from torchvision.transforms.v2.functional import InterpolationMode, resize

        manifest = Path(self.manifest)
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        size = self.image_size
        images, masks, decoded_masks = [], [], {}  # masks are often shared: each file decoded once
        for row in rows:
            image = decode(row.image, row, manifest, mode)
            if row.mask is None:
                mask = torch.zeros(1, *image.shape[1:], dtype=torch.bool)
            else:
                if row.mask not in decoded_masks:
                    decoded_masks[row.mask] = decode(row.mask, row, manifest, ImageReadMode.GRAY) > 0
                mask = decoded_masks[row.mask]
                if mask.shape[1:] != image.shape[1:]:
                    raise DataError(
                        f"{row.where(manifest)}: the mask {row.mask} is {mask.shape[2]}x{mask.shape[1]} pixels, "
                        f"its image {image.shape[2]}x{image.shape[1]}: a mask has its image's size"
                    )
            if list(image.shape[1:]) != size:
                image = resize(image, size, antialias=True)
                mask = resize(mask.to(torch.uint8), size, interpolation=InterpolationMode.NEAREST).bool()
            images.append(image)
            masks.append(mask)
        labels = torch.tensor([self.class_names.index(r.label) for r in rows])
        return Split(torch.stack(images).float() / 255, F.one_hot(labels, self.num_classes).float(), torch.stack(masks))

    def _generate(self):
        by_split = {split: [r for r in self.rows if r.split == split] for split in SPLITS}
        splits = {split: self.read_split(rows) for split, rows in by_split.items() if rows}
        test = splits["test"]
        if "test_dotted" in splits:
            dotted = splits["test_dotted"]
            if len(dotted) != len(test) or not torch.equal(dotted.labels, test.labels):
                raise DataError(
                    f"{self.manifest}: the test_dotted rows are not the test rows' images with the confounder, "
                    f"row for row ({len(dotted)} test_dotted rows, {len(test)} test rows, or another label order)"
                )
        else:
            splits["test_dotted"] = self.pasted_test(splits["train"], test)
        files = {name: split.to_file() for name, split in splits.items()}
        train_part = {k: files[k] for k in ("train", "val", "train_decorrelated") if k in files}
        return train_part, {"test": files["test"], "test_dotted": files["test_dotted"]}

    def pasted_test(self, train: Split, test: Split) -> Split:
        """The test images, each with the marked pixels of a confounded training image (of the
        confounded class, when there is one) pasted in."""
        donors = train.mask.flatten(1).any(1)
        if self.confounded_class is not None:
            donors &= train.labels == self.confounded_index()
        index = torch.nonzero(donors).flatten()
        if len(index) == 0:
            raise DataError(
                f"{self.manifest}: no test_dotted rows and no training image with a mask to paste onto the "
                "test images; the reliance figures need one or the other"
            )
        g = torch.Generator().manual_seed(self.seed + 5)
        return paste(train.subset(index[torch.randint(len(index), (len(test),), generator=g)]), test)
