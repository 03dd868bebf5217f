import itertools

import pytest
import torch

from xilsweep.correction import UserCorrectedDataset, correct
from xilsweep.errors import SettingError
from xilsweep.sampling import MixedBatchSampler, create_is_user_corrected_mask


@pytest.mark.parametrize(
    "batch_size,k,n,pool",
    [
        (b, k, n, p)
        for b, k, n, p in itertools.product([2, 8, 64], [0, 1, 4], [1, 7, 60, 61, 500], [1, 3, 100])
        if k < b
    ],
)
def test_mixed_batches_hold_each_confounded_sample_once_and_k_corrected_last(batch_size, k, n, pool):
    sampler = MixedBatchSampler(n, batch_size=batch_size, k=k, pool_size=pool, seed=1)
    for epoch in range(2):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler)
        confounded = []
        for i, batch in enumerate(batches):
            is_corrected = create_is_user_corrected_mask(len(batch), k)
            assert torch.equal(is_corrected, batch >= n)  # corrected exactly in the last k places
            assert is_corrected.sum() == k
            if i < len(batches) - 1:
                assert len(batch) == batch_size
            else:
                assert k < len(batch) <= batch_size
            assert (batch[is_corrected] < n + pool).all()
            confounded.append(batch[~is_corrected])
        confounded = torch.cat(confounded)
        assert torch.equal(confounded.sort().values, torch.arange(n))  # once per epoch


def test_small_pool_is_cycled_evenly_and_epochs_differ():
    sampler = MixedBatchSampler(600, batch_size=64, k=4, pool_size=7, seed=0)
    corrected = torch.cat([b[-4:] for b in sampler.batches(0)]) - 600
    counts = corrected.bincount(minlength=7)
    assert counts.max() - counts.min() <= 1
    assert not torch.equal(sampler.batches(0)[0], sampler.batches(1)[0])
    assert torch.equal(sampler.batches(3)[0], MixedBatchSampler(600, 64, 4, 7, seed=0).batches(3)[0])


def test_sampler_works_as_a_dataloader_batch_sampler():
    from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

    confounded = TensorDataset(torch.zeros(50, 1), torch.zeros(50))
    corrected = TensorDataset(torch.ones(5, 1), torch.ones(5))
    loader = DataLoader(
        ConcatDataset([confounded, corrected]), batch_sampler=MixedBatchSampler(50, batch_size=16, k=3, pool_size=5)
    )
    for _x, y in loader:
        assert torch.equal(y.bool(), create_is_user_corrected_mask(len(y), 3))


def test_k_schedules():
    linear = MixedBatchSampler(100, batch_size=16, k=2, k_end=8, k_schedule="linear", schedule_epochs=4)
    assert [linear.k_at(e) for e in range(6)] == [2, 4, 6, 8, 8, 8]
    step = MixedBatchSampler(100, batch_size=16, k=2, k_end=6, k_schedule="step", schedule_epochs=2)
    assert [step.k_at(e) for e in range(4)] == [2, 2, 6, 6]
    batches = step.batches(3)
    assert all(b[-6:].min() >= 100 for b in batches) and all((b[:-6] < 100).all() for b in batches)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"k": 64}, "k"),
        ({"k": -1}, "k"),
        ({"batch_size": 0}, "batch_size"),
        ({"pool_size": 0}, "pool_size"),
        ({"k_schedule": "cosine"}, "k_schedule"),
    ],
)
def test_bad_sampler_settings_name_the_key(kwargs, key):
    with pytest.raises(SettingError) as err:
        MixedBatchSampler(100, **kwargs)
    assert err.value.key == key


def test_corrected_pool_is_eights_without_dots(data):
    pool = UserCorrectedDataset(data.train, pool_size=50, seed=0)
    assert len(pool) == 50 and (pool.corrected.labels == 1).all()
    # zeroing the dots gives back the clean digit: no dot pixel is left
    assert (pool.corrected.x[pool.corrected.mask] == 0).all()
    assert torch.equal(pool.original.x, data.train.x[pool.index])
    assert torch.equal(pool.corrected.x, torch.where(pool.original.mask, 0.0, pool.original.x))
    assert torch.equal(pool.index, UserCorrectedDataset(data.train, 50, seed=0).index)


@pytest.mark.parametrize("method", ["zero", "random", "mean"])
def test_counterexample_variants_change_only_masked_pixels(data, method):
    pool = UserCorrectedDataset(data.train, pool_size=20, correction=method, seed=0)
    outside = ~pool.original.mask
    assert torch.equal(pool.corrected.x[outside], pool.original.x[outside])
    assert not torch.equal(pool.corrected.x[pool.original.mask], pool.original.x[pool.original.mask])
    assert pool.corrected.x.min() >= 0 and pool.corrected.x.max() <= 1


def test_mean_correction_fills_with_the_unmasked_neighbourhood_mean():
    x = torch.full((1, 1, 7, 7), 0.4)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 0, 3, 3] = True
    x[mask] = 1.0
    out = correct(x, mask, "mean", torch.Generator())
    assert out[0, 0, 3, 3].item() == pytest.approx(0.4)


def test_pool_larger_than_the_dotted_eights_is_refused(data):
    n_eights = int((data.train.labels == 1).sum())
    with pytest.raises(SettingError, match=f"from 0 to {n_eights}"):
        UserCorrectedDataset(data.train, pool_size=n_eights + 1)
