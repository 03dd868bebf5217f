"""min CE(confounded part) s.t. CE(corrected part) <= eps, by primal-dual updates (cooper-optim)."""

from __future__ import annotations

import math

import cooper
import torch

from xilsweep.errors import require
from xilsweep.losses.base import XILLoss, require_number, split_cross_entropy


class CorrectedCrossEntropyCMP(cooper.ConstrainedMinimizationProblem):
    """min CE(confounded part) s.t. CE(corrected part) <= eps: one inequality constraint."""

    def __init__(self, eps: float, multiplier: cooper.multipliers.DenseMultiplier):
        super().__init__()
        self.eps = eps
        self.corrected_ce = cooper.Constraint(
            cooper.ConstraintType.INEQUALITY, formulation_type=cooper.formulations.Lagrangian, multiplier=multiplier
        )

    def compute_cmp_state(self, model, x, targets, is_corrected) -> cooper.CMPState:
        logits = model(x)
        _, confounded, corrected = split_cross_entropy(logits, targets, is_corrected)
        violation = (corrected - self.eps).reshape(1)
        return cooper.CMPState(
            loss=confounded,
            observed_constraints={self.corrected_ce: cooper.ConstraintState(violation)},
            misc={"logits": logits, "corrected": corrected},
        )


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
        require(
            isinstance(dual_lr, (int, float)) and not isinstance(dual_lr, bool) and dual_lr > 0,
            "dual_lr",
            dual_lr,
            "a number > 0",
        )
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
        return {
            "Lagrangian/multiplier": self.multiplier.weight.item(),
            "Lagrangian/violation": violation,
            "Lagrangian/epsilon": self.eps,
        }

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
            cmp=loss.cmp, primal_optimizers=primal, dual_optimizers=dual
        )
        if grad_clip:
            params = [p for group in primal.param_groups for p in group["params"]]

            def clip(*_) -> None:  # a step pre-hook must return None (clip_grad_norm_ returns the norm)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)

            primal.register_step_pre_hook(clip)

    def train_step(self, model, x, targets, is_corrected, mask):
        """``(logits, (lagrangian, confounded_part, corrected_part))`` after one update."""
        rollout = self.optimizer.roll(
            compute_cmp_state_kwargs={"model": model, "x": x, "targets": targets, "is_corrected": is_corrected}
        )
        state = rollout.cmp_state
        self.loss.record_violation(state.observed_constraints[self.loss.cmp.corrected_ce].violation)
        return state.misc["logits"], (
            rollout.primal_lagrangian_store.lagrangian.detach(),
            state.loss.detach(),
            state.misc["corrected"].detach(),
        )

    def state_dict(self) -> dict:
        """Primal and dual optimiser states (the multiplier is in the loss's state_dict)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
