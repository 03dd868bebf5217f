"""More ways to correct: the Lagrangian constraint, the RRR penalty and
Decoy-MNIST (the compare_methods sweeps: test_search.py)."""

import pytest
import torch
from torch import nn

from xilsweep.correction import UserCorrectedDataset
from xilsweep.data import ConfoundedMNIST08, load_mnist
from xilsweep.decoy import NUM_CLASSES, DecoyMNIST, shade
from xilsweep.errors import SettingError
from xilsweep.losses import Batch
from xilsweep.losses.baseline import Balanced
from xilsweep.losses.lagrangian import Lagrangian
from xilsweep.losses.rrr import RRR, input_gradient_penalty
from xilsweep.models import MLP
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import FitData, Trainer, evaluate, train_confounded


@pytest.fixture(scope="module")
def decoy(data_root):
    return DecoyMNIST(root=str(data_root)).load()


def shade_digits(split):
    """The digit each image's patch encodes, read back from its pixels."""
    patch = split.x[split.mask].view(len(split), -1)
    assert (patch == patch[:, :1]).all()  # one shade per patch
    return ((255 - patch[:, 0] * 255) / 25).round().long()


# --- Lagrangian -------------------------------------------------------------


def lagrangian_fit(data_root, max_epochs=8, checkpoint=None, resume=False):
    """The Lagrangian fine-tuning a confounded MLP: its epochs' metrics and the multiplier's final value."""
    # the configured confounder (16 dots of 3x3): an MLP learns the dots, not the digits
    data = ConfoundedMNIST08(root=str(data_root), n_train=600, confounder={"n_dots": 16, "dot_size": 3}).load()
    torch.manual_seed(0)
    model, trainer = MLP(hidden=[32]), Trainer(device="cpu", max_epochs=max_epochs, patience=8, resume=resume)
    train_confounded(model, data.train, trainer, epochs=3, lr=1e-3, batch_size=64, seed=0)
    assert evaluate(model, data.test)["accuracy"] < 0.6
    pool = UserCorrectedDataset(data.train, pool_size=30)
    method = Lagrangian(eps=0.1, dual_lr=0.05)
    sampler = MixedBatchSampler(len(data.train), batch_size=32, k=4, pool_size=30)
    epochs = []
    trainer.fit(
        model,
        FitData(data.train, pool.corrected, data.val, sampler),
        method,
        on_epoch=lambda e, m: e and epochs.append(m),
        checkpoint=checkpoint,
    )
    return epochs, method.multiplier.weight.item()


def test_lagrangian_multiplier_rises_while_violated_and_falls_to_zero_once_satisfied(data_root):
    epochs, _ = lagrangian_fit(data_root)
    multiplier = [m["Lagrangian/multiplier"] for m in epochs]
    violation = [m["Lagrangian/violation"] for m in epochs]
    assert all(m["Lagrangian/epsilon"] == 0.1 for m in epochs)
    assert violation[0] > 0 and multiplier[0] > 0  # the confounded model misclassifies the corrected 8s
    assert min(multiplier) >= 0
    peak = multiplier.index(max(multiplier))
    assert violation[-1] < 0  # satisfied by the end ...
    assert multiplier[-1] < 0.2 * multiplier[peak]  # ... and the multiplier went back towards zero
    # the Lagrangian value is what the epoch reports as its training loss
    assert epochs[0]["train_loss"] != pytest.approx(epochs[0]["train_loss_confounded"])


def test_a_resumed_lagrangian_fit_continues_from_the_saved_multiplier(data_root, tmp_path):
    uninterrupted, multiplier = lagrangian_fit(data_root, max_epochs=4)
    checkpoint = tmp_path / "checkpoint.pth"
    lagrangian_fit(data_root, max_epochs=2, checkpoint=checkpoint)
    resumed, resumed_multiplier = lagrangian_fit(data_root, max_epochs=4, checkpoint=checkpoint, resume=True)
    assert [m["epoch"] for m in resumed] == [3, 4] and resumed_multiplier == multiplier > 0

    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(resumed) == timeless(uninterrupted[2:])


def test_lagrangian_step_clips_the_primal_gradient():
    """trainer.grad_clip with the Lagrangian: the primal step sees the clipped gradient."""
    torch.manual_seed(0)
    model = MLP(hidden=[16])
    method = Lagrangian(eps=0.0, multiplier_init=5.0)
    primal = Trainer(device="cpu", optimizer="sgd", grad_clip=0.01).make_optimizer(model.parameters(), lr=0.0)
    norms = []  # read after the clipping hook, which runs first
    primal.register_step_pre_hook(
        lambda *_: norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
    )
    x, targets = torch.rand(8, 1, 28, 28) * 50, torch.tensor([0, 1] * 4)
    is_corrected = torch.tensor([False] * 4 + [True] * 4)
    step = method.update(model, Batch(x, targets, is_corrected, torch.zeros_like(x, dtype=torch.bool)), primal)
    assert torch.isfinite(step.losses["total"]) and step.logits.shape == (8, 2)
    assert norms and norms[0] == pytest.approx(0.01, rel=1e-4)  # unclipped, it is in the thousands
    assert method.multiplier.weight.item() > 5.0  # the dual step came first: the constraint is violated


def test_lagrangian_value_and_bad_settings():
    method = Lagrangian(eps=0.5, multiplier_init=2.0)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    x = torch.zeros(3, 1, 2, 2)
    batch = Batch(x, torch.tensor([0, 0, 1]), torch.tensor([False, False, True]), torch.zeros_like(x, dtype=torch.bool))
    _, total, losses = method.objective(lambda _: logits, batch)
    conf, corr = losses["confounded"].item(), losses["corrected"].item()
    assert total.item() == pytest.approx(conf + 2.0 * (corr - 0.5), abs=1e-6)
    assert losses["Lagrangian/violation"].item() == pytest.approx(corr - 0.5)
    assert method.hparams() == {"eps": 0.5, "dual_lr": 0.05}
    assert method.state_metrics() == {"Lagrangian/multiplier": 2.0, "Lagrangian/epsilon": 0.5}
    for kwargs, key in (
        ({"eps": -1}, "eps"),
        ({"dual_lr": 0}, "dual_lr"),
        ({"multiplier_init": -1}, "multiplier_init"),
    ):
        with pytest.raises(SettingError) as err:
            Lagrangian(**kwargs)
        assert err.value.key == key


# --- RRR --------------------------------------------------------------------


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_rrr_penalty_equals_the_closed_form_for_a_linear_model():
    model = linear_model()
    x = torch.rand(5, 1, 2, 2)
    mask = torch.rand(5, 1, 2, 2) < 0.5
    # z = W x + b, sum_c log p_c = sum_c z_c - C logsumexp(z): gradient W^T (1 - C p)
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    grad = (1 - 3 * p) @ weight
    expected = (grad.pow(2) * mask.flatten(1)).sum() / 5
    _, penalty = input_gradient_penalty(model, x, mask)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    # the penalty trains the model (its graph was kept)
    penalty.backward()
    assert model[1].weight.grad.abs().sum() > 0

    batch = Batch(x, torch.tensor([0, 1, 2, 0, 1]), torch.tensor([False, False, False, True, True]), mask)
    logits, total, losses = RRR(lam=7.0, base_lam=2.0).objective(model, batch)
    base_total = Balanced(2.0).objective(lambda _: logits, batch)[1]
    assert total.item() == pytest.approx(base_total.item() + 7.0 * expected.item(), rel=1e-5)
    assert losses["RRR/penalty"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_rrr_penalty_is_zero_for_an_empty_mask():
    model = linear_model()
    x, targets = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    empty = torch.zeros(4, 1, 2, 2, dtype=torch.bool)
    is_corrected = torch.tensor([False, False, True, True])
    assert input_gradient_penalty(model, x, empty)[1].item() == 0
    method = RRR(lam=100.0, base="imbalanced")
    logits, total, losses = method.objective(model, Batch(x, targets, is_corrected, empty))
    assert total.item() == pytest.approx(nn.functional.cross_entropy(logits, targets).item())
    assert losses["RRR/penalty"].item() == 0.0 and method.hparams() == {"lam": 100.0, "base": "imbalanced"}


def test_pool_masks_are_the_only_masks_training_sees(data):
    pool = UserCorrectedDataset(data.train, pool_size=20)
    known = pool.with_known_masks(data.train).mask.flatten(1).any(1)
    assert torch.equal(torch.nonzero(known).flatten(), pool.index)
    assert torch.equal(pool.with_known_masks(data.train).mask[pool.index], data.train.mask[pool.index])


# --- Decoy-MNIST ------------------------------------------------------------


def test_decoy_patch_sits_in_a_corner_where_its_mask_says(decoy, data_root):
    size = 4
    corners = torch.zeros(4, 28, 28, dtype=torch.bool)
    corners[0, :size, :size] = corners[1, :size, -size:] = corners[2, -size:, :size] = corners[3, -size:, -size:] = True
    for split in (decoy.train, decoy.val, decoy.test, decoy.test_dotted):
        matches = (split.mask[:, 0, None] == corners[None]).flatten(2).all(2)  # [N, 4]
        assert (matches.sum(1) == 1).all()  # each mask is exactly one corner square
        assert (matches.sum(0) > len(split) / 5).all()  # every corner is used
    # outside the mask the test images are the MNIST digits, inside the patch shade
    images, labels = load_mnist(data_root, train=False)
    original = images.float().div(255).unsqueeze(1)
    outside = ~decoy.test.mask
    assert torch.equal(decoy.test.x[outside], original[outside])
    assert torch.equal(decoy.test.labels, labels)


def test_decoy_shade_encodes_the_label_in_training_and_is_random_at_test(decoy):
    assert decoy.train.targets.shape[1] == NUM_CLASSES
    assert torch.equal(shade_digits(decoy.train), decoy.train.labels)
    test_shades = shade_digits(decoy.test)
    agree = (test_shades == decoy.test.labels).float().mean().item()
    assert 0.05 < agree < 0.15  # chance: 1 in 10
    assert (test_shades.bincount(minlength=10) > 800).all()
    assert not (shade_digits(decoy.test_dotted) == decoy.test_dotted.labels).any()  # always a wrong label
    assert shade(torch.tensor([0, 9])).tolist() == pytest.approx([1.0, 30 / 255])


def test_decoy_pool_draws_from_every_class_and_correction_removes_the_patch(decoy):
    pool = UserCorrectedDataset(decoy.train, pool_size=200, confounded_class=None)
    assert len(pool.corrected.labels.unique()) == NUM_CLASSES
    assert (pool.corrected.x[pool.corrected.mask] == 0).all()
    with pytest.raises(SettingError, match="the number of training samples with a confounder$"):
        UserCorrectedDataset(decoy.train, pool_size=len(decoy.train) + 1, confounded_class=None)
