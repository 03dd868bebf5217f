"""The settings validation chose for each method, per data set and model: the
defaults of those settings (``${xil_tuned:<key>}`` in the generated loss schemas,
``xilsweep/config.py``), so ``loss=rrr`` runs at the weight tuned for the data
and model at hand, and the method comparisons name only the method. Without an
entry a setting keeps its class's default; a value given in a config or on the
command line wins. How each was chosen: docs/methods.md, "Tuned weights" (and
its "Patch-MNIST") and "Decoy-MNIST"."""

from __future__ import annotations

# (data name, model class name) -> method name -> settings
TUNED: dict[tuple[str, str], dict[str, dict]] = {
    ("mnist08", "ConvNet"): {
        "rrr": {"lam": 100.0},
        "rrr_g": {"lam": 1.0},
        "rbr": {"lam": 1e4},
        "hint": {"lam": 10.0},
        "cdep": {"lam": 0.1},
    },
    ("patch_mnist", "ConvNet"): {
        "rrr": {"lam": 100.0},  # of 1, 10, 100, 1000: the best dotted validation accuracy at the same clean one
        "rrr_g": {"lam": 1000.0},  # the others by 08MNIST's rule, each best inside its range (docs/methods.md)
        "rbr": {"lam": 1e5},
        "hint": {"lam": 10.0},
        "cdep": {"lam": 1000.0},
    },
    ("decoy_mnist", "MLP"): {
        "rrr": {"lam": 1.0},
        "rbr": {"lam": 409600.0},  # 100 before RBR took the batch's mean cross-entropy: the same objective
        "cdep": {"lam": 1000.0},
    },
    ("decoy_mnist", "ConvNet"): {
        "rrr": {"lam": 10.0},
        "rrr_g": {"lam": 100.0},
        "rbr": {"lam": 40960.0},  # 10 before RBR took the batch's mean cross-entropy: the same objective
        "hint": {"lam": 1.0},
        "cdep": {"lam": 1e4},
    },
}


def tuned_settings(data: str, model: str, method: str) -> dict:
    """The settings tuned for ``method`` on ``data`` with a ``model`` (empty if none were)."""
    return TUNED.get((data, model), {}).get(method, {})


def tuned_keys(method: str) -> set[str]:
    """The settings of ``method`` tuned for some data set and model."""
    return {key for by_method in TUNED.values() for key in by_method.get(method, {})}
