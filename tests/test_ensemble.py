"""Vectorised ensembles: members train as they would alone; the ensemble
launcher writes the same records as Hydra's basic launcher."""

import copy
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from xilsweep.correction import UserCorrectedDataset
from xilsweep.ensemble import FitRequest, ensembles, fit_ensemble, signature
from xilsweep.errors import NonFiniteLossError
from xilsweep.losses import BaselineBalancedLoss, BaselineImbalancedLoss, RRRLoss
from xilsweep.models import MLP, ConvNet
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import Trainer, fit_until_early_stopping, train_confounded


@pytest.fixture(scope="module")
def small(data):
    """A 200-image training split and a briefly trained (confounded) small CNN."""
    train = data.train.subset(torch.arange(200))
    torch.manual_seed(0)
    model = ConvNet(channels=[4, 8], pool=[True, True], hidden=[16])
    train_confounded(model, train, Trainer(device="cpu"), epochs=1, lr=1e-3, batch_size=32, seed=0)
    return train, data.val.subset(torch.arange(120)), model


def request(small, loss, lr=1e-3, seed=0, optimizer="adam", model=None, log=None, **trainer):
    train, val, start = small
    trainer = Trainer(device="cpu", lr=lr, optimizer=optimizer, max_epochs=5, patience=2, **trainer)
    model = trainer.place(copy.deepcopy(model or start))
    pool = UserCorrectedDataset(train, pool_size=8, seed=seed).corrected
    sampler = MixedBatchSampler(len(train), batch_size=32, k=4, pool_size=8, seed=seed)
    on_epoch = None if log is None else (lambda epoch, metrics: log.append(epoch))
    return FitRequest(model, train, pool, val, sampler, loss, trainer.make_optimizer(model.parameters()),
                      trainer.max_epochs, trainer.patience, trainer.grad_clip, trainer.eval_batch_size, on_epoch)


def alone(r: FitRequest):
    return fit_until_early_stopping(r.model, r.train, r.pool, r.val, r.sampler, r.loss_fn, r.optimizer,
                                    r.max_epochs, r.patience, r.grad_clip, r.eval_batch_size, r.on_epoch)


MEMBERS = [  # (loss, lr, seed, optimizer, trainer settings): what sweeps vary, members stopping at different epochs
    (BaselineBalancedLoss(0.5), 1e-3, 0, "adam", {}),
    (BaselineBalancedLoss(5.0), 2e-2, 1, "adam", {"weight_decay": 1e-3}),
    (BaselineImbalancedLoss(), 3e-3, 2, "adam", {}),
]


@pytest.mark.parametrize("optimizer,lrs,extra", [
    ("adam", [lr for _, lr, _, _, _ in MEMBERS], {}),
    ("sgd", [0.01, 0.1, 0.03], {"grad_clip": 0.5, "momentum": 0.8}),
])
def test_members_train_as_they_would_alone(small, optimizer, lrs, extra):
    logs_alone, logs_together = [[] for _ in MEMBERS], [[] for _ in MEMBERS]
    settings = [(loss, lr, seed, optimizer, {**trainer, **extra})
                for (loss, _, seed, _, trainer), lr in zip(MEMBERS, lrs)]
    reference = [request(small, loss, lr, seed, opt, log=log, **kw)
                 for (loss, lr, seed, opt, kw), log in zip(settings, logs_alone)]
    expected = [alone(r) for r in reference]
    together = [request(small, loss, lr, seed, opt, log=log, **kw)
                for (loss, lr, seed, opt, kw), log in zip(settings, logs_together)]
    assert ensembles(together, max_members=8, vectorise="always") == [[0, 1, 2]]
    results = fit_ensemble(together)
    assert len({r.epochs_run for r in expected}) > 1, "members should stop at different epochs"
    for want, got, ref, mine, log_alone, log_together in zip(expected, results, reference, together,
                                                             logs_alone, logs_together):
        assert (got.best_epoch, got.epochs_run, got.stopped_early) == (want.best_epoch, want.epochs_run,
                                                                      want.stopped_early)
        assert log_together == log_alone == list(range(want.epochs_run + 1))
        assert [sorted(h) for h in got.history] == [sorted(h) for h in want.history]
        for h_got, h_want in zip(got.history, want.history):
            for key, value in h_want.items():
                if key != "seconds":
                    assert h_got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        for name, weight in ref.model.state_dict().items():  # the best weights, restored
            assert torch.allclose(mine.model.state_dict()[name], weight, atol=1e-5), name


def test_a_member_with_a_non_finite_loss_fails_alone(small):
    broken = copy.deepcopy(small[2])
    with torch.no_grad():
        broken.classifier[1].weight.fill_(float("nan"))
    requests = [request(small, BaselineBalancedLoss(1.0)), request(small, BaselineBalancedLoss(1.0), model=broken)]
    expected = alone(request(small, BaselineBalancedLoss(1.0)))
    healthy, failed = fit_ensemble(requests)
    assert isinstance(failed, NonFiniteLossError) and "trainer.lr" in str(failed)
    assert healthy.epochs_run == expected.epochs_run
    assert healthy.best_val_accuracy == pytest.approx(expected.best_val_accuracy)


def test_only_compatible_jobs_share_an_ensemble(small, tmp_path):
    base = request(small, BaselineBalancedLoss(1.0))
    other_lambda_lr_seed = request(small, BaselineBalancedLoss(3.0), lr=5e-3, seed=4)
    other_architecture = request(small, BaselineBalancedLoss(1.0),
                                 model=ConvNet(channels=[4, 8], pool=[True, True], hidden=[32]))
    sgd = request(small, BaselineBalancedLoss(1.0), optimizer="sgd")
    rrr = request(small, RRRLoss())  # needs input gradients inside its loss: trains alone
    resumed = request(small, BaselineBalancedLoss(1.0))
    resumed.checkpoint, resumed.resume = tmp_path / "checkpoint.pth", True
    resumed.checkpoint.write_bytes(b"")
    assert signature(base) == signature(other_lambda_lr_seed)
    assert signature(rrr) is None and signature(resumed) is None
    requests = [base, other_architecture, other_lambda_lr_seed, sgd, rrr, resumed, copy.copy(base)]
    assert ensembles(requests, max_members=8, vectorise="always") == [[0, 2, 6], [1], [3], [4], [5]]
    assert ensembles(requests, max_members=2, vectorise="always") == [[0, 2], [1], [3], [4], [5], [6]]
    # auto: on the CPU only convolution-free models are vectorised (where it measured faster)
    assert ensembles(requests, max_members=8) == [[i] for i in range(len(requests))]
    mlps = [request(small, BaselineBalancedLoss(lam), model=MLP(hidden=[8])) for lam in (1.0, 2.0)]
    assert ensembles(mlps, max_members=8) == [[0, 1]]


def run_folders(sweep):
    return {p.name: p for p in sweep.iterdir() if p.is_dir()}


def scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_ensemble_launcher_writes_what_the_basic_launcher_writes(xilsweep_cli, data_root, tmp_path):
    sweep_args = ["-m", *TINY, f"data.root={data_root}", "loss.lam=0.5,4", "seed=3"]
    basic, ensemble = tmp_path / "basic", tmp_path / "ensemble"
    vectorised = ["hydra/launcher=ensemble", "hydra.launcher.vectorise=always"]  # auto trains CNNs alone on CPUs
    for folder, launcher in ((basic, []), (ensemble, vectorised)):
        result = xilsweep_cli([*sweep_args, *launcher, f"hydra.sweep.dir={folder}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "as one vectorised model" in result.stdout + result.stderr
    expected, got = run_folders(basic), run_folders(ensemble)
    assert sorted(got) == sorted(expected) and len(got) == 2
    for name, folder in got.items():
        want = json.loads((expected[name] / "metrics.json").read_text())
        mine = json.loads((folder / "metrics.json").read_text())
        assert mine["status"] == "done" and set(mine) == set(want)
        assert (mine["settings"], mine["overrides"], mine["epochs_run"]) == (want["settings"], want["overrides"],
                                                                            want["epochs_run"])
        for key in ("best_val_accuracy", "test_accuracy", "test_dotted_accuracy"):
            assert mine[key] == pytest.approx(want[key], abs=2e-3), key
        assert {p.name for p in folder.iterdir() if not p.name.startswith("events.")} == \
            {p.name for p in expected[name].iterdir() if not p.name.startswith("events.")}
        assert set(scalars(folder).Tags()["scalars"]) == set(scalars(expected[name]).Tags()["scalars"])
        job_lines = [[line for line in (run / "run.log").read_text().splitlines() if "][xilsweep][" in line]
                     for run in (folder, expected[name])]  # (the first basic job also built the confounded model)
        assert len(job_lines[0]) == len(job_lines[1])
        assert sum(" - epoch " in line for line in job_lines[0]) == mine["epochs_run"] + 1
        assert all(name in line for line in job_lines[0] if "output" in line)  # no other job's lines
