import math

import pytest
import torch

from xilsweep.errors import SettingError
from xilsweep.losses import BaselineBalancedLoss, BaselineImbalancedLoss

# two confounded samples, then one corrected; hand-picked logits
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
IS_CORRECTED = torch.tensor([False, False, True])


def ce(logits, label):
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


CE = [ce([2.0, 0.0], 0), ce([0.0, 1.0], 0), ce([1.0, 3.0], 1)]


def test_balanced_loss_matches_hand_computation():
    total, conf, corr = BaselineBalancedLoss(lam=2.5)(LOGITS, TARGETS, IS_CORRECTED)
    assert conf.item() == pytest.approx((CE[0] + CE[1]) / 2, rel=1e-6)
    assert corr.item() == pytest.approx(CE[2], rel=1e-6)
    assert total.item() == pytest.approx((CE[0] + CE[1]) / 2 + 2.5 * CE[2], rel=1e-6)


def test_imbalanced_loss_is_plain_cross_entropy_over_the_batch():
    total, conf, corr = BaselineImbalancedLoss()(LOGITS, TARGETS, IS_CORRECTED)
    assert total.item() == pytest.approx(sum(CE) / 3, rel=1e-6)
    assert conf.item() == pytest.approx((CE[0] + CE[1]) / 2, rel=1e-6)
    assert corr.item() == pytest.approx(CE[2], rel=1e-6)


def test_one_hot_and_index_targets_agree_and_empty_part_is_zero():
    loss = BaselineBalancedLoss(lam=1.0)
    a = loss(LOGITS, TARGETS, IS_CORRECTED)[0]
    b = loss(LOGITS, TARGETS.argmax(-1), IS_CORRECTED)[0]
    assert a.item() == pytest.approx(b.item())
    total, conf, corr = loss(LOGITS, TARGETS, torch.zeros(3, dtype=torch.bool))
    assert corr.item() == 0 and total.item() == pytest.approx(sum(CE) / 3, rel=1e-6)


def test_balanced_gradient_weights_the_corrected_sample_by_lambda():
    logits = LOGITS.clone().requires_grad_()
    BaselineBalancedLoss(lam=3.0)(logits, TARGETS, IS_CORRECTED)[0].backward()
    g_lam3 = logits.grad[2].clone()
    logits.grad = None
    BaselineBalancedLoss(lam=1.0)(logits, TARGETS, IS_CORRECTED)[0].backward()
    assert torch.allclose(g_lam3, 3 * logits.grad[2])


@pytest.mark.parametrize("lam", [-0.1, "big", True])
def test_bad_lambda_is_refused(lam):
    with pytest.raises(SettingError, match="lam"):
        BaselineBalancedLoss(lam=lam)
