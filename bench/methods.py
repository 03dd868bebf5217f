"""What one fine-tuning step of each method costs against ``loss=balanced``.

Times the training loop (``training.train_one_epoch``) over the first batches of a
default job's first epoch, built as a job builds them (``job.loaded_data`` and ``job.first_pool``: the
bundled 08MNIST digits, the pool of 100 with the masks the user gave, the default
sampler's 60 confounded + 4 corrected samples per batch), on the default model (the
CNN), one thread, every method at its default settings. Each figure is the best of
interleaved repeats (the machine may be shared), so the ratios compare methods
measured in the same rounds. Prints a Markdown table and the cost targets.

    .venv/bin/python bench/methods.py [--steps 20] [--repeats 5] [--root data]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir

from xilsweep.config import CONF_DIR
from xilsweep.job import build, checked_settings, first_pool, loaded_data
from xilsweep.losses import METHODS
from xilsweep.training import FitData, train_one_epoch

BASELINE = "balanced"
# method -> most steps' cost against the baseline's (issue: faithful methods at a bounded cost)
TARGETS = {"rbr": 4.0, "cdep": 3.0}


def job_config(name: str, root: str):
    """A default job's config with ``loss=name`` (its tuned weight resolved)."""
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"loss={name}", f"data.root={root}"])


def method_and_model(cfg):
    """The method and a fresh default model, as the job builds them."""
    torch.manual_seed(0)
    return build(cfg, "loss"), build(cfg, "model", num_classes=2)


def first_batches(cfg, steps: int):
    """``(data, batches, k)``: the split the sampler indexes and the first ``steps`` batches of
    the job's first epoch (the training split with the pool's masks only, then the pool)."""
    settings = checked_settings(cfg)
    data = loaded_data(settings)
    pool = first_pool(settings, data, cfg.seed, model=None)  # the default selection (random) reads no model
    fit = FitData(pool.with_known_masks(data.train), pool.corrected, data.val, settings.sampler)
    return fit.train_and_pool, fit.sampler.batches(0)[:steps], fit.sampler.k


def seconds_per_step(method, model, data, batches, k) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    train_one_epoch(model, data, batches, k, method, optimizer)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", default="data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [BASELINE, *sorted(n for n in METHODS if n != BASELINE)]
    configs = {name: job_config(name, args.root) for name in names}
    batches = first_batches(configs[BASELINE], args.steps)  # the loss does not change the batches
    built = {name: method_and_model(cfg) for name, cfg in configs.items()}
    best = {name: float("inf") for name in names}
    for _ in range(args.repeats):  # interleaved: every method once per round
        for name in names:
            best[name] = min(best[name], seconds_per_step(*built[name], *batches))
    print(f"| loss | ms per step | x {BASELINE} |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {1000 * best[name]:.1f} | {best[name] / best[BASELINE]:.2f} |")
    print()
    for name, limit in TARGETS.items():
        ratio = best[name] / best[BASELINE]
        print(f"target {name} <= {limit:g}x {BASELINE}: {ratio:.2f}x {'met' if ratio <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
