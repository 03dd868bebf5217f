"""A job's TensorBoard images: one grid per batch, eight images per row."""

import io

import numpy as np
import torch
from PIL import Image

from helpers import events
from xilsweep.tracking import GRID_PADDING, RunRecorder, reliance_text

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
    assert reliance_text({"dot_flip_rate": 0.0, "test_dotted_accuracy": 0.9}) == "dot flip rate 0.000"
    assert reliance_text({"dot_flip_rate": None, "test_dotted_accuracy": 0.9}) == "dotted test accuracy 90.00%"
