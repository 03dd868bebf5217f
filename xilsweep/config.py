"""Structured configs: the types and defaults of every config group, generated
once from the constructor of the object the group builds, and registered in
Hydra's ConfigStore as ``<group>/<Class>``. The YAML options in ``conf/``
choose a schema in their defaults list and set only what differs from it, so
``--cfg job`` shows the code's defaults and a value of the wrong type is
refused when the config is composed."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

from hydra.core.config_store import ConfigStore

from xilsweep.correction import CorrectedPool
from xilsweep.data import ConfoundedMNIST08
from xilsweep.decoy import DecoyMNIST
from xilsweep.losses import LOSSES
from xilsweep.models import MLP, ConvNet
from xilsweep.pretrain import Pretraining
from xilsweep.reasons import GradCAM, InputGradients
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import Trainer

CONF_DIR = Path(__file__).resolve().parent / "conf"  # the top-level conf/, shipped inside the package
GROUPS = {
    "data": (ConfoundedMNIST08, DecoyMNIST),
    "model": (ConvNet, MLP),
    "loss": LOSSES,
    "pool": (CorrectedPool,),
    "sampler": (MixedBatchSampler,),
    "trainer": (Trainer,),
    "pretrain": (Pretraining,),
    "explainer": (GradCAM, InputGradients),
}
# Constructor arguments the job supplies when it assembles the objects, not settings.
SUPPLIED = {"n_confounded", "pool_size", "num_classes", "in_shape"}


def defaults(target: type) -> dict:
    """The constructor settings of ``target`` and their default values."""
    if dataclasses.is_dataclass(target):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(target)
            if f.init
        }
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def schema(target: type) -> type:
    """A dataclass with ``_target_`` and one typed field per constructor setting of ``target``."""
    hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
    fields = [("_target_", str, dataclasses.field(default=f"{target.__module__}.{target.__qualname__}"))]
    for name, default in defaults(target).items():
        if name in SUPPLIED:
            continue
        if isinstance(default, (list, tuple)) or dataclasses.is_dataclass(default):
            value = list(default) if isinstance(default, (list, tuple)) else default
            field = dataclasses.field(default_factory=lambda value=value: value)
        else:
            field = dataclasses.field(default=default)
        fields.append((name, hints.get(name, typing.Any), field))
    return dataclasses.make_dataclass(target.__name__, fields)


def register() -> None:
    store = ConfigStore.instance()
    for group, targets in GROUPS.items():
        for target in targets:
            store.store(group=group, name=target.__name__, node=schema(target))


register()
