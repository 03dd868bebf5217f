"""Structured configs: the types and defaults of every config group, generated
once from the constructor of the object the group builds, and registered in
Hydra's ConfigStore as ``<group>/<Class>``. The YAML options in ``conf/``
choose a schema in their defaults list and set only what differs from it, so
``--cfg job`` shows the code's defaults and a value of the wrong type is
refused when the config is composed. A loss setting tuned per data set and
model (``xilsweep/losses/tuned.py``) defaults to ``${xil_tuned:<key>}``, which
reads the data and model of the config it is in."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import xilsweep.datasets  # noqa: F401 (defines, and so registers, every data set of xilsweep/datasets/)
import xilsweep.decoy  # noqa: F401 (and Decoy-MNIST)
from xilsweep.correction import CorrectedPool
from xilsweep.data import DATASETS
from xilsweep.losses import METHODS
from xilsweep.losses.tuned import tuned_keys, tuned_settings
from xilsweep.models import MLP, ConvNet, TorchvisionModel
from xilsweep.pretrain import Pretraining
from xilsweep.reasons import GradCAM, InputGradients
from xilsweep.sampling import MixedBatchSampler
from xilsweep.training import Trainer

CONF_DIR = Path(__file__).resolve().parent / "conf"  # the top-level conf/, shipped inside the package
# group -> the classes a config may name; data sets and methods register themselves, and these
# are live views of their registries.
GROUPS = {
    "data": DATASETS.values(),
    "model": (ConvNet, MLP, TorchvisionModel),
    "loss": METHODS.values(),
    "pool": (CorrectedPool,),
    "sampler": (MixedBatchSampler,),
    "trainer": (Trainer,),
    "pretrain": (Pretraining,),
    "explainer": (GradCAM, InputGradients),
}
# Constructor arguments the job supplies when it assembles the objects, not settings.
SUPPLIED = {"n_confounded", "pool_size", "num_classes", "in_shape", "mean", "std"}


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


def schema(target: type, interpolated: dict[str, str] | None = None) -> type:
    """A dataclass with ``_target_`` and one typed field per constructor setting of
    ``target``, defaulting to the constructor's default or to its ``interpolated`` one."""
    interpolated = interpolated or {}
    hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
    fields = [("_target_", str, dataclasses.field(default=target_path(target)))]
    for name, default in defaults(target).items():
        if name in SUPPLIED:
            continue
        if name in interpolated:
            field = dataclasses.field(default=interpolated[name])
        elif isinstance(default, (list, tuple)) or dataclasses.is_dataclass(default):
            value = list(default) if isinstance(default, (list, tuple)) else default
            field = dataclasses.field(default_factory=lambda value=value: value)
        else:
            field = dataclasses.field(default=default)
        fields.append((name, hints.get(name, typing.Any), field))
    return dataclasses.make_dataclass(target.__name__, fields)


def target_path(target: type) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def registered_class(group: str, path: str | None) -> type | None:
    """The class of ``group`` that a config names by ``path`` (its ``_target_``), if it is registered."""
    return next((target for target in GROUPS[group] if target_path(target) == path), None)


def tuned_setting(key: str, _parent_: DictConfig, _root_: DictConfig):
    """``${xil_tuned:key}`` in a loss node: the loss setting ``key`` tuned for the
    config's data set and model class, else the loss class's own default."""
    method = registered_class("loss", _parent_._target_)
    data, model = (
        registered_class(group, OmegaConf.select(_root_, f"{group}._target_")) for group in ("data", "model")
    )
    tuned = tuned_settings(data.name, model.__name__, method.name) if data and model and method else {}
    return tuned.get(key, defaults(method)[key]) if method else None


def register() -> None:
    OmegaConf.register_resolver("xil_tuned", tuned_setting, replace=True)
    store = ConfigStore.instance()
    for group, targets in GROUPS.items():
        for target in targets:
            tuned = {key: f"${{xil_tuned:{key}}}" for key in tuned_keys(target.name)} if group == "loss" else {}
            store.store(group=group, name=target.__name__, node=schema(target, tuned), replace=True)


register()
