"""The XIL method zoo: RRR-G, RBR, HINT, CDEP penalties and confounder transplants."""

import json

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.func import functional_call, grad

from helpers import TINY
from xilsweep.correction import UserCorrectedDataset
from xilsweep.errors import SettingError
from xilsweep.losses import Batch
from xilsweep.losses.baseline import Balanced
from xilsweep.losses.cdep import CDEP, cdep_penalty, contextual_decomposition
from xilsweep.losses.hint import HINT, hint_penalty
from xilsweep.losses.rbr import RBR, influence_penalty
from xilsweep.losses.rrr_g import RRRG, gradcam_penalty
from xilsweep.models import MLP, ConvNet


class TinyConv(nn.Module):
    """conv -> ReLU -> linear, small enough to write GradCAM out by hand."""

    def __init__(self, size: int, kernel: int, padding: int = 0, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, kernel, padding=padding)
        self.map_size = size + 2 * padding - kernel + 1
        self.fc = nn.Linear(2 * self.map_size**2, classes)

    @property
    def last_conv(self):
        return self.conv

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def gradcam_by_hand(model: TinyConv, x, classes):
    """z = V relu(A) + c, so dz_c/dA = V_c * [A > 0]; GradCAM = sum_k mean(dz_c/dA_k) A_k."""
    a = F.conv2d(x, model.conv.weight, model.conv.bias, padding=model.conv.padding).detach()
    v = model.fc.weight.detach().view(-1, 2, model.map_size, model.map_size)[classes]
    alpha = (v * (a > 0)).mean(dim=(2, 3), keepdim=True)
    return (alpha * a).sum(1, keepdim=True)


def batch(size: int, n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    mask = torch.rand(n, 1, size, size, generator=g) < 0.3
    mask[0] = False  # a sample without feedback
    return x, torch.tensor([0, 1, 2, 0, 1])[:n], mask


# --- RRR-G ------------------------------------------------------------------


def test_rrr_g_penalty_is_the_scaled_squared_gradcam_inside_the_pooled_mask():
    model = TinyConv(size=8, kernel=5)  # 4x4 maps: each map cell pools a 2x2 block of the mask
    x, targets, mask = batch(8)
    logits, penalty = gradcam_penalty(model, x, mask)
    cam = gradcam_by_hand(model, x, logits.argmax(1))
    scaled = cam / cam.abs().amax(dim=(2, 3), keepdim=True)
    share = mask.float().view(5, 1, 4, 2, 4, 2).mean(dim=(3, 5))
    assert penalty.item() == pytest.approx(((scaled**2) * share).sum().item() / 5, rel=1e-5)
    penalty.backward()  # the penalty trains the convolution
    assert model.conv.weight.grad.abs().sum() > 0

    method, mixed = RRRG(lam=3.0), Batch(x, targets, torch.tensor([False] * 3 + [True] * 2), mask)
    logits, total, losses = method.objective(model, mixed)
    base = Balanced(1.0).objective(lambda _: logits, mixed)[1]
    assert total.item() == pytest.approx(base.item() + 3.0 * penalty.item(), rel=1e-5)
    assert losses["RRR-G/penalty"].item() == pytest.approx(penalty.item()) and method.hparams()["lam"] == 3.0


@pytest.mark.parametrize("method", [RRRG(), HINT()])
def test_gradcam_methods_refuse_a_model_without_a_convolution(method):
    x, targets, mask = batch(28, n=2)
    with pytest.raises(SettingError) as err:
        method.objective(MLP(), Batch(x, targets, torch.tensor([False, True]), mask))
    assert err.value.key == "model" and "convolution" in str(err.value)


# --- HINT -------------------------------------------------------------------


def test_hint_penalty_is_the_mse_of_the_true_class_gradcam_and_the_ink_on_samples_with_feedback():
    model = TinyConv(size=6, kernel=3, padding=1)  # maps of the input's size: no resampling
    x, targets, mask = batch(6)
    ink = (x > 0.6) & ~mask
    _, penalty = hint_penalty(model, x, targets, mask, ink)
    cam = gradcam_by_hand(model, x, targets)
    low, high = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
    per_image = ((cam - low) / (high - low) - ink.float()).pow(2).mean(dim=(1, 2, 3))
    assert penalty.item() == pytest.approx(per_image[1:].sum().item() / 5, rel=1e-5)  # sample 0: no mask

    method = HINT(lam=2.0, ink_threshold=0.6)
    logits, total, losses = method.objective(model, Batch(x, targets, torch.zeros(5, dtype=torch.bool), mask))
    assert total.item() == pytest.approx(F.cross_entropy(logits, targets).item() + 2.0 * penalty.item(), rel=1e-5)
    assert set(losses) == {"total", "confounded", "corrected", "HINT/penalty"}
    assert method.hparams()["relevant_region"] == "ink" and method.hparams()["ink_threshold"] == 0.6
    with pytest.raises(SettingError) as err:
        HINT(relevant_region="not_the_mask")
    assert err.value.key == "relevant_region"


# --- RBR --------------------------------------------------------------------


def test_rbr_penalty_matches_a_per_sample_functional_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.Tanh(), nn.Linear(4, 3))
    x, targets, mask = batch(3)
    _, penalty = influence_penalty(model, x, targets, mask)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def summed_param_grad(xi, yi):
        grads = grad(lambda p: F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None]))(params)
        return sum(g.sum() for g in grads.values())

    def summed_log_probs(xi):
        return F.log_softmax(functional_call(model, params, (xi[None],)), dim=1).sum()

    expected = sum(
        (grad(summed_param_grad)(xi, yi) * grad(summed_log_probs)(xi) * mi).pow(2).sum()
        for xi, yi, mi in zip(x, targets, mask, strict=True)
    ) / len(x)
    assert expected > 0
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4)
    penalty.backward()
    assert model[1].weight.grad.abs().sum() > 0


def test_rbr_penalty_vanishes_for_a_linear_softmax_model():
    # the summed gradient of softmax cross-entropy over a last linear layer is sum_c (p_c - y_c)(1 + sum x) = 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    x, targets, mask = batch(3)
    method = RBR(lam=10.0)
    logits, total, losses = method.objective(model, Batch(x, targets, torch.zeros(5, dtype=torch.bool), mask))
    assert losses["RBR/penalty"].item() == pytest.approx(0.0, abs=1e-12)
    assert total.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


# --- CDEP -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_model",
    [ConvNet, lambda: ConvNet(channels=[4, 8], pool=[False, True], dropout=0.5), MLP],
    ids=["cnn", "cnn_dropout", "mlp"],
)
def test_contextual_decomposition_parts_sum_to_the_logits(make_model, data):
    # built here, seeded: built at collection, the weights followed whatever had drawn from the RNG before
    torch.manual_seed(0)
    model = make_model()
    x = data.test.x[:16]
    mask = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2
    torch.manual_seed(0)  # in training mode dropout draws the same units for the forward pass
    rel, irrel = contextual_decomposition(model, x, mask)
    torch.manual_seed(0)
    logits = model(x)
    assert torch.allclose(rel + irrel, logits, atol=1e-4)
    assert (irrel.abs() > 1e-3).any() and (rel.abs() > 1e-3).any()
    # nothing masked: the masked part gets at most bias shares of units with no input at all
    rel_all, irrel_none = contextual_decomposition(model, x, torch.zeros_like(mask))
    assert irrel_none.abs().mean() < 0.1 * rel_all.abs().mean()


class TinyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(9, 3)

    def layers(self):
        return [nn.Flatten(), self.fc]

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_cdep_penalty_is_the_masked_share_of_a_linear_model_logits():
    model = TinyLinear()
    x, targets, mask = batch(3)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    rel, irrel = (x * ~mask).flatten(1) @ w.T, (x * mask).flatten(1) @ w.T
    rel_share = rel.abs() / (rel.abs() + irrel.abs())  # the bias goes in proportion to |W x_part|
    rel, irrel = rel + rel_share * b, irrel + (1 - rel_share) * b
    expected = (torch.exp(irrel) / (torch.exp(irrel) + torch.exp(rel))).mean(1)[1:].sum() / 5
    logits, penalty = cdep_penalty(model, x, mask)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(logits, model(x), atol=1e-5)
    method, unmixed = CDEP(lam=5.0), Batch(x, targets, torch.zeros(5, dtype=torch.bool), mask)
    _, _, losses = method.objective(model, unmixed)
    assert losses["CDEP/penalty"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(SettingError) as err:
        method.objective(TinyConv(6, 3), unmixed)
    assert err.value.key == "model" and "layers()" in str(err.value)


@pytest.mark.parametrize("method_type", [RRRG, RBR, HINT, CDEP])
def test_zoo_methods_round_trip_their_state_and_check_base(method_type):
    method = method_type(lam=2.0, base="imbalanced")
    method_type().load_state_dict(method.state_dict())
    assert (method.hparams()["lam"], method.hparams()["base"]) == (2.0, "imbalanced")
    assert "base_lam" not in method.hparams() and method_type(base_lam=3.0).hparams()["base_lam"] == 3.0
    for key, value in (("base", "weighted"), ("base_lam", -1.0)):
        with pytest.raises(SettingError) as err:
            method_type(**{key: value})
        assert err.value.key == key


# --- confounder transplant --------------------------------------------------


def test_transplant_pastes_pool_confounders_onto_other_class_images_keeping_their_labels(data):
    pool = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=0)
    donors, made = pool.original, pool.corrected
    assert (made.labels != donors.labels).all()
    assert torch.equal(made.mask, donors.mask) and torch.equal(made.x[made.mask], donors.x[donors.mask])
    # outside the pasted pixels each counterexample is a training image of its own label
    outside = (~made.mask).float()
    same = ((made.x * outside)[:, None] == (data.train.x[None] * outside[:, None])).flatten(2).all(2)  # [20, N]
    host = same.float().argmax(1)
    assert same.any(1).all() and torch.equal(data.train.labels[host], made.labels)
    assert len(host.unique()) == 20
    assert (made.x != data.train.x[host]).flatten(1).any(1).all()  # the dots changed every host
    # deterministic given the seed; another seed, other hosts
    again = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=0).corrected
    assert torch.equal(again.x, made.x) and torch.equal(again.targets, made.targets)
    other = UserCorrectedDataset(data.train, pool_size=20, correction="transplant", seed=1).corrected
    assert not torch.equal(other.x, made.x)
    with pytest.raises(SettingError) as err:
        UserCorrectedDataset(data.train, pool_size=20, correction="paste")
    assert err.value.key == "correction"


# --- end to end -------------------------------------------------------------


def test_zoo_jobs_run_end_to_end_with_finite_penalties(xilsweep_cli, data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = xilsweep_cli(
        [
            "-m",
            "loss=rrr_g,rbr,hint,cdep",
            *TINY,
            "save_model=false",
            f"data.root={data_root}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    tags = {"rrr_g": "RRR-G/penalty", "rbr": "RBR/penalty", "hint": "HINT/penalty", "cdep": "CDEP/penalty"}
    for job in jobs:
        record = json.loads((job / "metrics.json").read_text())
        tag = tags.pop(record["settings"]["loss"])
        assert record["status"] == "done"
        penalties = [h[tag] for h in record["history"][1:]]
        assert penalties and all(0 <= p < float("inf") for p in penalties)
        ea = EventAccumulator(str(job), size_guidance={"scalars": 0})
        ea.Reload()
        assert tag in ea.Tags()["scalars"]
    assert tags == {}


def test_transplant_job_runs_end_to_end(xilsweep_cli, data_root, tmp_path):
    out = tmp_path / "job"
    result = xilsweep_cli(
        ["pool.correction=transplant", *TINY, "save_model=false", f"data.root={data_root}", f"hydra.run.dir={out}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "done" and record["settings"]["correction"] == "transplant"
