"""What one fine-tuning step of each method costs against ``loss=balanced``.

Times ``method.update`` on the default model (the CNN) with mixed batches of the
default sampler (60 confounded + 4 corrected, the corrected samples' masks given) on the
bundled digits, one thread, every method at its default settings. Each figure is the
best of interleaved repeats (the machine may be shared), so the ratios compare methods
measured in the same rounds. Prints a Markdown table and the cost targets.

    .venv/bin/python bench/methods.py [--steps 20] [--repeats 5] [--root data]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir

from xilsweep.config import CONF_DIR
from xilsweep.data import DATASETS
from xilsweep.job import build
from xilsweep.losses import METHODS, Batch
from xilsweep.sampling import create_is_user_corrected_mask

BASELINE = "balanced"
# method -> most steps' cost against the baseline's (issue: faithful methods at a bounded cost)
TARGETS = {"rbr": 4.0, "cdep": 3.0}
BATCH, CORRECTED = 64, 4


def method_and_model(name: str, root: str):
    """``loss=name`` and the default model as a job would build them (tuned defaults resolved)."""
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"loss={name}", f"data.root={root}"])
    torch.manual_seed(0)
    return build(cfg, "loss"), build(cfg, "model", num_classes=2)


def batches(root: str, steps: int) -> list[Batch]:
    """``steps`` mixed batches: BATCH - CORRECTED training images without masks, then
    CORRECTED dotted 8s with their dots zeroed and their masks given (``pool.correction=zero``)."""
    train = DATASETS["mnist08"](root=root).load().train
    dotted = torch.nonzero(train.mask.flatten(1).any(1)).flatten()
    g = torch.Generator().manual_seed(0)
    is_corrected = create_is_user_corrected_mask(BATCH, CORRECTED, "cpu")
    out = []
    for _ in range(steps):
        confounded = torch.randperm(len(train), generator=g)[: BATCH - CORRECTED]
        corrected = dotted[torch.randperm(len(dotted), generator=g)[:CORRECTED]]
        index = torch.cat([confounded, corrected])
        mask = train.mask[index] & is_corrected.view(-1, 1, 1, 1)
        out.append(Batch(train.x[index].masked_fill(mask, 0.0), train.targets[index], is_corrected, mask))
    return out


def seconds_per_step(method, model, data: list[Batch]) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in data:
        method.update(model, batch, optimizer)
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", default="data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = batches(args.root, args.steps)
    names = [BASELINE, *sorted(n for n in METHODS if n != BASELINE)]
    built = {name: method_and_model(name, args.root) for name in names}
    best = {name: float("inf") for name in names}
    for _ in range(args.repeats):  # interleaved: every method once per round
        for name in names:
            best[name] = min(best[name], seconds_per_step(*built[name], data))
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
