"""Data sets beyond the contract's own module: each module here defines one (a ``CachedData``
subclass with a ``name``), which registers itself as the config option ``data=<name>`` when
this package imports it. Adding a data set is one module here and ``conf/data/<name>.yaml``
(docs/development.md). 08MNIST lives in ``xilsweep.data`` and Decoy-MNIST in ``xilsweep.decoy``,
where the configs of earlier runs name them."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
