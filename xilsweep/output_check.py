"""``hydra.callbacks.output_check``: an output folder that cannot be written is one clear
line and exit status 2 before Hydra starts the job or the sweep (Hydra itself would stop
with a traceback from creating the folder)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold a job's files (created here if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or str(e)


def refuse_unwritable(key: str, folder: str) -> None:
    reason = unwritable(Path(folder))
    if reason is not None:
        print(f"{key}={folder!r} is not allowed: a folder this user can write ({reason})", file=sys.stderr)
        sys.exit(2)


class OutputCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_unwritable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_unwritable("hydra.sweep.dir", config.hydra.sweep.dir)
