"""MixedBatchSampler: batches of confounded samples followed by corrected ones.

Indices refer to the concatenation ``[confounded (n_confounded) | corrected
pool (pool_size)]``, so the training loop gathers a batch with one indexing
operation on in-memory tensors. The sampler also works as a ``DataLoader``
``batch_sampler`` over a ``ConcatDataset`` in that order.
"""

from __future__ import annotations

import math

import torch

from xilsweep.errors import require, require_choice

K_SCHEDULES = ("constant", "linear", "step")


def create_is_user_corrected_mask(batch_len: int, k: int, device=None) -> torch.Tensor:
    """True for the last ``k`` entries of a batch of ``batch_len``: the layout
    MixedBatchSampler produces, the short last batch included."""
    mask = torch.zeros(batch_len, dtype=torch.bool, device=device)
    if k:
        mask[-k:] = True
    return mask


class MixedBatchSampler:
    """Each batch: ``batch_size - k`` confounded samples, then ``k`` corrected.

    Every confounded sample is seen once per epoch in shuffled order (the last
    batch may hold fewer of them, still followed by ``k`` corrected ones);
    corrected samples are drawn from shuffled passes over the pool, cycling
    when the pool is smaller than an epoch needs. ``k`` may follow a schedule
    over epochs. The order depends only on ``(seed, epoch)``, so an epoch can
    be replayed exactly, e.g. after a resume.
    """

    def __init__(
        self,
        n_confounded: int | None = None,
        batch_size: int = 64,
        k: int = 4,
        pool_size: int = 100,
        seed: int = 0,
        k_schedule: str = "constant",
        k_end: int | None = None,
        schedule_epochs: int = 10,
    ):
        require(isinstance(batch_size, int) and batch_size >= 2, "batch_size", batch_size, "an integer >= 2")
        require(isinstance(k, int) and 0 <= k < batch_size, "k", k, f"an integer in [0, batch_size={batch_size})")
        require_choice("k_schedule", k_schedule, K_SCHEDULES)
        k_end = k if k_end is None else k_end
        require(
            isinstance(k_end, int) and 0 <= k_end < batch_size,
            "k_end",
            k_end,
            f"an integer in [0, batch_size={batch_size})",
        )
        require(
            isinstance(schedule_epochs, int) and schedule_epochs >= 1,
            "schedule_epochs",
            schedule_epochs,
            "an integer >= 1",
        )
        self.batch_size, self.k_start, self.k_end, self.k_schedule = batch_size, k, k_end, k_schedule
        self.schedule_epochs, self.seed = schedule_epochs, seed
        self.epoch = 0
        self.n_confounded = self.pool_size = None
        if n_confounded is not None:
            self.set_sizes(n_confounded, pool_size)

    def set_sizes(self, n_confounded: int, pool_size: int) -> MixedBatchSampler:
        """The sizes of the data it indexes (known once the data is loaded): the
        confounded samples and the corrected pool, which must not be empty while
        a batch takes corrected samples."""
        require(n_confounded >= 1, "n_confounded", n_confounded, "at least one confounded sample")
        require(
            isinstance(pool_size, int) and pool_size >= (1 if self.k_start or self.k_end else 0),
            "pool_size",
            pool_size,
            "an integer >= 1 when k > 0 (>= 0 when k=0 and k_end=0)",
        )
        self.n_confounded, self.pool_size = n_confounded, pool_size
        return self

    def k_at(self, epoch: int) -> int:
        """Corrected samples per batch in ``epoch`` (0-based)."""
        if self.k_schedule == "linear":
            progress = min(epoch / max(self.schedule_epochs - 1, 1), 1.0)
            return round(self.k_start + progress * (self.k_end - self.k_start))
        if self.k_schedule == "step":
            return self.k_start if epoch < self.schedule_epochs else self.k_end
        return self.k_start

    @property
    def k(self) -> int:
        return self.k_at(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_confounded / (self.batch_size - self.k))

    def batches(self, epoch: int) -> list[torch.Tensor]:
        k = self.k_at(epoch)
        per_batch = self.batch_size - k
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        confounded = torch.randperm(self.n_confounded, generator=g)
        n_batches = math.ceil(self.n_confounded / per_batch)
        n_corrected = n_batches * k
        passes = math.ceil(n_corrected / self.pool_size) if n_corrected else 0
        corrected = (
            self.n_confounded
            + torch.cat(
                [torch.randperm(self.pool_size, generator=g) for _ in range(passes)]
                or [torch.empty(0, dtype=torch.long)]
            )[:n_corrected]
        )
        n_full = self.n_confounded // per_batch
        full = torch.cat(
            [confounded[: n_full * per_batch].view(n_full, per_batch), corrected[: n_full * k].view(n_full, k)], dim=1
        )
        batches = list(full.unbind(0))
        if n_full < n_batches:
            batches.append(torch.cat([confounded[n_full * per_batch :], corrected[n_full * k :]]))
        return batches

    def __iter__(self):
        return iter(self.batches(self.epoch))
