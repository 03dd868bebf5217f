import math

import pytest
import torch

from xilsweep.correction import UserCorrectedDataset
from xilsweep.errors import NonFiniteLossError
from xilsweep.losses import Batch, Method
from xilsweep.losses.base import Step, named_losses
from xilsweep.losses.baseline import Balanced, Imbalanced
from xilsweep.models import MLP, ConvNet
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import FitData, Trainer, concat, evaluate, train_confounded, train_one_epoch


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
        m = train_one_epoch(model, merged, sampler.batches(epoch), 4, Balanced(1.0), optimizer)
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
    result = trainer.fit(
        model,
        FitData(data.train, pool.corrected, data.val, sampler),
        Balanced(1.0),
        on_epoch=lambda e, m: seen.append(e),
    )
    assert seen == list(range(result.epochs_run + 1))
    assert result.epochs_run - result.best_epoch == 2 or result.epochs_run == 30
    best_val = max(h["val_accuracy"] for h in result.history)
    assert result.best_val_accuracy == best_val
    assert evaluate(model, data.val)["accuracy"] == pytest.approx(best_val)


class Scripted(Method):
    """Reports the batch's size as its total and twice that under a tag of its own; no training."""

    def objective(self, model, batch):
        logits = model(batch.x)
        size = torch.tensor(float(len(batch.x)))
        return logits, size, named_losses(size, size * 0, size * 0, {"Scripted/double": 2 * size})

    def update(self, model, batch, optimizer):
        with torch.no_grad():
            return Step(*self.objective(model, batch)[::2])


def test_an_epoch_reports_the_mean_of_every_named_loss_under_its_epoch_name(data):
    split = data.train.subset(torch.arange(100))
    sampler = MixedBatchSampler(len(split), batch_size=30, k=0, pool_size=0)  # batches of 30, 30, 30, 10
    model = MLP(hidden=[8])
    metrics = train_one_epoch(model, split, sampler.batches(0), 0, Scripted(), None)
    assert set(metrics) == {"loss", "loss_confounded", "loss_corrected", "Scripted/double", "accuracy"}
    assert metrics["loss"] == 25.0 and metrics["Scripted/double"] == 50.0
    assert metrics["accuracy"] == pytest.approx(evaluate(model, split)["accuracy"])


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
            Imbalanced(),
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


# --- gradient clipping ------------------------------------------------------


def steep_batch():
    torch.manual_seed(0)
    x, targets = torch.rand(8, 1, 28, 28) * 50, torch.tensor([0, 1] * 4)
    return Batch(x, targets, torch.tensor([False] * 4 + [True] * 4), torch.zeros_like(x, dtype=torch.bool))


def gradient_norm(model) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_the_trainers_optimiser_clips_the_gradient_before_every_step():
    torch.manual_seed(0)
    model = MLP(hidden=[16])
    optimizer = Trainer(device="cpu", optimizer="sgd", grad_clip=0.01).make_optimizer(model.parameters(), lr=0.0)
    norms = []  # read after the clipping hook, which was registered first
    optimizer.register_step_pre_hook(lambda *_: norms.append(gradient_norm(model)))
    Balanced(1.0).update(model, steep_batch(), optimizer)
    assert norms and norms[0] == pytest.approx(0.01, rel=1e-4)  # unclipped, it is in the thousands
    unclipped = Trainer(device="cpu", optimizer="sgd").make_optimizer(model.parameters(), lr=0.0)
    Balanced(1.0).update(model, steep_batch(), unclipped)
    assert gradient_norm(model) > 100


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_clipping_in_the_step_hook_is_bit_identical_to_clipping_between_backward_and_step(optimizer):
    def trained(clip_in_hook: bool):
        torch.manual_seed(0)
        model = MLP(hidden=[16])
        trainer = Trainer(device="cpu", optimizer=optimizer, grad_clip=0.5 if clip_in_hook else None)
        opt = trainer.make_optimizer(model.parameters())
        for _ in range(3):
            _, total, _ = Balanced(1.0).objective(model, steep_batch())
            opt.zero_grad(set_to_none=True)
            total.backward()
            if not clip_in_hook:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(True), trained(False), strict=True))
