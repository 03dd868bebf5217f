"""The calibrated shortcut instrument: confounders that are only confounders,
the oracle (floor) and confounded model (ceiling), the share of the shortcut
removed, and an explainer that tells the two references apart."""

from __future__ import annotations

import json
from collections import deque

import pytest
import torch
from torch import nn

from helpers import TINY
from xilsweep.data import Confounder, load_mnist
from xilsweep.gradcam import align_to_input, receptive_field
from xilsweep.metrics import shortcut_removed
from xilsweep.models import ConvNet
from xilsweep.pretrain import Pretraining
from xilsweep.reasons import InputGradients
from xilsweep.training import Trainer


def enclosed(image: torch.Tensor) -> torch.Tensor:
    """Background pixels no 4-connected background path links to the border:
    a breadth-first flood fill, independent of the library's vectorised one."""
    background = (image == 0).tolist()
    h, w = len(background), len(background[0])
    seen = [[False] * w for _ in range(h)]
    queue = deque(
        (r, c) for r in range(h) for c in range(w) if (r in (0, h - 1) or c in (0, w - 1)) and background[r][c]
    )
    for r, c in queue:
        seen[r][c] = True
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and background[rr][cc] and not seen[rr][cc]:
                seen[rr][cc] = True
                queue.append((rr, cc))
    return torch.tensor([[background[r][c] and not seen[r][c] for c in range(w)] for r in range(h)])


@pytest.fixture(scope="module")
def zeros_and_eights(data_root):
    images, labels = load_mnist(data_root, train=False)
    keep = (labels == 0) | (labels == 8)
    return images[keep][:300].float().div(255).unsqueeze(1), (labels[keep][:300] == 8).long()


@pytest.mark.parametrize("seed", range(5))
def test_dots_never_touch_enclosed_background_of_either_class(zeros_and_eights, seed):
    x, labels = zeros_and_eights
    holes = torch.stack([enclosed(image[0]) for image in x]).unsqueeze(1)
    assert holes[labels == 0].flatten(1).any(1).float().mean() > 0.9  # 0s have holes to avoid
    dotted, mask = Confounder().apply(x, labels, torch.Generator().manual_seed(seed), torch.ones(len(x), dtype=bool))
    assert not (mask & holes).any()
    assert torch.equal(dotted != x, mask)  # the mask is exactly the changed pixels
    assert mask.flatten(1).any(1).all()


def test_dots_are_separate_squares_so_the_mask_counts_them(zeros_and_eights):
    x, labels = zeros_and_eights
    conf = Confounder(n_dots=16, dot_size=3)
    _, mask = conf.apply(x, labels, torch.Generator().manual_seed(0), torch.ones(len(x), dtype=bool))
    # each dot is a 3x3 square not touching another: its pixels count 9 per dot
    per_image = mask.flatten(1).sum(1)
    assert (per_image % 9 == 0).all() and (per_image == 16 * 9).float().mean() > 0.95
    # no two dots touch: a 3x3 window of mask pixels never holds more than one dot's pixels
    touching = torch.nn.functional.conv2d(mask.float(), torch.ones(1, 1, 4, 4)) > 9
    assert not touching.any()


def test_oracle_training_data_carry_the_confounder_on_both_classes_in_equal_shares(data):
    train = data.decorrelated_train
    assert torch.equal(torch.where(train.mask, 0.0, train.x), torch.where(data.full_train.mask, 0.0, data.full_train.x))
    for label in (0, 1):
        dotted = train.mask.flatten(1).any(1)[train.labels == label]
        assert dotted.sum().item() == len(dotted) // 2


def test_shortcut_removed_against_hand_computations():
    assert shortcut_removed(0.9, 0.9, 0.1) == 0.0
    assert shortcut_removed(0.9, 0.1, 0.1) == 1.0
    assert shortcut_removed(0.9, 0.5, 0.1) == pytest.approx(0.5)
    assert shortcut_removed(0.9, 1.3, 0.1) == pytest.approx(-0.5)  # worse than the confounded model
    assert shortcut_removed(0.5, 0.9, 0.98) == pytest.approx(0.4 / 0.48)  # an accuracy: higher is freer
    assert shortcut_removed(0.50, 0.40, 0.47) is None  # references 0.03 apart: too close
    assert shortcut_removed(40.0, 20.0, 30.0, span=100.0) == pytest.approx(2.0)  # 10 points on 0-100: measurable
    assert shortcut_removed(40.0, 20.0, 37.0, span=100.0) is None
    assert shortcut_removed(None, 0.2, 0.1) is None


def small_cnn():
    return ConvNet(channels=[16, 32], kernel_size=3, pool=[True, True], hidden=[64])


def test_reference_models_are_cached_and_keyed_by_every_training_setting(data, tmp_path):
    trainer = Trainer(device="cpu")
    pretrain = Pretraining(epochs=1)
    _, oracle = pretrain.oracle_model(data, small_cnn, {"cnn": "small"}, trainer)
    _, again = pretrain.oracle_model(data, small_cnn, {"cnn": "small"}, trainer)
    _, confounded = pretrain.confounded_model(data, small_cnn, {"cnn": "small"}, trainer)
    assert again["path"] == oracle["path"] and again["history"] == oracle["history"]  # loaded, not retrained
    assert oracle["path"] != confounded["path"]
    assert oracle["settings"] == {**confounded["settings"], "kind": "oracle"}
    paths = {oracle["path"]}
    for change in (
        {"weight_decay": 0.01},
        {"optimizer": "sgd"},
        {"momentum": 0.5, "optimizer": "sgd"},
        {"grad_clip": 1.0},
        {"seed": 1},
        {"lr": 0.002},
        {"batch_size": 32},
    ):
        _, other = Pretraining(epochs=1, **change).oracle_model(data, small_cnn, {"cnn": "small"}, trainer)
        assert other["path"] not in paths, change
        paths.add(other["path"])


def test_default_explainer_separates_the_confounded_model_from_the_oracle(data):
    """Confounded attribution in the mask at least 1.5x the oracle's, on each of 3 seeds."""
    explainer = InputGradients()
    trainer = Trainer(device="cpu")
    for seed in range(3):
        pretrain = Pretraining(seed=seed)
        confounded, _ = pretrain.confounded_model(data, small_cnn, {"cnn": "small"}, trainer)
        oracle, _ = pretrain.oracle_model(data, small_cnn, {"cnn": "small"}, trainer)
        high = explainer.reasons(confounded, data, confounded_class=1)
        low = explainer.reasons(oracle, data, confounded_class=1)
        assert high["attribution_in_mask"] >= 1.5 * low["attribution_in_mask"], seed
        assert high["dot_flip_rate"] >= 0.5 and low["dot_flip_rate"] <= 0.05, seed


def test_gradcam_units_land_on_their_receptive_field_centres():
    model = small_cnn()
    layers = list(model.features)
    stride, offset = receptive_field(layers[: layers.index(model.last_conv) + 1])
    # the receptive field of one unit, found independently: the input gradient of that unit
    # through positive weights (max-pooling routes through one pixel, so average it away)
    probe = nn.Sequential(
        *[nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m for m in layers[: layers.index(model.last_conv) + 1]]
    )
    for m in probe:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.1)
            nn.init.zeros_(m.bias)
    x = torch.ones(1, 1, 28, 28, requires_grad=True)
    out = probe(x)
    for i, j in ((0, 0), (5, 5), (2, 9), (10, 10)):
        (grad,) = torch.autograd.grad(out[0, 0, i, j], x, retain_graph=True)
        weights = grad[0, 0].abs()
        coords = torch.arange(28, dtype=torch.float)
        centre = ((weights.sum(1) * coords).sum() / weights.sum(), (weights.sum(0) * coords).sum() / weights.sum())
        unit = torch.zeros(1, 1, *out.shape[-2:])
        unit[0, 0, i, j] = 1.0
        aligned = align_to_input(unit, stride, offset, (28, 28))[0, 0]
        peaks = torch.nonzero(aligned == aligned.max()).float()
        distance = (peaks - torch.stack(centre)).abs().amax(1)
        assert distance.min() <= 1, (i, j, peaks, centre)  # the peak lies on the centre
        if 0 < i < out.shape[-2] - 1 and 0 < j < out.shape[-1] - 1:
            assert distance.max() <= 1, (i, j, peaks, centre)  # and only there (edge units extend to the border)


def test_a_pretraining_setting_swept_across_two_jobs_gives_two_cached_models(data_root, tmp_path, xilsweep_cli):
    result = xilsweep_cli(
        [
            "-m",
            f"data.root={data_root}",
            *TINY,
            "pretrain.weight_decay=0,0.01",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert len(records) == 2
    assert len({r["confounded"]["path"] for r in records}) == 2
    assert len({r["oracle"]["path"] for r in records}) == 2
    for r in records:  # every job carries both references and the share removed
        assert set(r["shortcut_removed"]) == {
            "dot_flip_rate",
            "test_dotted_accuracy",
            "attribution_in_mask",
            "wrong_reason_score",
        }
        assert r["oracle"]["dot_flip_rate"] < r["confounded"]["dot_flip_rate"]
