"""docs/development.md's recipes, done once each: a new reliance figure is one function and
one spec; a new method is one module and one config; a new data set is one module and one
config. Each runs a tiny job in-process and finds its addition everywhere a user looks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY, events, job_config
from xilsweep import metrics
from xilsweep.config import register as register_schemas
from xilsweep.data import DATASETS, ConfoundedMNIST08, Confounder
from xilsweep.job import assemble
from xilsweep.losses import METHODS, MaskPenalty
from xilsweep.metrics import Evidence, RelianceFigure
from xilsweep.results.report import write_report
from xilsweep.run import run_job


def dotted_called_confounded(evidence: Evidence) -> float | None:
    """The new figure: the share of dotted images the model assigns to the confounded class."""
    if evidence.confounded_class is None:
        return None
    return (evidence.dotted_pred == evidence.confounded_class).float().mean().item()


@pytest.fixture
def new_figure():
    figure = metrics.register(
        RelianceFigure(
            "dotted_called_confounded",
            "dotted called 8",
            tag="Reasons/dotted_called_confounded",
            compute=dotted_called_confounded,
        )
    )
    yield figure
    metrics.RELIANCE.remove(figure)
    del metrics.FIGURES[figure.key]


def test_a_new_reliance_figure_reaches_the_record_tensorboard_the_cache_key_and_the_report(
    new_figure, data_root, tmp_path
):
    cfg = job_config(TINY, data_root)
    out = tmp_path / "sweep" / "0_job"
    out.mkdir(parents=True)
    run_job(cfg, out)
    record = json.loads((out / "metrics.json").read_text())
    key = new_figure.key
    # the corrected model's figure, both references' and the share removed between them
    assert 0 <= record[key] <= 1 and record["confounded"][key] > record["oracle"][key]
    assert key in record["shortcut_removed"]
    ea = events(out)
    tags = set(ea.Tags()["scalars"])
    assert {new_figure.tag, f"Confounded/{key}", f"Oracle/{key}", f"Shortcut_removed/{key}"} <= tags
    assert len(ea.Scalars(new_figure.tag)) == record["epochs_run"] + 1  # a forward figure: every epoch
    # the references' cached figures are keyed by the figures too: this cache holds the new one
    cached = Path(record["confounded"]["path"]).parent.glob("reasons_*.json")
    assert any(key in json.loads(path.read_text())["payload"]["full"] for path in cached)
    reliance_header = next(line for line in write_report(out.parent).splitlines() if "| dot flip rate |" in line)
    assert f"| {new_figure.label} |" in reliance_header


class AbsoluteInputGradients(MaskPenalty):
    """The new method: RRR's input gradients on the masked pixels, absolute instead of squared."""

    name = "rrr_abs"
    tag = "RRR-abs"

    def __init__(self, lam: float = 5.0, base: str = "balanced", base_lam: float = 1.0):
        super().__init__(lam, base, base_lam)

    def penalty(self, model, batch):
        x = batch.x.detach().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(F.log_softmax(logits, dim=1).sum(), x, create_graph=True)
        return logits, (grad * batch.mask).abs().sum() / len(x)


@dataclass
class CornerDotsMNIST08(ConfoundedMNIST08):
    """The new data set: 08MNIST with one dot in every corner instead of dots on the background."""

    confounder: Confounder = field(default_factory=lambda: Confounder(n_dots=4, positions="corners"))

    name = "mnist08_corners"
    folder = "08MNIST_corners"


# Defining them registered them, as their modules would; other tests of this process see the
# shipped options only, so they are registered for the test below alone.
NEW_OPTIONS = ((METHODS, METHODS.pop(AbsoluteInputGradients.name)), (DATASETS, DATASETS.pop(CornerDotsMNIST08.name)))


@pytest.fixture
def new_options():
    """The classes registered and the config Hydra composes them from (here the generated
    schema stands in for conf/<group>/<name>.yaml)."""
    for registry, option in NEW_OPTIONS:
        registry[option.name] = option
    register_schemas()
    yield
    for registry, option in NEW_OPTIONS:
        del registry[option.name]


def test_a_new_method_and_a_new_data_set_run_and_are_recorded(new_options, data_root, tmp_path):
    cfg = job_config([*TINY, "loss=AbsoluteInputGradients", "data=CornerDotsMNIST08"], data_root)
    out = tmp_path / "sweep" / "0_job"
    out.mkdir(parents=True)
    run_job(cfg, out)
    record = json.loads((out / "metrics.json").read_text())
    assert record["settings"]["loss"] == "rrr_abs" and record["settings"]["lam"] == 5.0  # no tuned entry: its default
    assert all(h["RRR-abs/penalty"] >= 0 for h in record["history"][1:])
    assert "RRR-abs/penalty" in events(out).Tags()["scalars"]
    assert "/08MNIST_corners/" in record["confounded"]["path"]
    masks = assemble(cfg).data.train.mask
    dotted = masks.flatten(1).any(1)
    corners = masks[dotted][:, 0, [1, 1, -2, -2], [1, -2, 1, -2]]  # a pixel in from each corner
    assert corners.all() and (masks[dotted] == masks[dotted][0]).all()  # the same four dots on every dotted 8
    assert "rrr_abs" in write_report(out.parent)
