"""The method protocol: the baselines' objectives, the default update, the registry."""

import math
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from xilsweep.errors import SettingError
from xilsweep.losses import METHODS, Batch, MaskPenalty, Method
from xilsweep.losses.baseline import Balanced, Imbalanced

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"

# two confounded samples, then one corrected; hand-picked logits
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
IS_CORRECTED = torch.tensor([False, False, True])


def batch(targets=TARGETS, is_corrected=IS_CORRECTED) -> Batch:
    return Batch(torch.zeros(3, 1, 2, 2), targets, is_corrected, torch.zeros(3, 1, 2, 2, dtype=torch.bool))


def fixed(logits):
    """A model whose logits are ``logits`` whatever the input."""
    return lambda x: logits


def ce(logits, label):
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


CE = [ce([2.0, 0.0], 0), ce([0.0, 1.0], 0), ce([1.0, 3.0], 1)]


def test_balanced_objective_matches_hand_computation():
    logits, total, losses = Balanced(lam=2.5).objective(fixed(LOGITS), batch())
    assert logits is LOGITS
    assert losses["confounded"].item() == pytest.approx((CE[0] + CE[1]) / 2, rel=1e-6)
    assert losses["corrected"].item() == pytest.approx(CE[2], rel=1e-6)
    assert total.item() == pytest.approx((CE[0] + CE[1]) / 2 + 2.5 * CE[2], rel=1e-6)
    assert losses["total"].item() == total.item() and set(losses) == {"total", "confounded", "corrected"}
    assert not any(loss.requires_grad for loss in losses.values())  # for logging: detached


def test_imbalanced_objective_is_plain_cross_entropy_over_the_batch():
    _, total, losses = Imbalanced().objective(fixed(LOGITS), batch())
    assert total.item() == pytest.approx(sum(CE) / 3, rel=1e-6)
    assert losses["confounded"].item() == pytest.approx((CE[0] + CE[1]) / 2, rel=1e-6)
    assert losses["corrected"].item() == pytest.approx(CE[2], rel=1e-6)


def test_one_hot_and_index_targets_agree_and_empty_part_is_zero():
    method = Balanced(lam=1.0)
    a = method.objective(fixed(LOGITS), batch())[1]
    b = method.objective(fixed(LOGITS), batch(targets=TARGETS.argmax(-1)))[1]
    assert a.item() == pytest.approx(b.item())
    _, total, losses = method.objective(fixed(LOGITS), batch(is_corrected=torch.zeros(3, dtype=torch.bool)))
    assert losses["corrected"].item() == 0 and total.item() == pytest.approx(sum(CE) / 3, rel=1e-6)


def test_balanced_gradient_weights_the_corrected_sample_by_lam():
    logits = LOGITS.clone().requires_grad_()
    Balanced(lam=3.0).objective(fixed(logits), batch())[1].backward()
    g_lam3 = logits.grad[2].clone()
    logits.grad = None
    Balanced(lam=1.0).objective(fixed(logits), batch())[1].backward()
    assert torch.allclose(g_lam3, 3 * logits.grad[2])


def test_default_update_takes_one_gradient_step_on_the_total():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = Batch(torch.rand(3, 1, 2, 2), TARGETS, IS_CORRECTED, torch.zeros(3, 1, 2, 2, dtype=torch.bool))
    _, total, _ = Balanced(lam=2.0).objective(model, data)
    gradients = torch.autograd.grad(total, list(model.parameters()))
    expected = [(p - 0.1 * g).detach() for p, g in zip(model.parameters(), gradients, strict=True)]
    step = Balanced(lam=2.0).update(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    assert step.losses["total"].item() == total.item()  # the losses of the weights before the step
    assert step.logits.shape == (3, 2)
    for new, want in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(new, want)


@pytest.mark.parametrize("lam", [-0.1, "big", True])
def test_bad_lam_is_refused(lam):
    with pytest.raises(SettingError, match="lam"):
        Balanced(lam=lam)


def test_every_config_option_is_a_registered_method_of_its_own_schema():
    options = {path.stem: path.read_text() for path in CONF_LOSS.glob("*.yaml")}
    assert set(METHODS) == set(options)
    for name, method in METHODS.items():
        assert method.name == name and f"  - {method.__name__}\n" in options[name]  # the option builds it
    assert Method not in METHODS.values() and MaskPenalty not in METHODS.values()  # abstract bases


def test_a_new_method_registers_itself_and_a_taken_name_is_refused():
    with patch.dict(METHODS):

        class Doubled(Balanced):
            name = "doubled"

        assert METHODS["doubled"] is Doubled
        with pytest.raises(TypeError, match="'rrr'"):

            class AnotherRRR(Balanced):
                name = "rrr"

    assert "doubled" not in METHODS
