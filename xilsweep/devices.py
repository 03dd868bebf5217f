"""``trainer.device``: the device a job computes on, checked against the GPUs visible here.

``auto`` is a GPU where one is visible, else the CPU. In a sweep (``-m``) job number ``j``
(``hydra.job.num``) takes GPU ``j mod <visible GPUs>``: the parallel launcher's workers run
consecutive job numbers at once, so they share the GPUs evenly, and a job resumed or run again
gets the same GPU. ``CUDA_VISIBLE_DEVICES`` chooses the GPUs; ``cuda:N`` pins a job to one.
"""

from __future__ import annotations

import re

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from xilsweep.errors import SettingError

CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]*)")


def sweep_job_number() -> int | None:
    """This job's ``hydra.job.num`` in a sweep; None in a single run or outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return hydra.job.num if hydra.mode == RunMode.MULTIRUN else None


def auto_device(n_gpus: int, job_number: int | None) -> str:
    """What ``auto`` picks with ``n_gpus`` visible GPUs for sweep job ``job_number`` (None: a
    single run): the CPU without a GPU, GPU ``job_number mod n_gpus`` in a sweep, else torch's
    current GPU."""
    if n_gpus == 0:
        return "cpu"
    return "cuda" if job_number is None else f"cuda:{job_number % n_gpus}"


def choose_device(setting: str) -> torch.device:
    """The device ``setting`` (auto, cpu, cuda or cuda:N) names here; a SettingError on ``device``
    when it is none of these or names a GPU that is not visible."""
    n_gpus = torch.cuda.device_count()
    if setting == "auto":
        return torch.device(auto_device(n_gpus, sweep_job_number()))
    index = CUDA_INDEX.fullmatch(setting) if isinstance(setting, str) else None
    if setting not in ("cpu", "cuda") and index is None:
        raise SettingError("device", setting, "auto, cpu, cuda or cuda:N (N: the index of a visible GPU)")
    if setting != "cpu" and n_gpus == 0:
        raise SettingError("device", setting, "auto or cpu (no CUDA GPU is visible here)")
    if index is not None and int(index[1]) >= n_gpus:
        raise SettingError("device", setting, f"auto, cpu, cuda or cuda:0 to cuda:{n_gpus - 1} ({n_gpus} GPUs visible)")
    return torch.device(setting)
