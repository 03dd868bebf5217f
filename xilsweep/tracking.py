"""Per-job records: TensorBoard scalars, image grids and the hparams entry,
all in the job's own folder, and the machine-readable ``metrics.json``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from xilsweep.files import atomic_write_json

METRICS_FILE = "metrics.json"
GRID_PADDING = 2  # pixels of grey above and left of each image in a grid

# metrics-dict name -> TensorBoard tag, as in the experiment guide
EPOCH_TAGS = {
    "train_loss": "Loss/train_epoch",
    "train_loss_confounded": "Loss/train_confounded",
    "train_loss_corrected": "Loss/train_corrected",
    "val_loss": "Loss/val_epoch",
    "train_accuracy": "Accuracy/train_epoch",
    "val_accuracy": "Accuracy/val_epoch",
    "k": "Sampler/k",
}


class RunRecorder:
    """Writes one job's TensorBoard run directly into its output folder.

    Events go into ``directory`` itself, so TensorBoard pointed at a sweep
    folder shows one run per job, named after the job folder.
    """

    def __init__(self, directory: Path, purge_step: int | None = None):
        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge_step)

    def epoch(self, epoch: int, metrics: dict) -> None:
        for name, value in metrics.items():
            tag = EPOCH_TAGS.get(name) or (name if "/" in name else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def images(self, batches: dict[str, torch.Tensor], step: int = 0, n: int = 32) -> None:
        """The first ``n`` images (pixels in [0, 1]) of each batch as one grid,
        eight per row, with grey lines between the images."""
        for tag, x in batches.items():
            cells = torch.nn.functional.pad(x[:n].detach().float(), (GRID_PADDING, 0, GRID_PADDING, 0), value=0.5)
            self.writer.add_images(tag, cells, step)  # TensorBoard's own grid: no torchvision in the job

    def hparams(self, settings: dict, final_metrics: dict) -> None:
        """One hparams entry in this run (not the sub-run ``add_hparams`` makes)."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        metrics = {k: v for k, v in final_metrics.items() if v is not None and math.isfinite(v)}
        for summary in hparams_summary(clean, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_metrics(directory: Path, record: dict) -> None:
    atomic_write_json(record, Path(directory) / METRICS_FILE)
