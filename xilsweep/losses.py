"""Objectives for fine-tuning on mixed batches.

Every loss returns ``(total, confounded_part, corrected_part)``: ``total`` is
what is minimised, the two parts are the mean cross-entropy of the confounded
and the corrected samples of the batch, for logging. A part with no samples in
the batch is 0. Targets may be one-hot ([B, C]) or class indices ([B]).

A loss with its own update rule (the Lagrangian: a primal-dual step) wraps the
optimiser in ``wrap_optimizer``; per-epoch extra scalars (named with a "/", as
TensorBoard tags) come from ``epoch_metrics``.
"""

from __future__ import annotations

import math

import cooper
import torch
import torch.nn.functional as F
from torch import nn

from xilsweep.errors import require, require_choice


def as_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(dim=-1) if targets.ndim == 2 else targets


def split_cross_entropy(logits, targets, is_corrected):
    """Per-sample CE, and its mean over the confounded and the corrected part."""
    per_sample = F.cross_entropy(logits, as_labels(targets), reduction="none")
    zero = per_sample.new_zeros(())
    conf, corr = per_sample[~is_corrected], per_sample[is_corrected]
    return per_sample, (conf.mean() if len(conf) else zero), (corr.mean() if len(corr) else zero)


class XILLoss(nn.Module):
    """Base: ``batch_loss`` runs the model; subclasses define ``forward`` on logits."""

    name = "base"

    def batch_loss(self, model, x, targets, is_corrected, mask):
        """``(logits, (total, confounded_part, corrected_part))`` for one batch."""
        logits = model(x)
        return logits, self(logits, targets, is_corrected)

    def hparams(self) -> dict:
        """Settings shown in run names and the hparams table."""
        return {}

    def wrap_optimizer(self, optimizer, grad_clip: float | None = None):
        """What ``train_one_epoch`` steps. Plain losses: the optimiser itself.
        A loss with its own update returns an object whose ``train_step(model,
        x, targets, is_corrected, mask)`` does forward, backward (with
        ``grad_clip``) and step, returning what ``batch_loss`` returns."""
        return optimizer

    def epoch_metrics(self) -> dict:
        """Extra scalars of the epoch just trained ("Group/name" -> value); resets them."""
        return {}


class BaselineBalancedLoss(XILLoss):
    """``L = CE(confounded) + lam * CE(corrected)``."""

    name = "balanced"

    def __init__(self, lam: float = 1.0):
        super().__init__()
        require(isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0,
                "lam", lam, "a number >= 0")
        self.lam = float(lam)

    def forward(self, logits, targets, is_corrected):
        _, conf, corr = split_cross_entropy(logits, targets, is_corrected)
        return conf + self.lam * corr, conf, corr

    def hparams(self) -> dict:
        return {"lambda": self.lam}


class BaselineImbalancedLoss(XILLoss):
    """``L = CE(full batch)``; the parts are reported for information only."""

    name = "imbalanced"

    def forward(self, logits, targets, is_corrected):
        per_sample, conf, corr = split_cross_entropy(logits, targets, is_corrected)
        return per_sample.mean(), conf.detach(), corr.detach()


def require_number(key: str, value, minimum: float = 0.0) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum,
            key, value, f"a number >= {minimum:g}")


class CorrectedCrossEntropyCMP(cooper.ConstrainedMinimizationProblem):
    """min CE(confounded part) s.t. CE(corrected part) <= eps: one inequality constraint."""

    def __init__(self, eps: float, multiplier: cooper.multipliers.DenseMultiplier):
        super().__init__()
        self.eps = eps
        self.corrected_ce = cooper.Constraint(cooper.ConstraintType.INEQUALITY,
                                              formulation_type=cooper.formulations.Lagrangian,
                                              multiplier=multiplier)

    def compute_cmp_state(self, model, x, targets, is_corrected) -> cooper.CMPState:
        logits = model(x)
        _, confounded, corrected = split_cross_entropy(logits, targets, is_corrected)
        violation = (corrected - self.eps).reshape(1)
        return cooper.CMPState(loss=confounded,
                               observed_constraints={self.corrected_ce: cooper.ConstraintState(violation)},
                               misc={"logits": logits, "corrected": corrected})


class LagrangianLoss(XILLoss):
    """Minimise CE(confounded) subject to CE(corrected) <= eps, by gradient
    descent on the model and projected gradient ascent (SGD, ``dual_lr``) on
    the multiplier; the update itself is ``PrimalDualStep``.

    ``total`` is the Lagrangian ``CE(confounded) + multiplier * (CE(corrected) - eps)``.
    """

    name = "lagrangian"

    def __init__(self, eps: float = 0.1, dual_lr: float = 0.05, multiplier_init: float = 0.0):
        super().__init__()
        require_number("eps", eps)
        require(isinstance(dual_lr, (int, float)) and not isinstance(dual_lr, bool) and dual_lr > 0,
                "dual_lr", dual_lr, "a number > 0")
        require_number("multiplier_init", multiplier_init)
        self.eps, self.dual_lr = float(eps), float(dual_lr)
        self.multiplier = cooper.multipliers.DenseMultiplier(init=torch.tensor([float(multiplier_init)]))
        self.cmp = CorrectedCrossEntropyCMP(self.eps, self.multiplier)
        self._violations: list[torch.Tensor] = []

    def forward(self, logits, targets, is_corrected):
        """The Lagrangian at the current multiplier (no dual step)."""
        _, conf, corr = split_cross_entropy(logits, targets, is_corrected)
        return conf + self.multiplier().detach().squeeze() * (corr - self.eps), conf, corr

    def wrap_optimizer(self, optimizer, grad_clip: float | None = None) -> "PrimalDualStep":
        return PrimalDualStep(self, optimizer, grad_clip)

    def record_violation(self, violation: torch.Tensor) -> None:
        self._violations.append(violation.detach())

    def epoch_metrics(self) -> dict:
        violation = torch.cat(self._violations).mean().item() if self._violations else math.nan
        self._violations = []
        return {"Lagrangian/multiplier": self.multiplier.weight.item(),
                "Lagrangian/violation": violation, "Lagrangian/epsilon": self.eps}

    def hparams(self) -> dict:
        return {"epsilon": self.eps, "dual_lr": self.dual_lr}


class PrimalDualStep:
    """The update ``train_one_epoch`` runs for the Lagrangian loss: one
    ``roll`` of cooper's AlternatingDualPrimalOptimizer (forward pass, dual
    step projected to multiplier >= 0, then the primal step with the updated
    multiplier). Cooper's docs: alternating updates converge better than
    simultaneous ones, and the dual-first order costs no extra forward pass."""

    def __init__(self, loss: LagrangianLoss, primal, grad_clip: float | None = None):
        self.loss = loss
        dual = torch.optim.SGD(loss.cmp.dual_parameters(), lr=loss.dual_lr, maximize=True)
        self.optimizer = cooper.optim.AlternatingDualPrimalOptimizer(
            cmp=loss.cmp, primal_optimizers=primal, dual_optimizers=dual)
        if grad_clip:
            params = [p for group in primal.param_groups for p in group["params"]]
            primal.register_step_pre_hook(lambda *_: torch.nn.utils.clip_grad_norm_(params, grad_clip))

    def train_step(self, model, x, targets, is_corrected, mask):
        """``(logits, (lagrangian, confounded_part, corrected_part))`` after one update."""
        rollout = self.optimizer.roll(compute_cmp_state_kwargs={
            "model": model, "x": x, "targets": targets, "is_corrected": is_corrected})
        state = rollout.cmp_state
        self.loss.record_violation(state.observed_constraints[self.loss.cmp.corrected_ce].violation)
        return state.misc["logits"], (rollout.primal_lagrangian_store.lagrangian.detach(),
                                      state.loss.detach(), state.misc["corrected"].detach())

    def state_dict(self) -> dict:
        """Primal and dual optimiser states (the multiplier is in the loss's state_dict)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def input_gradient_penalty(model, x: torch.Tensor, mask: torch.Tensor):
    """``(logits, penalty)``: the penalty is the sum over masked pixels of the
    squared input gradient of ``sum_c log p_c``, divided by the batch size.

    One forward pass over the whole batch; samples are independent, so the
    gradient of the batch sum gives each sample's own input gradient. The graph
    is kept (``create_graph``) so the penalty can be trained on.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    log_probs = F.log_softmax(logits, dim=1).sum()
    (grad,) = torch.autograd.grad(log_probs, x, create_graph=True)
    return logits, (grad * mask).pow(2).sum() / len(x)


RRR_BASES = ("balanced", "imbalanced")


class RRRLoss(XILLoss):
    """Right for the right reasons (Ross et al. 2017): ``base loss + lam *
    input_gradient_penalty`` over the masks the batch carries (the corrected
    samples' and those of confounded samples whose masks the user gave).

    ``lam`` weighs the penalty (it plays the role of the balanced loss's
    ``lam`` in run names); ``base`` is the cross-entropy part, ``balanced``
    with weight ``base_lam`` on the corrected part, or ``imbalanced``.
    """

    name = "rrr"

    def __init__(self, lam: float = 10.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__()
        require_number("lam", lam)
        require_choice("base", base, RRR_BASES)
        self.lam, self.base_name = float(lam), base
        self.base = BaselineBalancedLoss(base_lam) if base == "balanced" else BaselineImbalancedLoss()
        self._penalties: list[torch.Tensor] = []

    def batch_loss(self, model, x, targets, is_corrected, mask):
        logits, penalty = input_gradient_penalty(model, x, mask)
        total, conf, corr = self.base(logits, targets, is_corrected)
        self._penalties.append(penalty.detach())
        return logits, (total + self.lam * penalty, conf, corr)

    def forward(self, logits, targets, is_corrected):
        """The cross-entropy part alone (the penalty needs the model and inputs)."""
        return self.base(logits, targets, is_corrected)

    def epoch_metrics(self) -> dict:
        penalty = torch.stack(self._penalties).mean().item() if self._penalties else math.nan
        self._penalties = []
        return {"RRR/penalty": penalty}

    def hparams(self) -> dict:
        lam = {"base_lambda": self.base.lam} if self.base_name == "balanced" else {}
        return {"lambda": self.lam, "base": self.base_name, **lam}
