"""data=folder: a manifest of your own images and masks, read into the same contract as the
built-in sets (Decoy-MNIST written out and read back is the same data and the same job), a
data set without an oracle, and the manifest's problems named by their line."""

import json
import logging

import pytest
import torch
from torchvision.io import write_png

from helpers import REPO, TINY, job_config, write_folder
from xilsweep.datasets.folder import FolderData
from xilsweep.decoy import DecoyMNIST
from xilsweep.errors import DataError
from xilsweep.job import ConfigError, assemble
from xilsweep.metrics import RELIANCE
from xilsweep.pretrain import NO_ORACLE
from xilsweep.results.report import write_report
from xilsweep.run import run_job

# Decoy-MNIST's normalisation, so that its model and data=folder's are the same function
AS_DECOY = ["data.channels=1", "data.channel_mean=[0.1307]", "data.channel_std=[0.3081]"]
JOB = [*TINY, "model=mlp", "loss=balanced", "explainer.n_images=200"]


@pytest.fixture(scope="module")
def decoy_folder(data_root, tmp_path_factory):
    """Decoy-MNIST and its every split written out as PNGs with a manifest."""
    decoy = DecoyMNIST(root=str(data_root)).load()
    return decoy, write_folder(decoy, tmp_path_factory.mktemp("decoy_folder"))


def figures(record: dict) -> dict:
    keys = ["test_accuracy", "best_val_accuracy", *(f.key for f in RELIANCE)]
    return {
        "job": {k: record[k] for k in keys},
        **{kind: {k: record[kind][k] for k in keys[2:]} for kind in ("confounded", "oracle")},
        "removed": record["shortcut_removed"],
    }


def test_decoy_mnist_as_a_folder_is_the_same_data_and_the_same_job(decoy_folder, data_root, tmp_path):
    decoy, manifest = decoy_folder
    records = {}
    for name, data in (("decoy", ["data=decoy_mnist"]), ("folder", ["data=folder", f"data.manifest={manifest}"])):
        out = tmp_path / name
        out.mkdir()
        run_job(job_config([*JOB, *data, *(AS_DECOY if name == "folder" else [])], data_root), out)
        records[name] = json.loads((out / "metrics.json").read_text())
    assert figures(records["folder"]) == figures(records["decoy"])
    assert records["folder"]["data_hash"] == records["decoy"]["data_hash"]  # the content hash of the splits
    read = FolderData(root=str(data_root), manifest=str(manifest), channels=1).load()  # from the cache
    for split in ("train", "val", "test", "test_dotted", "decorrelated_train"):
        ours, theirs = getattr(read, split), getattr(decoy, split)
        assert torch.equal(ours.x, theirs.x) and torch.equal(ours.targets, theirs.targets), split
        assert torch.equal(ours.mask, theirs.mask), split
    assert read.class_names == tuple(str(d) for d in range(10)) and read.confounded_class is None
    assert read.mean != decoy.mean  # without channel_mean: the training images' own statistics


def test_the_cache_follows_the_manifests_content_not_its_path(folder_manifest, data_root):
    moved = folder_manifest.with_name("moved.csv")
    moved.write_bytes(folder_manifest.read_bytes())
    key = FolderData(root=str(data_root), manifest=str(moved), channels=1).key
    assert key == FolderData(root=str(data_root), manifest=str(folder_manifest), channels=1).key
    moved.write_text(folder_manifest.read_text().replace(",train,", ",val,", 1))
    assert FolderData(root=str(data_root), manifest=str(moved), channels=1).key != key


def test_without_a_decorrelated_set_there_is_no_oracle_and_the_job_says_it(
    folder_manifest, data_root, tmp_path, caplog
):
    overrides = [*TINY, "data=folder", f"data.manifest={folder_manifest}", "data.channels=1", "data.confounded_class=8"]
    cfg = job_config(overrides, data_root)
    out = tmp_path / "sweep" / "0_job"
    out.mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="xilsweep"):
        run_job(cfg, out)
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "done" and record["oracle"]["absent"] == NO_ORACLE
    assert all(record["oracle"][f.key] is None for f in RELIANCE)
    assert all(v is None for v in record["shortcut_removed"].values())
    assert record["confounded"]["dot_flip_rate"] is not None and record["dot_flip_rate"] is not None
    assert sum(NO_ORACLE in message for message in caplog.messages) == 1
    assert sum(line.startswith("No oracle: ") for line in write_report(out.parent).splitlines()) == 1
    data = assemble(cfg).data
    # the dotted test images: the test images with the marked pixels of training 8s pasted in
    dotted = data.test_dotted
    assert dotted.mask.flatten(1).any(1).all() and data.confounded_class == 1
    assert torch.equal(torch.where(dotted.mask, 0.0, dotted.x), torch.where(dotted.mask, 0.0, data.test.x))


def broken(folder_manifest, line: int, change) -> str:
    """A copy of the test manifest, beside it, with ``change(cells, folder)`` applied to ``line``."""
    lines = folder_manifest.read_text().splitlines()
    lines[line - 1] = ",".join(change(lines[line - 1].split(","), folder_manifest.parent))
    manifest = folder_manifest.with_name(f"broken_{change.__name__}.csv")
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def missing_image(cells, folder):
    return ["gone.png", *cells[1:]]


def unreadable_image(cells, folder):
    (folder / "text.png").write_text("not an image")
    return ["text.png", *cells[1:]]


def mask_of_another_size(cells, folder):
    write_png(torch.full((1, 14, 14), 255, dtype=torch.uint8), str(folder / "small_mask.png"))
    return [*cells[:3], "small_mask.png"]


@pytest.mark.parametrize(
    "change,message",
    [
        (missing_image, "line 5 (gone.png): {folder}/gone.png cannot be read (No such file or directory)"),
        (unreadable_image, "line 5 (text.png): {folder}/text.png is not a readable PNG or JPEG image"),
        (
            mask_of_another_size,
            "line 5 (train_3.png): the mask {folder}/small_mask.png is 14x14 pixels, its image 28x28",
        ),
    ],
)
def test_a_bad_file_in_the_manifest_is_one_line_naming_its_line_and_nothing_is_cached(
    change, message, folder_manifest, data_root, tmp_path
):
    manifest = broken(folder_manifest, 5, change)
    spec = FolderData(root=str(tmp_path / "cache"), manifest=manifest, channels=1)
    (tmp_path / "cache").mkdir()
    with pytest.raises(DataError) as e:
        spec.load()
    expected = f"{manifest} " + message.format(folder=folder_manifest.parent)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.pth"))


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.classes=[0,7]", "line 3: label '8' is not one of the classes 0, 7"),  # line 2 is a 0
        ("data.confounded_class=3", "data.confounded_class='3' is not allowed: null (per sample only) or one of"),
        ("data.channels=2", "data.channels=2 is not allowed: 1 (gray) or 3 (RGB)"),
    ],
)
def test_a_bad_setting_or_label_is_one_line_before_any_image_is_read(override, message, folder_manifest, data_root):
    with pytest.raises(ConfigError) as e:
        assemble(job_config([*TINY, "data=folder", f"data.manifest={folder_manifest}", override], data_root))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_worked_example_of_docs_data_md_makes_a_manifest_data_folder_reads(data, tmp_path, monkeypatch):
    text = (REPO / "docs" / "data.md").read_text()
    snippet = text.split("The manifest, written by a few lines of Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "lesions"
    for split_name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        for i in range(6):
            label = data.class_names[int(split.labels[i])]
            (root / "images" / split_name / label).mkdir(parents=True, exist_ok=True)
            write_png(
                (split.x[i] * 255).round().to(torch.uint8), str(root / "images" / split_name / label / f"{i}.png")
            )
            if split.mask[i].any():
                (root / "masks" / split_name / label).mkdir(parents=True, exist_ok=True)
                mask = split.mask[i].to(torch.uint8) * 255
                write_png(mask, str(root / "masks" / split_name / label / f"{i}.png"))
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    read = FolderData(root=str(tmp_path), manifest=str(root / "manifest.csv"), channels=1, confounded_class="8").load()
    assert len(read.train) == len(read.val) == len(read.test) == 6
    assert sorted(x.numpy().tobytes() for x in read.train.x) == sorted(x.numpy().tobytes() for x in data.train.x[:6])
    assert torch.equal(read.train.mask.flatten(1).any(1), read.train.labels == 1)  # the 8s' masks, found by name


def test_images_of_any_size_and_format_are_resized_and_masks_follow_by_nearest_neighbour(tmp_path):
    from torchvision.io import write_jpeg

    image = torch.zeros(3, 30, 40, dtype=torch.uint8)
    image[0] = 200  # red
    mask = torch.zeros(1, 30, 40, dtype=torch.uint8)
    mask[:, :15, :20] = 255  # the top-left quarter
    write_jpeg(image, str(tmp_path / "a.jpg"))
    write_png(image, str(tmp_path / "b.png"))
    write_png(mask, str(tmp_path / "m.png"))
    rows = ["image,label,split,mask", "a.jpg,cat,train,m.png", "b.png,dog,train,", "b.png,cat,val,", "a.jpg,dog,test,"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    read = FolderData(root=str(tmp_path), manifest=str(tmp_path / "manifest.csv"), image_size=[12, 16]).load()
    assert read.in_shape == (3, 12, 16) and read.class_names == ("cat", "dog") and read.num_classes == 2
    expected = torch.zeros(1, 12, 16, dtype=torch.bool)
    expected[:, :6, :8] = True
    assert torch.equal(read.train.mask[0], expected) and not read.train.mask[1].any()
    assert (read.train.x[:, 0] > 0.7).all() and (read.train.x[:, 1:] < 0.1).all()  # red, JPEG or PNG
    assert read.train.labels.tolist() == [0, 1] and not read.has_oracle


def test_data_folder_without_a_manifest_is_one_line(data_root):
    with pytest.raises(ConfigError) as e:
        assemble(job_config([*TINY, "data=folder"], data_root))
    assert str(e.value) == "data.manifest=None is not allowed: the path of a CSV file (image,label,split[,mask])"
