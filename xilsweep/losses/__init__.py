"""Objectives for fine-tuning on mixed batches, one method per module.

Each returns ``(total, confounded_part, corrected_part)`` (see ``base.XILLoss``).
"""

from xilsweep.losses.base import XILLoss, as_labels, split_cross_entropy
from xilsweep.losses.baseline import BaselineBalancedLoss, BaselineImbalancedLoss
from xilsweep.losses.lagrangian import LagrangianLoss
from xilsweep.losses.rrr import RRRLoss, input_gradient_penalty

__all__ = ["XILLoss", "as_labels", "split_cross_entropy", "BaselineBalancedLoss", "BaselineImbalancedLoss",
           "LagrangianLoss", "RRRLoss", "input_gradient_penalty"]
