"""What a job folder already holds decides what a call may do there: run the job, continue it
(``trainer.resume=true`` with the same result settings), return a finished job's record, or
refuse in one line (other settings, a damaged record, a job still running elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xilsweep.config import registered_class
from xilsweep.errors import DataError
from xilsweep.files import atomic_write_bytes
from xilsweep.job import CHECKPOINT_FILE, ConfigError, resolved_settings
from xilsweep.lifetime import running_elsewhere
from xilsweep.tracking import METRICS_FILE

# Settings of how a job runs, not of what it computes: a job continued or returned by
# trainer.resume=true may be given other values (trainer.device and trainer.num_threads change
# only the last bits; objective is what is returned from the same record; data.root is where the
# data lives, the data itself being named by the other data settings).
HOW_IT_RUNS = (
    "trainer.resume",
    "trainer.num_threads",
    "trainer.device",
    "trainer.eval_batch_size",
    "save_model",
    "objective",
    "data.root",
)
RECORD_STATUSES = ("running", "done", "failed")
# Settings added after jobs were recorded without them, with the value that computes what those
# jobs computed: a record without the key is read as having that value.
ADDED_SETTINGS = {
    "pool.feedback": "exact",
    "pool.feedback_fraction": 0.5,
    "pool.feedback_radius": 1,
    "pool.select": "random",
    "pool.rounds": 1,
}


def read_record(metrics_file: Path) -> dict | None:
    """A job folder's ``metrics.json``, None when there is none; DataError naming the file when
    it is damaged (not JSON, or not a job's record: a status, the config, a done job's result)."""
    if not metrics_file.exists():
        return None
    try:
        record = json.loads(metrics_file.read_text())
        if not isinstance(record, dict) or record.get("status") not in RECORD_STATUSES:
            raise ValueError(f"no status of {', '.join(RECORD_STATUSES)}")
        if not isinstance(record.get("config"), dict):
            raise ValueError("no config")
        if record["status"] == "done" and not isinstance(record.get("best_val_accuracy"), (int, float)):
            raise ValueError("a finished job's record without best_val_accuracy")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(
            f"{metrics_file} is damaged ({type(e).__name__}: {e}); remove the job folder {metrics_file.parent} "
            "to run the job again, or give it another output folder"
        ) from None
    return record


def flat(settings: dict, prefix: str = "") -> dict:
    """``{"loss": {"lam": 1}}`` -> ``{"loss.lam": 1}``."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_settings(config: dict) -> dict:
    """The settings that decide a job's numbers, by dotted key: the resolved config as
    ``metrics.json`` holds it, less those of how the job runs (``HOW_IT_RUNS``)."""
    as_saved = json.loads(json.dumps(config, default=str))
    return {key: value for key, value in flat(as_saved).items() if key not in HOW_IT_RUNS}


def setting_differences(saved: dict, now: dict) -> list[str]:
    """``key: <saved value> there, <new value> now`` for every result setting that differs."""
    old, new = ({**ADDED_SETTINGS, **result_settings(settings)} for settings in (saved, now))

    def shown(settings: dict, key: str) -> str:
        return repr(settings[key]) if key in settings else "absent"

    return [
        f"{key}: {shown(old, key)} there, {shown(new, key)} now"
        for key in sorted(old.keys() | new.keys())
        if (key in old, old.get(key)) != (key in new, new.get(key))
    ]


def refusal(cfg: DictConfig, out_dir: Path, record: dict) -> str | None:
    """Why this call may not run the job whose record ``out_dir`` holds, or None: the job still
    runs in another live process, a finished job is run again without ``trainer.resume``, or
    ``trainer.resume=true`` comes with result settings other than the saved ones."""
    resume = cfg.trainer.get("resume", False)
    owner = running_elsewhere(record, (out_dir / METRICS_FILE).stat().st_mtime)
    if owner is not None:
        return (
            f"{out_dir} is being run by {owner} (its {METRICS_FILE} says running); "
            "wait for it or end it before running this job again"
        )
    if record["status"] == "done" and not resume:
        return (
            f"{out_dir} already holds a finished job; trainer.resume=true returns its result, "
            "another hydra.run.dir runs it again"
        )
    differences = setting_differences(record["config"], resolved_settings(cfg)) if resume else []
    method = registered_class("loss", OmegaConf.select(cfg, "loss._target_"))
    revision_then = record.get("method_revision", 1)  # records before revisions: the first
    if resume and method is not None and revision_then != method.revision:
        differences.append(f"{method.name} computed by revision {revision_then} there, {method.revision} now")
    if differences:
        return (
            f"{out_dir} holds a job with other settings ({'; '.join(differences)}); trainer.resume=true "
            "continues or returns only the same job: run these settings in another output folder"
        )
    return None


def put_back_hydra_files(out_dir: Path, record: dict) -> None:
    """Hydra has written a refused call's overrides and config into the job's ``.hydra/``; the
    job's own are put back from its record (the config resolved), so that the report and
    ``xilsweep.explain`` read the settings the job ran with (``hydra.yaml`` stays the call's)."""
    hydra_dir = out_dir / (HydraConfig.get().output_subdir if HydraConfig.initialized() else ".hydra")
    if not hydra_dir.is_dir():
        return
    if isinstance(record.get("overrides"), list):
        atomic_write_bytes(OmegaConf.to_yaml(record["overrides"]).encode(), hydra_dir / "overrides.yaml")
    atomic_write_bytes(OmegaConf.to_yaml(record["config"]).encode(), hydra_dir / "config.yaml")


def finished_record(cfg: DictConfig, out_dir: Path) -> dict | None:
    """What ``out_dir`` already holds decides what this call may do: None runs the job, a finished
    job's record is returned (``trainer.resume=true`` and the same settings); a damaged record
    (DataError) and the cases of ``refusal`` (ConfigError) are one line. Only a job run changes the folder."""
    record = read_record(out_dir / METRICS_FILE)
    if record is None:
        if cfg.trainer.get("resume", False) and (out_dir / CHECKPOINT_FILE).exists():
            raise DataError(
                f"{out_dir / CHECKPOINT_FILE} has no {METRICS_FILE} beside it, so its settings are unknown; "
                "remove it to run the job from the start"
            )
        return None
    problem = refusal(cfg, out_dir, record)
    if problem is None and record["status"] != "done":
        return None
    put_back_hydra_files(out_dir, record)  # a call refused or returning a finished job changes nothing
    if problem is not None:
        raise ConfigError(problem)
    return record
