"""Feedback quality (``pool.feedback``): which pixels the user marks on the pool's dotted 8s,
what the correction and the mask-based losses then act on, and that the reliance figures
keep measuring the true confounder."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY, job_config, refusal
from xilsweep.correction import (
    FEEDBACK,
    CorrectedPool,
    Feedback,
    UserCorrectedDataset,
    correct,
    dotted_validation,
    feedback_label,
    transplant,
)
from xilsweep.data import Split, border_background
from xilsweep.errors import SettingError
from xilsweep.job import assemble
from xilsweep.resume import setting_differences

POOL = 40


def pool_with(data, kind: str, seed: int = 0, correction: str = "zero", **settings) -> UserCorrectedDataset:
    return UserCorrectedDataset(data.train, POOL, correction, seed, feedback=Feedback(kind, **settings))


def distance_to(mask: torch.Tensor) -> torch.Tensor:
    """Per image of ``mask`` [N, 1, H, W], each pixel's chessboard distance to its nearest marked pixel."""
    _, _, h, w = mask.shape
    pixels = torch.cartesian_prod(torch.arange(h), torch.arange(w)).float()
    return torch.stack(
        [torch.cdist(pixels, pixels[m.flatten()], p=float("inf")).min(1).values.view(1, h, w) for m in mask]
    )


def counts(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(1)


def test_exact_feedback_is_the_pool_as_before(data):
    """The marks are the true masks and every draw is the one made without feedback settings."""
    for correction in ("zero", "random", "mean", "transplant"):
        pool = pool_with(data, "exact", seed=3, correction=correction)
        assert torch.equal(pool.marks, pool.original.mask)
        assert torch.equal(pool.original.mask, data.train.mask[pool.index])
        g = torch.Generator().manual_seed(3 + 2)  # the pool's draw, then its correction, from one generator
        candidates = torch.nonzero((data.train.labels == 1) & data.train.mask.flatten(1).any(1)).flatten()
        assert torch.equal(pool.index, candidates[torch.randperm(len(candidates), generator=g)[:POOL]].sort().values)
        if correction == "transplant":
            expected = transplant(pool.original, data.train, g)
        else:
            expected = Split(correct(pool.original.x, pool.original.mask, correction, g), None, pool.original.mask)
        assert torch.equal(pool.corrected.x, expected.x) and torch.equal(pool.corrected.mask, expected.mask)
    known = pool.with_known_masks(data.train).mask
    in_pool = torch.zeros(len(data.train), dtype=torch.bool)
    in_pool[pool.index] = True
    assert torch.equal(known, data.train.mask & in_pool.view(-1, 1, 1, 1))


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_incomplete_marks_are_a_seeded_share_of_the_confounder(data, fraction):
    pool = pool_with(data, "incomplete", fraction=fraction)
    true = pool.original.mask
    assert not (pool.marks & ~true).any()
    assert counts(pool.marks).tolist() == [round(n * fraction) for n in counts(true).tolist()]
    assert torch.equal(pool_with(data, "incomplete", fraction=fraction).marks, pool.marks)
    other_draw = Feedback("incomplete", fraction).marks(pool.original, torch.Generator().manual_seed(1))
    assert not torch.equal(other_draw, pool.marks)


def test_wrong_marks_as_many_pixels_on_the_background_away_from_the_confounder(data):
    pool = pool_with(data, "wrong")
    true, x = pool.original.mask, pool.original.x
    ink = (x > 0) & ~true
    marks = pool.marks
    assert not (marks & ink).any()
    assert (distance_to(true)[marks] > 1).all()  # neither on nor touching a dot, diagonals included
    digit_background = border_background(x.masked_fill(true, 0))
    assert not (marks & ~digit_background).any()  # not in the 8's holes either
    room = counts(digit_background & (distance_to(true) > 1))
    assert torch.equal(counts(marks), torch.minimum(counts(true), room))
    assert (counts(marks) == counts(true)).float().mean() > 0.9  # short only where the background is crowded
    assert not torch.equal(pool_with(data, "wrong", seed=1).marks, marks)


def test_random_marks_each_pixel_with_the_confounder_density(data):
    pool = pool_with(data, "random")
    true = pool.original.mask
    density = true.flatten(1).float().mean(1)
    share = pool.marks.flatten(1).float().mean(1)
    assert abs(share.mean() - density.mean()) < 0.02
    # the marks do not follow the confounder: inside it they are as rare as anywhere
    assert abs(pool.marks[true].float().mean() - density.mean()) < 0.05
    assert torch.equal(pool_with(data, "random").marks, pool.marks)


def test_adversarial_marks_every_pixel(data):
    assert pool_with(data, "adversarial").marks.all()


@pytest.mark.parametrize("radius", [1, 2])
def test_dilated_marks_are_the_confounder_grown_by_the_radius(data, radius):
    pool = pool_with(data, "dilated", radius=radius)
    assert torch.equal(pool.marks, distance_to(pool.original.mask) <= radius)


@pytest.mark.parametrize("kind", FEEDBACK)
def test_the_correction_acts_on_the_marks_and_keeps_unmarked_dots(data, kind):
    pool = pool_with(data, kind)
    x, true, marks = pool.original.x, pool.original.mask, pool.marks
    assert torch.equal(pool.corrected.mask, marks)
    assert (pool.corrected.x[marks] == 0).all()
    assert torch.equal(pool.corrected.x[~marks], x[~marks])  # unmarked dots stay in the image
    assert torch.equal(pool.original.mask, data.train.mask[pool.index])  # the true confounders kept
    train = pool.with_known_masks(data.train)
    assert torch.equal(train.mask[pool.index], marks)  # what the mask-based losses see
    others = torch.ones(len(data.train), dtype=torch.bool)
    others[pool.index] = False
    assert not train.mask[others].any()
    if kind in ("incomplete", "wrong"):
        assert ((pool.corrected.x == 1) & true).any()


def test_transplant_pastes_the_marked_pixels(data):
    pool = pool_with(data, "incomplete", correction="transplant")
    assert torch.equal(pool.corrected.mask, pool.marks)
    assert torch.equal(pool.corrected.x[pool.marks], pool.original.x[pool.marks])
    assert (pool.corrected.labels != pool.original.labels).all()


def test_a_job_with_wrong_feedback_measures_the_true_confounder_and_records_the_feedback(data_root, tmp_path):
    exact = assemble(job_config(TINY, data_root))
    wrong = assemble(job_config([*TINY, "pool.feedback=wrong", "loss=rrr"], data_root))
    assert torch.equal(wrong.pool.index, exact.pool.index) and not torch.equal(wrong.pool.marks, exact.pool.marks)
    assert torch.equal(wrong.val_dotted.x, exact.val_dotted.x)
    assert torch.equal(wrong.val_dotted.x, dotted_validation(wrong.data.val, wrong.pool.original, wrong.seed).x)
    model = exact.model  # the same confounded model: the same figures whatever the user marked
    assert wrong.validation()(model) == exact.validation()(model)
    assert wrong.reasons(model, monitor=True) == exact.reasons(model, monitor=True)
    record = wrong.run(tmp_path / "job")
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert record["status"] == saved["status"] == "done"
    assert saved["config"]["pool"]["feedback"] == "wrong" and saved["settings"]["feedback"] == "wrong"
    assert exact.hparams()["feedback"] == "exact"


@pytest.mark.parametrize(
    "override, message",
    [
        ("pool.feedback=sloppy", "pool.feedback='sloppy' is not allowed: one of " + ", ".join(FEEDBACK)),
        ("pool.feedback_fraction=1.5", "pool.feedback_fraction=1.5 is not allowed: a number in [0, 1]"),
        ("pool.feedback_radius=-1", "pool.feedback_radius=-1 is not allowed: an integer >= 0"),
    ],
)
def test_bad_feedback_settings_stop_before_any_work_with_one_clear_line(override, message, data_root):
    assert message in refusal([*TINY, override], data_root)


def test_bad_feedback_is_refused_when_the_pool_settings_are_made():
    with pytest.raises(SettingError) as err:
        CorrectedPool(feedback="all")
    assert err.value.key == "feedback"


def test_labels_name_the_setting_that_shapes_the_marks():
    assert feedback_label("exact", 0.5, 1) == "exact"
    assert feedback_label("wrong", 0.5, 1) == "wrong"
    assert feedback_label("incomplete", 0.25, 1) == "incomplete0.25"
    assert feedback_label("dilated", 0.5, 2) == "dilated2"


def test_a_job_recorded_before_feedback_existed_resumes_with_exact_feedback_only():
    saved = {"pool": {"size": 10, "correction": "zero"}, "seed": 0}
    now = {"pool": {"size": 10, "correction": "zero", "feedback": "exact", "feedback_fraction": 0.5}, "seed": 0}
    assert setting_differences(saved, {**now, "pool": {**now["pool"], "feedback_radius": 1}}) == []
    wrong = {**now, "pool": {**now["pool"], "feedback": "wrong", "feedback_radius": 1}}
    assert setting_differences(saved, wrong) == ["pool.feedback: 'exact' there, 'wrong' now"]
