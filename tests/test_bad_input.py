"""Bad input everywhere: one clear line per problem, and no output left behind."""

import pytest
import torch

from helpers import TINY, run_xilsweep


def test_checkpoint_from_a_different_model_is_reported(data_root, tmp_path):
    from xilsweep.models import ConvNet

    ckpt = tmp_path / "other.pth"
    torch.save(ConvNet(channels=[4], pool=[True], hidden=[8]).state_dict(), ckpt)
    out = tmp_path / "job"
    result = run_xilsweep(
        [*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", f"pretrain.checkpoint={ckpt}"], tmp_path
    )
    assert result.returncode == 2
    assert "was saved from a different model" in result.stdout + result.stderr
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss=focal", "Could not find 'loss/focal'"),
        ("loss.lam=big", "Value 'big' of type 'str' could not be converted to Float\n    full_key: loss.lam"),
        ("seed=abc", "seed='abc' is not allowed: an integer"),
    ],
)
def test_bad_input_gives_one_clear_line_and_leaves_no_output(override, message, data_root, tmp_path):
    """Through the command line: Hydra's own errors (an unknown option, a wrong type) and one
    of xilsweep's. The other settings xilsweep checks are tested in-process (test_run.py)."""
    out = tmp_path / "job"
    result = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", *override.split()], tmp_path)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and message in text, text[-2000:]
    assert "Traceback" not in text
    assert not (out / "metrics.json").exists() and not list(out.glob("events.out.tfevents.*"))


def test_every_problem_is_reported_one_line_each(data_root, tmp_path):
    problems = ("loss.lam=-1.5", "trainer.lr=-0.5", "sampler.k=99")  # floats print as written
    out = tmp_path / "job"
    result = run_xilsweep([*TINY, f"data.root={data_root}", f"hydra.run.dir={out}", *problems], tmp_path)
    assert result.returncode == 2
    for text in (result.stdout + result.stderr, (out / "run.log").read_text()):
        lines = [line for line in text.splitlines() if "is not allowed" in line]
        assert len(lines) == len(problems), text[-2000:]
        for problem in problems:
            assert sum(f"{problem} is not allowed" in line for line in lines) == 1, problem
