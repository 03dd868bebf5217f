"""xilsweep: explanatory interactive learning experiments on confounded MNIST, swept with Hydra."""

import warnings

__version__ = "0.2.0"

# Noise on every Hydra start that a user cannot act on: the Ray launcher plugin (the `ray` extra)
# calls a deprecated OmegaConf function, and Hydra warns about config-chosen targets even for
# xilsweep's own progress callback.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
warnings.filterwarnings(
    "ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_='xilsweep\.", category=UserWarning
)
