"""min CE(confounded part) s.t. CE(corrected part) <= eps, by primal-dual updates (cooper-optim)."""

from __future__ import annotations

import cooper
import torch

from xilsweep.errors import require
from xilsweep.losses.base import Batch, Method, Step, named_losses, require_number, split_cross_entropy


class CorrectedCrossEntropyCMP(cooper.ConstrainedMinimizationProblem):
    """min CE(confounded part) s.t. CE(corrected part) <= eps: one inequality constraint."""

    def __init__(self, eps: float, multiplier: cooper.multipliers.DenseMultiplier):
        super().__init__()
        self.eps = eps
        self.corrected_ce = cooper.Constraint(
            cooper.ConstraintType.INEQUALITY, formulation_type=cooper.formulations.Lagrangian, multiplier=multiplier
        )

    def compute_cmp_state(self, model, batch: Batch) -> cooper.CMPState:
        logits = model(batch.x)
        _, confounded, corrected = split_cross_entropy(logits, batch)
        violation = (corrected - self.eps).reshape(1)
        return cooper.CMPState(
            loss=confounded,
            observed_constraints={self.corrected_ce: cooper.ConstraintState(violation)},
            misc={"logits": logits, "corrected": corrected},
        )


class Lagrangian(Method):
    """Minimise CE(confounded) subject to CE(corrected) <= eps, by gradient
    descent on the model and projected gradient ascent (SGD, ``dual_lr``) on
    the multiplier, which this module holds (so checkpoints keep it).

    ``total`` is the Lagrangian ``CE(confounded) + multiplier * (CE(corrected) - eps)``;
    each step also reports the constraint's violation ``CE(corrected) - eps``.
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

    def objective(self, model, batch):
        """The Lagrangian at the current multiplier (what ``update`` steps on after its dual step)."""
        logits = model(batch.x)
        _, conf, corr = split_cross_entropy(logits, batch)
        total = conf + self.multiplier().detach().squeeze() * (corr - self.eps)
        return logits, total, named_losses(total, conf, corr, {"Lagrangian/violation": corr - self.eps})

    def update(self, model, batch, optimizer) -> Step:
        """One ``roll`` of cooper's AlternatingDualPrimalOptimizer: forward pass, dual
        step (projected to multiplier >= 0), then the primal step with the updated
        multiplier. Cooper's docs: alternating updates converge better than
        simultaneous ones, and the dual-first order costs no extra forward pass.

        The dual optimiser is built for each step: SGD without momentum has no state,
        so nothing is lost, and the multiplier stays the method's only state."""
        dual = torch.optim.SGD(self.cmp.dual_parameters(), lr=self.dual_lr, maximize=True)
        primal_dual = cooper.optim.AlternatingDualPrimalOptimizer(
            cmp=self.cmp, primal_optimizers=optimizer, dual_optimizers=dual
        )
        rollout = primal_dual.roll(compute_cmp_state_kwargs={"model": model, "batch": batch})
        state = rollout.cmp_state
        violation = state.observed_constraints[self.cmp.corrected_ce].violation.squeeze()
        losses = named_losses(
            rollout.primal_lagrangian_store.lagrangian,
            state.loss,
            state.misc["corrected"],
            {"Lagrangian/violation": violation},
        )
        return Step(state.misc["logits"], losses)

    def state_metrics(self) -> dict:
        return {"Lagrangian/multiplier": self.multiplier.weight.item(), "Lagrangian/epsilon": self.eps}

    def hparams(self) -> dict:
        return {"eps": self.eps, "dual_lr": self.dual_lr}
