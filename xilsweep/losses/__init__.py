"""Objectives for fine-tuning on mixed batches, one method per module.

Each returns ``(total, confounded_part, corrected_part)`` (see ``base.XILLoss``).
"""

from xilsweep.losses.base import XILLoss, as_labels, split_cross_entropy
from xilsweep.losses.baseline import BaselineBalancedLoss, BaselineImbalancedLoss
from xilsweep.losses.cdep import CDEPLoss, cdep_penalty, contextual_decomposition
from xilsweep.losses.hint import HINTLoss, hint_penalty
from xilsweep.losses.lagrangian import LagrangianLoss
from xilsweep.losses.rbr import RBRLoss, influence_penalty
from xilsweep.losses.rrr import RRRLoss, input_gradient_penalty
from xilsweep.losses.rrr_g import RRRGLoss, gradcam, gradcam_penalty

__all__ = [
    "LOSSES",
    "XILLoss",
    "as_labels",
    "split_cross_entropy",
    "BaselineBalancedLoss",
    "BaselineImbalancedLoss",
    "LagrangianLoss",
    "RRRLoss",
    "input_gradient_penalty",
    "RRRGLoss",
    "gradcam",
    "gradcam_penalty",
    "RBRLoss",
    "influence_penalty",
    "HINTLoss",
    "hint_penalty",
    "CDEPLoss",
    "cdep_penalty",
    "contextual_decomposition",
]

# Every loss a config can choose (conf/loss/), in the order the docs list them.
LOSSES = (BaselineBalancedLoss, BaselineImbalancedLoss, LagrangianLoss, RRRLoss, RRRGLoss, RBRLoss, HINTLoss, CDEPLoss)
