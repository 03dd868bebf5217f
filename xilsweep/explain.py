"""``python -m xilsweep.explain RUN_DIR [--confounded]``: explanation grids of a
finished run as PNG files, for papers.

The run's data, user-corrected pool, confounded model and explainer are
rebuilt by ``xilsweep.job.assemble`` from the run's own config
(``RUN_DIR/.hydra/``); the corrected weights come from ``RUN_DIR/model.pth``.
Written into ``RUN_DIR/explanations/``: one overlay grid per view (see
``xilsweep.reasons.view_images``) and ``before_after.png`` (dotted test
images; rows: the images, the confounded model's explanations, the corrected
model's). ``--confounded`` writes the views of the run's confounded (starting)
model into ``RUN_DIR/explanations/confounded/`` instead.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from xilsweep.config import CONF_DIR
from xilsweep.errors import DataError
from xilsweep.job import ConfigError, assemble
from xilsweep.pretrain import load_weights
from xilsweep.reasons import overlay, view_images

OUTPUT_DIR = "explanations"
MODEL_FILE = "model.pth"


def run_config(run_dir: Path, explainer: str | None = None) -> DictConfig:
    """The run's config: its saved values over the current defaults of the
    options it chose, so runs made before a setting existed still load."""
    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder (no .hydra/config.yaml); pass the folder of one job, "
            "e.g. outputs/runs/<time>_<run name>"
        )
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    if explainer is not None:
        overrides.append(f"explainer={explainer}")
        saved.pop("explainer", None)
    try:  # composed as xilsweep.run's @hydra.main composes it (Hydra's current behaviour)
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"{run_dir}: the run's overrides {overrides} do not compose: {e}") from None
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, saved)


def save_grid(images: torch.Tensor, path: Path, nrow: int, scale: int) -> Path:
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    # nearest-neighbour enlargement: crisp pixels in print and on screen
    save_image(F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0], path)
    return path


def dotted_examples(data, confounded_class: int | None, n: int) -> torch.Tensor:
    """Up to ``n`` dotted test images, half of the confounded class and half of the others."""
    dotted, c = data.test_dotted, confounded_class
    if c is None:
        return dotted.x[:n]
    return torch.cat([dotted.x[dotted.labels == c][: n // 2], dotted.x[dotted.labels != c][: n - n // 2]])


def write_explanations(
    run_dir: Path, confounded: bool = False, explainer: str | None = None, n: int = 32, scale: int = 4
) -> list[Path]:
    """Write the PNGs of one run (see the module docstring); returns their paths."""
    job = assemble(run_config(run_dir, explainer))
    out = run_dir / OUTPUT_DIR
    views = view_images(job.data, job.pool.corrected, job.pool.original, job.confounded_class, n)
    if confounded:
        shown = job.explainer.views(job.model, views)
        return [save_grid(x, out / "confounded" / f"{name}.png", 8, scale) for name, x in shown.items()]
    model_file = run_dir / MODEL_FILE
    if not model_file.is_file():
        raise DataError(
            f"{model_file} is missing (the run ended early or had save_model=false); "
            "--confounded explains the run's confounded model without it"
        )
    try:
        state = torch.load(model_file, map_location=job.trainer.device, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise DataError(f"{model_file} is unreadable (truncated or corrupt): {type(e).__name__}") from e
    before = copy.deepcopy(job.model)
    load_weights(job.model, state, model_file)
    shown = job.explainer.views(job.model, views)
    written = [save_grid(x, out / f"{name}.png", 8, scale) for name, x in shown.items()]
    examples = dotted_examples(job.data, job.confounded_class, 16)
    rows = [
        examples.expand(-1, 3, -1, -1),
        *(overlay(examples, job.explainer.attribute(model, examples).cpu()) for model in (before, job.model)),
    ]
    written.append(save_grid(torch.cat(rows), out / "before_after.png", len(examples), scale))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xilsweep.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the folder of one finished job")
    parser.add_argument(
        "--confounded",
        action="store_true",
        help="explain the run's confounded (starting) model, into explanations/confounded/",
    )
    parser.add_argument(
        "--explainer",
        choices=sorted(p.stem for p in (CONF_DIR / "explainer").glob("*.yaml")),
        help="explanation method (default: the run's own)",
    )
    parser.add_argument("--n", type=int, default=32, help="images per view grid (default 32)")
    parser.add_argument("--scale", type=int, default=4, help="pixel enlargement of the PNGs (default 4)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.scale < 1:
        parser.error("--n and --scale must be >= 1")
    try:
        written = write_explanations(args.run_dir, args.confounded, args.explainer, args.n, args.scale)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
