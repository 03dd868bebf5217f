"""Which explainer separates a model that uses the dots from one that does not?

For each seed, trains (or loads from the cache) the default confounded model
and oracle, and prints every explainer's attribution in the mask for both,
for the true and the predicted class, with the ratio confounded / oracle.
The default explainer must reach a ratio of at least 1.5 on every seed.

    .venv/bin/python bench/explainers.py [--seeds 3] [--root data]
"""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_dir

from xilsweep.config import CONF_DIR
from xilsweep.job import assemble
from xilsweep.reasons import TARGETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--root", default="data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| explainer | target | seed | confounded | oracle | ratio |")
    print("|---|---|---|---|---|---|")
    for explainer in ("input_gradients", "gradcam"):
        for target in TARGETS:
            for seed in range(args.seeds):
                with initialize_config_dir(config_dir=str(CONF_DIR)):
                    cfg = compose(
                        "config",
                        overrides=[
                            f"data.root={args.root}",
                            f"explainer={explainer}",
                            f"explainer.target={target}",
                            f"pretrain.seed={seed}",
                        ],
                    )
                job = assemble(cfg)
                high = job.explainer.reasons(job.model, job.data, job.confounded_class)["attribution_in_mask"]
                low = job.explainer.reasons(job.oracle_model, job.data, job.confounded_class)["attribution_in_mask"]
                print(f"| {explainer} | {target} | {seed} | {high:.3f} | {low:.3f} | {high / low:.2f} |", flush=True)


if __name__ == "__main__":
    main()
