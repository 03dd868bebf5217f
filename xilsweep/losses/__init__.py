"""Fine-tuning methods, one per module (the config group ``loss``): the protocol
is ``base.Method``; each method registers itself in ``METHODS`` under its config
option when its module is imported, which importing this package does for every
module in it."""

import importlib
import pkgutil

from xilsweep.losses.base import METHODS, Batch, MaskPenalty, Method, Step

for module in pkgutil.iter_modules(__path__):  # importing a method's module registers it
    importlib.import_module(f"{__name__}.{module.name}")

__all__ = ["METHODS", "Batch", "MaskPenalty", "Method", "Step"]
