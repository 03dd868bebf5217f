"""A job's TensorBoard images: one grid per batch, eight images per row."""

import io

import numpy as np
import torch
from PIL import Image

from helpers import events
from xilsweep.metrics import headline_text
from xilsweep.tracking import GRID_PADDING, RunRecorder, epoch_line

SIZE = 28 + GRID_PADDING  # one image and the grey line above and left of it
GREY = int(0.5 * 255)  # TensorBoard scales [0, 1] to 255 and truncates


def test_images_are_logged_as_grids_of_eight_per_row_with_grey_lines_between(tmp_path):
    recorder = RunRecorder(tmp_path)
    recorder.images({"Images/white": torch.ones(13, 1, 28, 28), "Images/many": torch.ones(40, 1, 28, 28)}, step=3)
    recorder.close()
    run = events(tmp_path)
    [white] = run.Images("Images/white")
    grid = np.asarray(Image.open(io.BytesIO(white.encoded_image_string)).convert("RGB"))
    assert white.step == 3 and grid.shape == (2 * SIZE, 8 * SIZE, 3)  # 13 images: a full row and 5 more
    assert (grid[:GRID_PADDING, :] == GREY).all() and (grid[:, :GRID_PADDING] == GREY).all()  # grey lines
    assert (grid[GRID_PADDING:SIZE, GRID_PADDING:SIZE] == 255).all()  # an image
    assert (grid[SIZE:, 5 * SIZE :] == 0).all()  # no image after the 13th
    [many] = run.Images("Images/many")
    assert (many.height, many.width) == (4 * SIZE, 8 * SIZE)  # the first 32 only


def test_epoch_log_shows_a_zero_flip_rate_and_the_dotted_accuracy_where_there_is_no_flip_rate():
    assert headline_text({"dot_flip_rate": 0.0, "test_dotted_accuracy": 0.9}) == "dot flip rate 0.000"
    assert headline_text({"dot_flip_rate": None, "test_dotted_accuracy": 0.9}) == "dotted test acc 90.00%"


def test_epoch_lines_name_the_images_each_figure_is_measured_on():
    trained = {"train_loss": 0.5, "train_loss_confounded": 0.3, "train_loss_corrected": 0.2, "train_accuracy": 0.9}
    validation = {"val_loss": 0.25, "val_accuracy": 0.95, "val_dot_flip_rate": 0.851, "val_dotted_accuracy": 0.6}
    line = epoch_line(3, 5, {**trained, **validation, "seconds": 1.0}, {"dot_flip_rate": 0.932}, "test subset of 300")
    assert line.startswith("epoch 3/5: train loss 0.5000 (confounded 0.3000, corrected 0.2000), train accuracy 90.00%;")
    assert (
        "; validation: loss 0.2500, accuracy 95.00%, val dot flip rate 0.851, dotted val acc 60.00%; "
        "test subset of 300: dot flip rate 0.932 (1.0 s)"
    ) in line
    start = epoch_line(0, 5, {"val_loss": 0.25, "val_accuracy": 0.95}, {"dot_flip_rate": 0.98}, "whole test set")
    assert start == "epoch 0/5 (start): validation: loss 0.2500, accuracy 95.00%; whole test set: dot flip rate 0.980"
