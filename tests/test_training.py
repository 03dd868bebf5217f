import math

import pytest
import torch

from xilsweep.correction import UserCorrectedDataset
from xilsweep.errors import NonFiniteLossError
from xilsweep.losses import BaselineBalancedLoss, BaselineImbalancedLoss
from xilsweep.models import MLP, ConvNet
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import Trainer, concat, evaluate, fit_until_early_stopping, train_confounded, train_one_epoch


def small_cnn():
    torch.manual_seed(0)
    return ConvNet(channels=[8, 16], pool=[True, True], hidden=[32])


def test_a_short_fit_reduces_the_training_loss(data):
    model, trainer = small_cnn(), Trainer(device="cpu")
    history = train_confounded(model, data.train, trainer, epochs=3, lr=1e-3, batch_size=64, seed=0)
    losses = [h["loss"] for h in history]
    assert losses[2] < losses[0] / 2


def test_overfit_check_100_samples_reach_full_training_accuracy(data):
    """The guide's sanity check: 100 samples, loss falls, ~100% train accuracy, no NaN."""
    train = data.train.subset(torch.arange(100))
    model, trainer = small_cnn(), Trainer(device="cpu", lr=3e-3)
    sampler = MixedBatchSampler(len(train), batch_size=20, k=4, pool_size=10)
    pool = UserCorrectedDataset(train, pool_size=10)
    optimizer = trainer.make_optimizer(model.parameters())
    merged = concat(train, pool.corrected)
    losses = []
    for epoch in range(25):
        m = train_one_epoch(model, merged, sampler.batches(epoch), 4, BaselineBalancedLoss(1.0), optimizer)
        assert math.isfinite(m["loss"])
        losses.append(m["loss"])
    assert losses[-1] < losses[0] / 10
    assert evaluate(model, train)["accuracy"] == 1.0


def test_early_stopping_restores_the_best_epoch_and_respects_patience(data):
    model, trainer = small_cnn(), Trainer(device="cpu", max_epochs=30, patience=2)
    train_confounded(model, data.train, trainer, epochs=2, lr=1e-3, batch_size=64, seed=0)
    pool = UserCorrectedDataset(data.train, pool_size=50)
    sampler = MixedBatchSampler(len(data.train), batch_size=64, k=4, pool_size=50)
    seen = []
    result = fit_until_early_stopping(
        model,
        data.train,
        pool.corrected,
        data.val,
        sampler,
        BaselineBalancedLoss(1.0),
        trainer.make_optimizer(model.parameters()),
        max_epochs=30,
        patience=2,
        on_epoch=lambda e, m: seen.append(e),
    )
    assert seen == list(range(result.epochs_run + 1))
    assert result.epochs_run - result.best_epoch == 2 or result.epochs_run == 30
    best_val = max(h["val_accuracy"] for h in result.history)
    assert result.best_val_accuracy == best_val
    assert evaluate(model, data.val)["accuracy"] == pytest.approx(best_val)


def test_nan_loss_stops_training_with_a_clear_message(data):
    model = MLP(hidden=[16])
    with torch.no_grad():
        model.net[2].weight.fill_(float("nan"))
    sampler = MixedBatchSampler(len(data.train), batch_size=64, k=0, pool_size=0)
    with pytest.raises(NonFiniteLossError, match="trainer.lr"):
        train_one_epoch(
            model,
            data.train,
            sampler.batches(0),
            0,
            BaselineImbalancedLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
        )


def test_confounded_model_is_trained_on_the_whole_split_whatever_n_train(data_root):
    from xilsweep.data import ConfoundedMNIST08
    from xilsweep.pretrain import Pretraining

    records = []
    for n_train in (100, 300):
        data = ConfoundedMNIST08(root=str(data_root), n_train=n_train).load()
        assert len(data.train) == n_train and len(data.pretrain_split) == 1751
        _, record = Pretraining(epochs=1).confounded_model(
            data, small_cnn, {"test": "small_cnn"}, Trainer(device="cpu")
        )
        records.append(record)
    assert records[0]["path"] == records[1]["path"]
    assert records[0]["test_accuracy"] == records[1]["test_accuracy"]
