"""Patch-MNIST, the colour data set: the data contract on three channels and a frame of
any size, the patch, the class it points to, and a job end to end on it."""

import json

import pytest
import torch

from helpers import TINY, events, job_config, refusal
from xilsweep.correction import UserCorrectedDataset
from xilsweep.data import border_background
from xilsweep.datasets.patch_mnist import PatchMNIST
from xilsweep.job import assemble
from xilsweep.losses import METHODS
from xilsweep.losses.base import Batch
from xilsweep.reasons import training_images
from xilsweep.run import run_job

SMALL = {"image_size": 32, "patch_size": 6}  # smaller than the default frame: quicker, and not 28 pixels


@pytest.fixture(scope="module")
def patch(patch_data):
    return patch_data  # in the frame of SMALL


def has_patch(split) -> torch.Tensor:
    return split.mask.flatten(1).any(1)


def test_the_contract_says_what_the_model_is_built_for(patch):
    assert patch.in_shape == (3, 32, 32) and patch.train.x.shape[1:] == (3, 32, 32)
    assert patch.num_classes == 2 and patch.class_names == ("0", "8") and patch.confounded_class == 1
    assert len(patch.mean) == len(patch.std) == 3 and patch.has_oracle
    assert patch.model_inputs() == {"num_classes": 2, "in_shape": (3, 32, 32), "mean": patch.mean, "std": patch.std}
    for split in (patch.train, patch.val, patch.test, patch.test_dotted, patch.decorrelated_train):
        assert split.mask.shape == (len(split), 1, 32, 32) and split.mask.dtype == torch.bool


def test_every_training_8_carries_the_coloured_patch_on_the_background_and_nothing_else_is_coloured(patch):
    train = patch.train
    assert torch.equal(has_patch(train), train.labels == 1)
    assert (train.mask.flatten(1).sum(1)[has_patch(train)] == 36).all()  # one 6x6 square each
    colour = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1)
    assert torch.allclose(train.x.permute(0, 2, 3, 1)[train.mask[:, 0]], colour.view(1, 3), atol=1 / 255)
    gray = train.x.masked_fill(train.mask, 0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])  # the digits stay gray
    # on background the image border reaches, never on a digit's ink or in its holes
    assert not (train.mask & ~border_background(gray)).any()


def test_test_sets_and_the_oracles_training_set(patch):
    assert not has_patch(patch.val).any() and not has_patch(patch.test).any() and has_patch(patch.test_dotted).all()
    assert torch.equal(torch.where(patch.test_dotted.mask, 0.0, patch.test_dotted.x), patch.test.x)
    decorrelated = patch.decorrelated_train
    for label in (0, 1):
        share = has_patch(decorrelated)[decorrelated.labels == label].float().mean()
        assert abs(share - 0.5) < 0.01


def test_the_patch_may_point_to_class_0_and_the_pool_and_the_images_follow(data_root):
    zeros = PatchMNIST(root=str(data_root), patched_class=0, **SMALL).load()
    assert zeros.confounded_class == 0 and torch.equal(has_patch(zeros.train), zeros.train.labels == 0)
    pool = UserCorrectedDataset(zeros.train, 5, confounded_class=zeros.confounded_class)
    assert (pool.original.labels == 0).all()
    shown = training_images(zeros.train, pool, zeros.confounded_class)["Images/confounded_samples"]
    assert len(shown) == int((zeros.train.labels == 0).sum())


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.colour=[0,0,0]", "data.colour=[0.0, 0.0, 0.0] is not allowed: three numbers in [0, 1]"),
        ("data.patch_size=20", "data.patch_size=20 is not allowed: an integer from 1 to 16"),
        ("data.patched_class=2", "data.patched_class=2 is not allowed: 0 (the 0s) or 1 (the 8s)"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(override, message, data_root):
    assert refusal([*TINY, "data=patch_mnist", override], data_root).startswith(message)


def test_a_job_on_colour_images_runs_end_to_end_and_every_mask_method_trains_the_first_layer(data_root, tmp_path):
    cfg = job_config([*TINY, "data=patch_mnist", "loss=rrr", "data.image_size=32", "data.patch_size=6"], data_root)
    out = tmp_path / "job"
    out.mkdir()
    run_job(cfg, out)
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "done" and 0.5 <= record["test_accuracy"] <= 1
    assert record["oracle"]["dot_flip_rate"] is not None and record["confounded"]["dot_flip_rate"] is not None
    images = events(out).Images("Images/confounded_samples")[0]
    assert images.width > 0  # the colour grid was written
    job = assemble(cfg)
    first = job.model.features[1]
    assert first.in_channels == 3
    patched = job.pool.original  # the patched 8s with their masks
    batch = Batch(patched.x, patched.targets, torch.zeros(len(patched), dtype=torch.bool), patched.mask)
    for name in ("rrr", "rrr_g", "rbr", "hint", "cdep"):
        job.model.zero_grad()
        _, total, _ = METHODS[name]().objective(job.model, batch)
        total.backward()
        assert torch.isfinite(total) and first.weight.grad.abs().sum() > 0, name
