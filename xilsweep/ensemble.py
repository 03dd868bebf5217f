"""Vectorised ensembles: several jobs of a sweep trained as one batched model.

Jobs that share the architecture, the training and validation data, the batch
layout (batch size, k and its schedule, pool size) and the stopping settings
can train together: their weights are stacked
(``torch.func.stack_module_state``) and every step is one vmapped
forward/backward (``functional_call`` + ``vmap``) for all of them. Each member
keeps what a sweep varies: its loss (e.g. lambda), learning rate, weight decay
and momentum (a stacked Adam/SGD with torch's update rules and per-member
settings), its seed (its own batch order and corrected pool), and its own
early stopping: a member that stops keeps its best weights and leaves the
stack, the others go on.

``fit_ensemble`` takes, per member, the arguments ``Trainer.fit`` passes to
``fit_until_early_stopping`` (a ``FitRequest``) and returns what that would
return, so each job's folder, TensorBoard run and ``metrics.json`` are written
by the job's own code (``xilsweep.run``). ``hydra/launcher=ensemble``
(``hydra_plugins/xilsweep_ensemble_launcher``) wires it into sweeps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from xilsweep.data import Split
from xilsweep.losses import XILLoss, as_labels
from xilsweep.sampling import create_is_user_corrected_mask
from xilsweep.training import FitResult, epoch_means

PER_MEMBER = ("lr", "weight_decay", "momentum")  # optimiser settings members may differ in
UNSUPPORTED = ("amsgrad", "maximize", "nesterov", "decoupled_weight_decay", "capturable", "differentiable",
               "dampening")  # optimiser options the stacked update does not implement


@dataclass
class FitRequest:
    """The arguments of ``fit_until_early_stopping`` for one job."""

    model: torch.nn.Module
    train: Split
    pool: Split
    val: Split
    sampler: object
    loss_fn: XILLoss
    optimizer: torch.optim.Optimizer
    max_epochs: int
    patience: int
    grad_clip: float | None = None
    eval_batch_size: int = 256
    on_epoch: Callable[[int, dict], None] | None = None
    checkpoint: Path | None = None
    resume: bool = False


def signature(request: FitRequest) -> tuple | None:
    """What the members of one ensemble must share; None when a job must train
    alone: a loss with its own forward or update rule (RRR, Lagrangian), an
    optimiser other than plain Adam/SGD, or a checkpoint to resume from."""
    loss_type, optimizer, sampler = type(request.loss_fn), request.optimizer, request.sampler
    if loss_type.batch_loss is not XILLoss.batch_loss or loss_type.wrap_optimizer is not XILLoss.wrap_optimizer:
        return None
    if type(optimizer) not in (torch.optim.Adam, torch.optim.SGD) or len(optimizer.param_groups) != 1:
        return None
    shared = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", *PER_MEMBER)}
    if any(shared.get(option) for option in UNSUPPORTED):
        return None
    if request.resume and request.checkpoint is not None and Path(request.checkpoint).exists():
        return None
    return (repr(request.model), type(optimizer).__name__, repr(sorted(shared.items())),
            sampler.n_confounded, sampler.batch_size, sampler.pool_size,
            tuple(sampler.k_at(epoch) for epoch in range(request.max_epochs)),
            request.max_epochs, request.patience, request.grad_clip, request.eval_batch_size,
            str(request.val.x.device), len(request.train), len(request.val))


def vectorising_pays(request: FitRequest) -> bool:
    """Where one vmapped step for many members beats stepping them one by one.
    Measured here (README, "Speed"): on the CPU, vmapped convolutions (grouped
    convolutions, channels-first max-pooling) train 2-3x slower per member than
    one channels-last model, while models without convolutions (the MLP) train
    2-3x faster per member. On a GPU, where small models are bound by kernel
    launches, batching them is the textbook win (not measured here)."""
    return request.val.x.device.type != "cpu" or not any(isinstance(m, torch.nn.Conv2d)
                                                         for m in request.model.modules())


def same_data(a: FitRequest, b: FitRequest) -> bool:
    return all(x is y or torch.equal(x, y) for x, y in ((a.train.x, b.train.x), (a.train.targets, b.train.targets),
                                                          (a.val.x, b.val.x), (a.val.targets, b.val.targets)))


def ensembles(requests: Sequence[FitRequest], max_members: int, vectorise: str = "auto") -> list[list[int]]:
    """Indices of ``requests`` grouped into ensembles of at most ``max_members``,
    in order; a request that cannot join one is a group of its own, and with
    ``vectorise="auto"`` so is one where ``vectorising_pays`` says no
    (``"always"``: wherever the signatures allow)."""
    groups: list[list[int]] = []
    by_signature: dict[tuple, list[list[int]]] = {}
    for i, request in enumerate(requests):
        key = signature(request) if vectorise == "always" or vectorising_pays(request) else None
        candidates = [] if key is None else by_signature.setdefault(key, [])
        group = next((g for g in candidates if len(g) < max_members and same_data(requests[g[0]], request)), None)
        if group is None:
            group = []
            groups.append(group)
            candidates.append(group)
        group.append(i)
    return groups


def along(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-member values ``[M]`` shaped to broadcast over stacked ``[M, ...]``."""
    return values.view(-1, *[1] * (like.dim() - 1))


class StackedOptimizer:
    """torch's Adam or SGD (momentum, L2 weight decay) on stacked parameters
    ``[M, ...]``, with each member's learning rate, weight decay and momentum
    taken from the optimiser its job built."""

    def __init__(self, params: dict[str, torch.Tensor], optimizers: Sequence[torch.optim.Optimizer]):
        groups = [o.param_groups[0] for o in optimizers]
        device = next(iter(params.values())).device
        self.params = params
        self.adam = isinstance(optimizers[0], torch.optim.Adam)
        self.lr, self.weight_decay, self.momentum = (
            torch.tensor([float(g.get(key, 0.0)) for g in groups], device=device) for key in PER_MEMBER)
        self.betas, self.eps = groups[0].get("betas"), groups[0].get("eps")
        self.steps = 0
        self.state: dict[str, list[torch.Tensor]] = {}

    def keep(self, index: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Continue with the members at ``index`` only (their new stacked ``params``)."""
        self.params = params
        self.lr, self.weight_decay, self.momentum = self.lr[index], self.weight_decay[index], self.momentum[index]
        self.state = {name: [s[index] for s in states] for name, states in self.state.items()}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for name, p in self.params.items():
            if p.grad is None:
                continue
            grad = p.grad + along(self.weight_decay, p) * p
            lr = along(self.lr, p)
            if self.adam:
                (beta1, beta2), t = self.betas, self.steps
                exp_avg, exp_avg_sq = self.state.setdefault(name, [torch.zeros_like(p), torch.zeros_like(p)])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(self.eps)
                p.sub_(lr / (1 - beta1 ** t) * exp_avg / denom)
            else:
                if name in self.state:
                    grad = self.state[name][0].mul_(along(self.momentum, p)).add_(grad)
                else:
                    self.state[name] = [grad.clone()]
                p.sub_(lr * grad)


def clip_grad_norms(params: dict[str, torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` per member: each member's gradient is scaled by its own norm."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(along(coef, g))


def fit_ensemble(requests: Sequence[FitRequest],
                 around: Callable[[int], AbstractContextManager] = lambda member: nullcontext()
                 ) -> list[FitResult | Exception]:
    """Train ``requests`` (one ``signature``, the same data: see ``ensembles``)
    as one vectorised model; per member, what ``fit_until_early_stopping``
    returns, or the exception that ended that member alone (a non-finite loss).

    Each member's ``on_epoch`` sees its own model holding its current weights,
    inside ``around(member)``. ``seconds`` in a member's history is its share
    of the ensemble's epoch time.
    """
    first = requests[0]
    n_members, n_train, pool_size = len(requests), len(first.train), len(first.pool)
    device, val_labels = first.train.x.device, first.val.labels
    # One tensor holds the shared training split and every member's pool after it.
    x = torch.cat([first.train.x, *(r.pool.x for r in requests)])
    targets = torch.cat([first.train.targets, *(r.pool.targets for r in requests)])
    labels = as_labels(targets)
    for r in requests:
        r.model.train()  # stack_module_state wants one mode
    params, buffers = stack_module_state([r.model for r in requests])
    template = copy.deepcopy(first.model).to("meta")  # the structure; weights come from the stack

    def logits_of(p, b, inputs):
        return functional_call(template, (p, b), (inputs,))

    train_forward = vmap(logits_of, randomness="different")  # different dropout masks per member
    eval_forward = vmap(logits_of, in_dims=(0, 0, None))
    optimizer = StackedOptimizer(params, [r.optimizer for r in requests])
    live = list(range(n_members))  # members still training, in stack order
    pool_offset = torch.arange(n_members, device=device) * pool_size
    results: list[FitResult | Exception | None] = [None] * n_members
    history: list[list[dict]] = [[] for _ in requests]
    best: list[tuple] = [()] * n_members
    best_epoch, best_state = [0] * n_members, [{}] * n_members

    def state_of(i: int) -> dict:
        return {name: t[i].detach().clone() for name, t in (*params.items(), *buffers.items())}

    @torch.no_grad()
    def evaluate_live() -> tuple[list[float], list[float]]:
        template.eval()
        chunk = max(1, first.eval_batch_size // len(live))  # one job's evaluation memory
        logits = torch.cat([eval_forward(params, buffers, part) for part in first.val.x.split(chunk)], dim=1)
        loss = F.cross_entropy(logits.flatten(0, 1), val_labels.repeat(len(live)), reduction="none")
        accuracy = (logits.argmax(-1) == val_labels).float().mean(1)
        return loss.view(len(live), -1).mean(1).tolist(), accuracy.tolist()

    def record(i: int, epoch: int, metrics: dict) -> None:
        """Member ``live[i]``'s epoch: history, best weights, its on_epoch."""
        m, request = live[i], requests[live[i]]
        history[m].append(metrics)
        score = (metrics["val_accuracy"], -metrics["val_loss"])
        if epoch == 0 or score > best[m]:
            best[m], best_epoch[m], best_state[m] = score, epoch, state_of(i)
        if request.on_epoch:
            request.model.load_state_dict(state_of(i))
            with around(m):
                request.on_epoch(epoch, metrics)

    def finish(m: int, epoch: int) -> FitResult:
        requests[m].model.load_state_dict(best_state[m])
        return FitResult(best_epoch[m], best[m][0], epoch, history[m], stopped_early=epoch < first.max_epochs)

    val_loss, val_accuracy = evaluate_live()
    for i in range(n_members):
        record(i, 0, {"epoch": 0, "val_loss": val_loss[i], "val_accuracy": val_accuracy[i]})
    for epoch in range(1, first.max_epochs + 1):
        began = time.perf_counter()
        for m in live:
            requests[m].sampler.set_epoch(epoch - 1)
        k = requests[live[0]].sampler.k  # the same for all: part of the signature
        sums = torch.zeros(len(live), 4, device=device)  # per member: total, confounded, corrected, hits
        n_batches = n_seen = 0
        template.train()
        for columns in zip(*(requests[m].sampler.batches(epoch - 1) for m in live)):
            index = torch.stack(columns).to(device)  # [members, batch] into train | own pool
            index = index + (index >= n_train) * along(pool_offset, index)
            batch_targets, is_corrected = targets[index], create_is_user_corrected_mask(index.shape[1], k, device)
            logits = train_forward(params, buffers, x[index])
            parts = torch.stack([torch.stack(requests[m].loss_fn(logits[i], batch_targets[i], is_corrected))
                                 for i, m in enumerate(live)])
            for p in params.values():
                p.grad = None
            parts[:, 0].sum().backward()  # members share no weights: each gets its own loss's gradient
            if first.grad_clip:
                clip_grad_norms(params, first.grad_clip)
            optimizer.step()
            hits = (logits.detach().argmax(-1) == labels[index]).sum(1, keepdim=True)
            sums += torch.cat([parts.detach(), hits.float()], dim=1)
            n_batches, n_seen = n_batches + 1, n_seen + index.shape[1]
        val_loss, val_accuracy = evaluate_live()
        seconds = (time.perf_counter() - began) / len(live)
        staying = []
        for i, member_sums in enumerate(sums.tolist()):
            m, request = live[i], requests[live[i]]
            try:
                train = epoch_means(member_sums, n_batches, n_seen)
                record(i, epoch, {"epoch": epoch, **{f"train_{n}": v for n, v in train.items()},
                                  "val_loss": val_loss[i], "val_accuracy": val_accuracy[i], "k": k,
                                  **request.loss_fn.epoch_metrics(), "seconds": seconds})
            except Exception as e:  # this member's job fails as it would alone; the others go on
                results[m] = e
                continue
            if epoch - best_epoch[m] >= first.patience or epoch == first.max_epochs:
                results[m] = finish(m, epoch)
            else:
                staying.append(i)
        if len(staying) < len(live):
            if not staying:
                break
            keep = torch.tensor(staying, device=device)
            params = {name: p.detach()[keep].requires_grad_() for name, p in params.items()}
            buffers = {name: b[keep] for name, b in buffers.items()}
            optimizer.keep(keep, params)
            pool_offset, live = pool_offset[keep], [live[i] for i in staying]
    return results
