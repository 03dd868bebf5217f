"""``trainer.device``: the settings accepted against the GPUs visible (a fake GPU count: these
tests run without a GPU), and ``auto`` spreading a sweep's jobs over the visible GPUs."""

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from helpers import TINY, compose_config, job_config
from xilsweep.devices import auto_device, choose_device, sweep_job_number
from xilsweep.errors import SettingError
from xilsweep.job import ConfigError, assemble
from xilsweep.training import Trainer


@pytest.fixture
def visible_gpus(monkeypatch):
    """Set how many GPUs torch reports as visible."""

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


@pytest.fixture
def hydra_job():
    """Make this process look like a job of Hydra's (``mode``, ``job_num``), restored afterwards."""
    saved = HydraConfig.instance().cfg

    def become(mode: RunMode, job_num: int) -> None:
        cfg = compose_config(hydra=True)
        cfg.hydra.mode, cfg.hydra.job.num = mode, job_num
        HydraConfig.instance().set_config(cfg)

    yield become
    HydraConfig.instance().cfg = saved


def test_auto_takes_gpu_job_number_mod_visible_gpus_in_a_sweep():
    assert [auto_device(3, job) for job in range(7)] == [f"cuda:{i}" for i in (0, 1, 2, 0, 1, 2, 0)]
    assert auto_device(1, 5) == "cuda:0"
    assert auto_device(2, None) == "cuda"  # a single run: torch's current GPU
    assert auto_device(0, 4) == auto_device(0, None) == "cpu"


def test_a_sweep_job_reads_its_job_number_and_a_single_run_none(hydra_job, visible_gpus):
    visible_gpus(2)
    hydra_job(RunMode.MULTIRUN, 5)
    assert sweep_job_number() == 5
    assert Trainer(device="auto").device == torch.device("cuda:1")
    hydra_job(RunMode.RUN, 5)
    assert sweep_job_number() is None
    assert Trainer(device="auto").device == torch.device("cuda")


@pytest.mark.parametrize("setting", ["cpu", "cuda", "cuda:0", "cuda:1"])
def test_a_visible_gpu_is_accepted_by_its_index(setting, visible_gpus):
    visible_gpus(2)
    assert choose_device(setting) == torch.device(setting)


@pytest.mark.parametrize(
    "n_gpus,setting,allowed",
    [
        (2, "cuda:2", "auto, cpu, cuda or cuda:0 to cuda:1 (2 GPUs visible)"),
        (0, "cuda:0", "auto or cpu (no CUDA GPU is visible here)"),
        (0, "cuda", "auto or cpu (no CUDA GPU is visible here)"),
        (2, "gpu", "auto, cpu, cuda or cuda:N (N: the index of a visible GPU)"),
        (2, "cuda:01", "auto, cpu, cuda or cuda:N (N: the index of a visible GPU)"),
        (2, "cuda:-1", "auto, cpu, cuda or cuda:N (N: the index of a visible GPU)"),
    ],
)
def test_a_device_that_is_not_here_is_refused_naming_the_allowed_ones(n_gpus, setting, allowed, visible_gpus):
    visible_gpus(n_gpus)
    with pytest.raises(SettingError) as err:
        choose_device(setting)
    assert str(err.value) == f"device={setting!r} is not allowed: {allowed}"


def test_cuda_n_without_a_gpu_stops_the_job_with_one_line(data_root, visible_gpus):
    visible_gpus(0)
    with pytest.raises(ConfigError) as err:
        assemble(job_config([*TINY, "trainer.device=cuda:1"], data_root))
    assert str(err.value) == "trainer.device='cuda:1' is not allowed: auto or cpu (no CUDA GPU is visible here)"
