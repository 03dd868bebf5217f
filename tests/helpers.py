"""What many tests do: compose a config, run ``python -m xilsweep.run`` (a job
or a sweep; in this process or a subprocess), read a sweep's job folders and a
job's TensorBoard events."""

from __future__ import annotations

import io
import json
import logging
import os
import runpy
import subprocess
import sys
import warnings
from contextlib import chdir, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import xilsweep.config  # noqa: F401 (registers the config schemas Hydra composes from)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Tiny but real settings for jobs run from tests (conf/debug/tiny.yaml).
TINY = ["debug=tiny"]


def compose_config(overrides=(), hydra: bool = False) -> DictConfig:
    """The config ``python -m xilsweep.run`` composes from ``overrides`` (with its
    ``hydra`` node when ``hydra``)."""
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def job_config(overrides, data_root) -> DictConfig:
    """A job's config as a running job sees it: the ``hydra`` node only through HydraConfig."""
    cfg = compose_config([f"data.root={data_root}", *overrides], hydra=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def refusal(overrides, data_root) -> str:
    """The message ``assemble`` refuses the job's settings with, checked to be one line."""
    from xilsweep.job import ConfigError, assemble

    with pytest.raises(ConfigError) as caught:
        assemble(job_config(overrides, data_root))
    message = str(caught.value)
    assert "\n" not in message
    return message


def xilsweep_command(args: list[str]) -> tuple[list[str], dict]:
    """``python -m xilsweep.run args`` and its environment (this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return [sys.executable, "-m", "xilsweep.run", *args], env


def run_xilsweep(
    args: list[str], cwd: Path, timeout: int = 300, own_process: bool | None = None
) -> subprocess.CompletedProcess:
    """``python -m xilsweep.run args`` in a process of its own (``own_process``) or in this
    one (``run_in_process``). By default its own process only where a launcher is chosen: the
    launcher's jobs run in processes of their own, whose console output only a subprocess's
    capture holds."""
    if own_process is None:
        own_process = any(arg.startswith("hydra/launcher=") for arg in args)
    if not own_process:
        return run_in_process(args, cwd)
    command, env = xilsweep_command(args)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m xilsweep.run args`` run by this test process, for tests of what a job or
    sweep does rather than of its process (the imports, about 3 s a process, are paid once
    per test worker): exit status, stdout and stderr as a subprocess gives them, and this
    process's state (Hydra's, logging's, torch's, the environment) left as it was."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level, environ = root.handlers[:], root.level, dict(os.environ)
    threads, debug_mode = torch.get_num_threads(), torch.get_deterministic_debug_mode()
    fill_memory = torch.utils.deterministic.fill_uninitialized_memory
    stdout, stderr, argv, status = io.StringIO(), io.StringIO(), sys.argv, 0
    os.environ["HYDRA_FULL_ERROR"] = "0"
    sys.argv = ["xilsweep.run", *args]
    try:
        with chdir(cwd), redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            # as ``python -m`` runs it, though tests have imported the module already
            warnings.filterwarnings("ignore", "'xilsweep.run' found in sys.modules", RuntimeWarning)
            runpy.run_module("xilsweep.run", run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        torch.set_deterministic_debug_mode(debug_mode)
        torch.utils.deterministic.fill_uninitialized_memory = fill_memory
    return subprocess.CompletedProcess(["xilsweep.run", *args], status, stdout.getvalue(), stderr.getvalue())


def start_xilsweep(args: list[str], cwd: Path, output=subprocess.PIPE) -> subprocess.Popen:
    """The same, started in the background (stderr merged into ``output``)."""
    command, env = xilsweep_command(args)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def run_sweep(args: list[str], sweep_dir: Path, data_root, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m xilsweep.run -m`` on the tiny settings, its job folders in ``sweep_dir``."""
    return run_xilsweep(
        ["-m", *TINY, f"data.root={data_root}", *args, f"hydra.sweep.dir={sweep_dir}"], Path(sweep_dir).parent, timeout
    )


def job_folders(sweep_dir: Path) -> list[Path]:
    """A sweep's job folders in job-number order."""
    return sorted(
        (p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
        key=lambda p: int(p.name.split("_")[0]),
    )


def job_metrics(sweep_dir: Path) -> list[dict]:
    """The ``metrics.json`` of every job of a sweep, in job-number order."""
    return [json.loads((p / "metrics.json").read_text()) for p in job_folders(sweep_dir)]


def events(run_dir: Path) -> EventAccumulator:
    """Every scalar, image and tensor event of a job's TensorBoard run."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


# fields of a job's record that legitimately differ between two runs of the same job
VOLATILE = {"pid", "host", "config", "run_name", "overrides"}


def comparable(metrics: dict) -> dict:
    """The record without timings, the process and the fields that name the run (the
    config too: a resumed job's says resume=true)."""
    out = {k: v for k, v in metrics.items() if k not in VOLATILE and "seconds" not in k}
    out["history"] = [{k: v for k, v in h.items() if "seconds" not in k} for h in metrics["history"]]
    return out


def run_job_dir(data_root, out: Path, *extra, base=TINY) -> dict:
    """Run one job into ``out`` (which must succeed) and return its record."""
    result = run_xilsweep([*base, f"data.root={data_root}", f"hydra.run.dir={out}", *extra], out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


# data=folder's splits and the contract's (XILData) attribute holding each
FOLDER_SPLITS = {
    "train": "pretrain_split",
    "val": "val",
    "test": "test",
    "test_dotted": "test_dotted",
    "train_decorrelated": "decorrelated_train",
}


def write_folder(data, folder: Path, splits=tuple(FOLDER_SPLITS), limit: int | None = None) -> Path:
    """A data set's splits (the first ``limit`` images of each) written out as PNG images, one
    PNG per distinct mask and a manifest: what ``data=folder`` reads. Returns the manifest."""
    from torchvision.io import write_png

    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, mask_files = ["image,label,split,mask"], {}
    for name in splits:
        split = getattr(data, FOLDER_SPLITS[name])
        pixels = (split.x[:limit] * 255).round().to(torch.uint8)
        for i, (image, label, mask) in enumerate(zip(pixels, split.labels.tolist(), split.mask[:limit], strict=False)):
            image_file = f"images/{name}_{i}.png"
            write_png(image, str(folder / image_file))
            mask_file = ""
            if mask.any():
                key = mask.numpy().tobytes()
                if key not in mask_files:
                    mask_files[key] = f"images/mask_{len(mask_files)}.png"
                    write_png(mask.to(torch.uint8) * 255, str(folder / mask_files[key]))
                mask_file = mask_files[key]
            lines.append(f"{image_file},{data.class_names[label]},{name},{mask_file}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
