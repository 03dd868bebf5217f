"""The interactive part of XIL: which training 8s the user is asked about (``pool.select``,
``xilsweep.queries``) and the rounds over which the budget is spent (``pool.rounds``): the
strategies' orders against independent computations, what they read, the pool growing round
by round, the per-round records (metrics.json, TensorBoard) and a resume after a kill
mid-round."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.plugins.custom_scalar import layout_pb2

from helpers import TINY, events, job_config, refusal
from xilsweep import queries, tracking
from xilsweep.correction import CorrectedPool, UserCorrectedDataset, pool_candidates
from xilsweep.errors import SettingError
from xilsweep.job import ROUNDS_FILE, assemble
from xilsweep.metrics import REFERENCE_KINDS, RELIANCE
from xilsweep.queries import SELECTIONS, query_order
from xilsweep.resume import setting_differences
from xilsweep.run import run_name

ROUNDS = ["pool.size=6", "pool.rounds=3", "loss=rrr", *TINY]


@pytest.fixture(scope="module")
def tiny_job(data_root):
    """A tiny job's confounded model, explainer and data (the candidates the strategies rank)."""
    return assemble(job_config([*TINY, "pool.size=1"], data_root))


def candidates_of(job, n: int = 60):
    index = pool_candidates(job.data.train, job.confounded_class, 0)[:n]
    return index, job.data.train.subset(index)


def saliency(model, split):
    """|d logit_label / d x| by plain autograd (no captum), and the softmax probabilities."""
    x = split.x.clone().requires_grad_()
    model.eval()
    logits = model(x)
    logits.gather(1, split.labels.view(-1, 1)).sum().backward()
    return x.grad.abs(), logits.softmax(1).detach()


def test_each_strategy_orders_the_candidates_as_an_independent_computation_does(tiny_job):
    """least_confident: lowest top probability first; margin: the same order on two classes;
    explanation: largest share of the label's saliency on the confounder first; caipi: the right
    predictions whose hottest saliency pixel lies on the confounder first, each part least
    confident first; random: the order given."""
    _, split = candidates_of(tiny_job)
    grads, probs = saliency(tiny_job.model, split)
    top = probs.max(1).values
    mask = split.mask.flatten(1)
    share = (grads.flatten(1) * mask).sum(1) / grads.flatten(1).sum(1)
    hottest_on_dots = mask.gather(1, grads.flatten(1).argmax(1, keepdim=True)).squeeze(1)
    flagged = (probs.argmax(1) == split.labels) & hottest_on_dots

    def order(select):
        return query_order(select, tiny_job.model, tiny_job.explainer, split)

    assert torch.equal(order("random"), torch.arange(len(split)))
    assert torch.equal(order("least_confident"), top.argsort(stable=True))
    assert torch.equal(order("margin"), order("least_confident"))
    assert torch.allclose(share[order("explanation")], share.sort(descending=True).values, atol=1e-6)
    caipi = order("caipi")
    n_flagged = int(flagged.sum())
    assert flagged[caipi[:n_flagged]].all() and not flagged[caipi[n_flagged:]].any()
    for part in (caipi[:n_flagged], caipi[n_flagged:]):
        assert torch.all(top[part][1:] >= top[part][:-1] - 1e-6)


def test_strategies_read_only_the_current_model_and_training_candidates_not_asked_yet(data_root, monkeypatch):
    """By construction: the scores are given the job's model being fine-tuned and a split of
    training samples of the confounded class with a confounder, outside the pool."""
    seen = []
    real = queries.query_scores

    def watched(select, model, explainer, candidates):
        seen.append((model, candidates))
        return real(select, model, explainer, candidates)

    monkeypatch.setattr(queries, "query_scores", watched)
    job = assemble(job_config([*ROUNDS, "pool.select=caipi"], data_root))
    job.ask(2)
    train, eights = job.data.train, pool_candidates(job.data.train, job.confounded_class, 0)
    assert len(seen) == 2 and all(model is job.model for model, _ in seen)
    asked = set()
    for (_, split), chosen in zip(seen, (job.pool.index[:2], job.pool.index[2:]), strict=True):
        rows = [int(torch.nonzero((train.x == x).flatten(1).all(1)).flatten()[0]) for x in split.x[:50]]
        assert set(rows) <= set(eights.tolist()) and not set(rows) & asked
        asked |= set(chosen.tolist())
    assert len(set(job.pool.index.tolist())) == 4 and set(job.pool.index.tolist()) <= set(eights.tolist())


def test_a_grown_pool_is_the_pool_drawn_at_once_for_random_queries(data):
    """Random queries over rounds ask the seeded order's next samples: the same samples, marks
    and corrections as one draw of the whole budget."""
    for correction in ("zero", "random"):
        grown = UserCorrectedDataset(data.train, 4, correction, seed=1)
        grown.ask(6)
        whole = UserCorrectedDataset(data.train, 10, correction, seed=1)
        assert set(grown.index.tolist()) == set(whole.index.tolist())
        if correction == "zero":
            position = {int(i): n for n, i in enumerate(whole.index)}
            same = torch.tensor([position[int(i)] for i in grown.index])
            assert torch.equal(grown.corrected.x, whole.corrected.x[same])


def test_rounds_split_the_budget_evenly():
    assert CorrectedPool(size=10, rounds=4).round_sizes() == [2, 3, 2, 3]
    assert CorrectedPool(size=5, rounds=5).round_sizes() == [1] * 5
    assert CorrectedPool(size=100).round_sizes() == [100]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pool.select=oracle", "pool.select='oracle' is not allowed: one of " + ", ".join(SELECTIONS)),
        ("pool.rounds=0", "pool.rounds=0 is not allowed: an integer from 1 to size=6"),
        ("pool.rounds=7", "pool.rounds=7 is not allowed: an integer from 1 to size=6"),
    ],
)
def test_bad_query_settings_stop_before_any_work_with_one_clear_line(override, message, data_root):
    assert message in refusal([*ROUNDS, override], data_root)
    with pytest.raises(SettingError):
        CorrectedPool(size=6, select="oracle")


def test_each_round_fine_tunes_the_grown_pool_and_is_recorded(data_root, tmp_path):
    job = assemble(job_config([*ROUNDS, "pool.select=least_confident"], data_root))
    record = job.run(tmp_path)
    rounds = record["rounds"]
    assert [r["corrections"] for r in rounds] == [2, 4, 6] and [r["round"] for r in rounds] == [1, 2, 3]
    assert sum((r["queries"] for r in rounds), []) == job.pool.index.tolist()
    assert len(set(job.pool.index.tolist())) == 6
    last = rounds[-1]
    for key in ("test_accuracy", "dot_flip_rate", "shortcut_removed", "best_epoch"):
        assert last[key] == record[key]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["rounds"] == rounds and saved["settings"]["pool_size"] == 6
    assert saved["settings"]["select"] == "least_confident" and saved["settings"]["rounds"] == 3
    scalars = events(tmp_path)
    steps = [e.step for e in scalars.Scalars("Round/test_accuracy")]
    assert steps == [2, 4, 6]
    assert [e.value for e in scalars.Scalars("Round/shortcut_removed_dot_flip_rate")] == pytest.approx(
        [r["shortcut_removed"]["dot_flip_rate"] for r in rounds]
    )
    epochs = [e.step for e in scalars.Scalars("Accuracy/val_epoch")]
    assert epochs == list(range(sum(r["epochs_run"] + 1 for r in rounds)))  # the rounds' epochs one after another
    # floor and ceiling on the rounds' charts: the references' figures on the same whole test set
    [config] = scalars.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    [per_round] = [c for c in layout.category if c.title.startswith("Per round")]
    assert f"whole test set of {len(job.data.test)}" in per_round.title
    charted = {chart.title: list(chart.multiline.tag) for chart in per_round.chart}
    assert charted["dot flip rate"] == [
        "Round/dot_flip_rate",
        "Round/confounded_dot_flip_rate",
        "Round/oracle_dot_flip_rate",
    ]
    assert len(charted) == 1 + len(RELIANCE)  # clean accuracy and every reliance figure
    for tag in sum(charted.values(), []):
        kind, _, key = tag.removeprefix("Round/").partition("_")
        expected = (
            [r[tag.removeprefix("Round/")] for r in rounds]
            if kind not in REFERENCE_KINDS
            else [record[kind][key]] * len(rounds)
        )
        assert [(e.step, e.value) for e in scalars.Scalars(tag)] == [
            (r["corrections"], pytest.approx(v)) for r, v in zip(rounds, expected, strict=True)
        ], tag
    assert not (tmp_path / ROUNDS_FILE).exists() and not (tmp_path / "checkpoint.pth").exists()


class Killed(Exception):
    """Stands for a kill: raised by the epoch recorder in the middle of a round."""


def test_a_job_killed_mid_round_resumes_in_that_round_and_ends_as_an_uninterrupted_one(
    data_root, tmp_path, monkeypatch
):
    overrides = [*ROUNDS, "pool.select=explanation", "trainer.max_epochs=3"]
    whole = assemble(job_config(overrides, data_root)).run(tmp_path / "whole")

    record_epoch = tracking.EpochRecorder.__call__

    def killed_in_round_two(self, epoch, metrics):
        record_epoch(self, epoch, metrics)
        if self.step > 0 and epoch == 2:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(tracking.EpochRecorder, "__call__", killed_in_round_two)
        with pytest.raises(Killed):
            assemble(job_config(overrides, data_root)).run(tmp_path / "killed")
    assert (tmp_path / "killed" / ROUNDS_FILE).exists() and (tmp_path / "killed" / "checkpoint.pth").exists()
    resumed = assemble(job_config([*overrides, "trainer.resume=true"], data_root)).run(tmp_path / "killed")

    def figures(record):
        return [(r["queries"], r["test_accuracy"], r["dot_flip_rate"], r["best_epoch"]) for r in record["rounds"]]

    assert figures(resumed) == figures(whole)
    steps = [e.step for e in events(tmp_path / "killed").Scalars("Accuracy/val_epoch")]
    assert steps == sorted(set(steps)) == [e.step for e in events(tmp_path / "whole").Scalars("Accuracy/val_epoch")]


def test_run_names_and_resume_know_the_query_settings():
    assert run_name(0.001, "rrr", 100, 5, 0).endswith("_pool5_seed0")
    assert run_name(0.001, "rrr", 100, 5, 0, select="caipi", rounds=5).endswith("_pool5_selectcaipi_rounds5_seed0")
    before = {
        "pool": {"size": 5, "correction": "zero", "feedback": "exact", "feedback_fraction": 0.5, "feedback_radius": 1}
    }
    now = {"pool": {**before["pool"], "select": "random", "rounds": 1}}
    assert setting_differences(before, now) == []
    assert setting_differences(before, {"pool": {**now["pool"], "select": "caipi"}}) == [
        "pool.select: 'random' there, 'caipi' now"
    ]
