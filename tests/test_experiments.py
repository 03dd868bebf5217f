"""The guide's four experiments, the xilsweep sweeper, Optuna and the launcher
presets: configs composed in-process, sweeps run as real multiruns on tiny
settings (lr_search and full_grid_search run in test_report.py, whose report
is built from them)."""

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF, compose_config, events, job_folders, job_metrics, run_sweep
from hydra_plugins.xilsweep_sweeper.xilsweep_sweeper import applicable_jobs, grid, grid_lines, planned_jobs
from xilsweep.losses.rrr import RRR
from xilsweep.losses.tuned import TUNED
from xilsweep.results.collect import find_jobs

EXPERIMENTS = ("overfit_test", "lr_search", "lambda_search", "full_grid_search")
# Jobs of one epoch; the explanation metrics on a few images only.
FAST = ["trainer.max_epochs=1", "save_model=false", "explainer.n_images=16"]


def experiment_config(name: str, overrides=()):
    return compose_config([f"experiment={name}", *overrides], hydra=True)


def sweep_values(cfg) -> dict[str, list[str]]:
    """The experiment's swept settings: key -> values, as Hydra expands them."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return {o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed}


def fast_sweep(tmp_path, data_root, args: list[str], name: str):
    out = tmp_path / name
    return run_sweep([*FAST, *args], out, data_root), out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_sweeps_seeds_with_the_xilsweep_sweeper(name):
    cfg = experiment_config(name)
    assert cfg.hydra.sweeper._target_.endswith("XilSweeper")
    seeds = sweep_values(cfg)["seed"]
    assert len(set(seeds)) >= (3 if name in ("lambda_search", "full_grid_search") else 2)


def test_experiment_settings_fit_together(data):
    overfit, lr, lam, full_grid = (experiment_config(n) for n in EXPERIMENTS)
    assert overfit.trainer.patience >= overfit.trainer.max_epochs  # fitting the data: never stops early
    assert len(set(sweep_values(lr)["trainer.lr"])) >= 3
    assert "lam" in lam.loss and len(set(sweep_values(lam)["loss.lam"])) >= 3  # the swept loss has a lam
    assert experiment_config("lambda_search", ["best_lr=0.007"]).trainer.lr == 0.007  # step 2's answer is used
    grid_values = sweep_values(full_grid)
    assert set(grid_values["loss"]) == {"balanced", "imbalanced"}
    assert len(grid_values["trainer.lr"]) >= 2 and len(grid_values["loss.lam"]) >= 2
    dotted_eights = int(((data.train.labels == 1) & data.train.mask.flatten(1).any(1)).sum())
    assert max(int(v) for v in grid_values["pool.size"]) == dotted_eights  # as large as the data allows


def test_full_grid_runs_imbalanced_once_per_setting_not_once_per_lam():
    cfg = experiment_config("full_grid_search")
    values = sweep_values(cfg)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, "experiment=full_grid_search", "loss.lamda=3"])
    combinations = grid(overrides)
    jobs = applicable_jobs(combinations, overrides, is_group=lambda key: (CONF / key).is_dir(), compose=compose_config)
    n = {k: len(v) for k, v in values.items()}
    per_loss = n["trainer.lr"] * n["pool.size"] * n["seed"]
    assert len(jobs) == per_loss * n["loss.lam"] + per_loss  # balanced x lam, imbalanced once
    assert len({tuple(job) for job in jobs}) == len(jobs)
    imbalanced = [job for job in jobs if "loss=imbalanced" in job]
    assert len(imbalanced) == per_loss and not any(e.startswith("loss.lam=") for job in imbalanced for e in job)
    assert all("loss.lamda=3" in job for job in jobs)  # a key no option has is kept: Hydra reports the typo


# (experiment, model option) -> the tuned settings' key (data set name, model class name): every
# job of a method comparison runs each penalty at the weight tuned for its data and model
# (docs/methods.md, "Tuned weights" and "Decoy-MNIST").
TUNED_FOR = {
    ("compare_methods", "cnn"): ("mnist08", "ConvNet"),
    ("compare_methods_decoy", "mlp_wide"): ("decoy_mnist", "MLP"),
    ("compare_methods_decoy", "cnn"): ("decoy_mnist", "ConvNet"),
    ("interaction_efficiency", "cnn"): ("mnist08", "ConvNet"),
    ("feedback_quality", "cnn"): ("mnist08", "ConvNet"),
}
# The settings a comparison's jobs vary besides the group choices: none the weight reads.
CONDITIONS = {"experiment", "pool.size", "pool.select", "pool.feedback", "seed"}
GROUP_CHOICES = ("model", "loss", "pool.correction")


def build_method(cfg):
    return instantiate(cfg.loss, _execution_whitelist_="xilsweep.*")


def experiment_jobs(name: str) -> list[list[str]]:
    """The jobs (override lists) the xilsweep sweeper launches for ``experiment=name``."""
    sweeper = OmegaConf.to_container(experiment_config(name).hydra.sweeper)
    return planned_jobs(
        grid_lines(sweeper["params"], sweeper.get("grids"), [f"experiment={name}"]),
        parse=OverridesParser.create().parse_overrides,
        is_group=lambda key: (CONF / key).is_dir(),
        compose=compose_config,
    )


@pytest.mark.parametrize("name", sorted({name for name, _ in TUNED_FOR}))
def test_method_comparisons_give_every_penalty_the_weight_tuned_for_its_data_and_model(name):
    """Composed once per distinct set of group choices: the jobs differ from it only in
    conditions (pool size, query strategy, feedback kind, seed), which the weight does not read."""
    weights = {}
    for job in experiment_jobs(name):
        settings = dict(entry.split("=", 1) for entry in job)
        assert {"experiment", "seed"} <= set(settings) - set(GROUP_CHOICES) <= CONDITIONS
        key = tuple(settings.get(choice) for choice in GROUP_CHOICES)
        if key not in weights:
            method = build_method(compose_config(job))  # what the job fine-tunes with
            weights[key] = getattr(method, "lam", None)
    for (model, loss, _), lam in weights.items():
        tuned = TUNED[TUNED_FOR[name, model or "cnn"]]
        expected = tuned[loss]["lam"] if loss in tuned else (1.0 if loss == "balanced" else None)
        assert lam == expected, (model, loss)
    penalties = {
        (model or "cnn", loss) for model, loss, _ in weights if loss not in ("balanced", "imbalanced", "lagrangian")
    }
    assert penalties == {(model, loss) for (n, model), key in TUNED_FOR.items() if n == name for loss in TUNED[key]}


def test_a_loss_defaults_to_the_weight_tuned_for_the_data_and_model_and_a_given_weight_wins():
    cfg = compose_config(["loss=rrr"])
    assert "${xil_tuned:lam}" in OmegaConf.to_yaml(cfg.loss)  # --cfg job shows where the weight comes from
    assert cfg.loss.lam == TUNED["mnist08", "ConvNet"]["rrr"]["lam"]
    assert compose_config(["loss=rrr", "model=lenet"]).loss.lam == TUNED["mnist08", "ConvNet"]["rrr"]["lam"]
    decoy_mlp = compose_config(["loss=rbr", "data=decoy_mnist", "model=mlp"])
    assert decoy_mlp.loss.lam == TUNED["decoy_mnist", "MLP"]["rbr"]["lam"]
    for loss in ("rrr_g", "cdep"):  # the colour digits' own weights, not 08MNIST's
        patch = compose_config([f"loss={loss}", "data=patch_mnist"]).loss.lam
        assert patch == TUNED["patch_mnist", "ConvNet"][loss]["lam"] != TUNED["mnist08", "ConvNet"][loss]["lam"]
    assert ("mnist08", "MLP") not in TUNED  # so the class's own default applies
    assert compose_config(["loss=rrr", "model=mlp"]).loss.lam == RRR().lam
    overridden = compose_config(["experiment=compare_methods", "loss=rrr", "loss.lam=5"])
    assert overridden.loss.lam == 5.0 and build_method(overridden).lam == 5.0
    assert OmegaConf.to_container(compose_config(["loss=balanced"]).loss) == {
        "_target_": "xilsweep.losses.baseline.Balanced",
        "lam": 1.0,
    }


def test_a_setting_that_no_job_has_stops_the_sweep_before_any_job_runs(data_root, tmp_path):
    result, out = fast_sweep(
        tmp_path, data_root, ["hydra/sweeper=xilsweep", "loss=balanced,imbalanced", "loss.lamda=3"], "typo"
    )
    assert result.returncode == 1 and "Could not override 'loss.lamda'" in result.stderr, result.stderr[-2000:]
    assert not (out.exists() and job_folders(out))


@pytest.mark.parametrize(
    "launcher,target", [("parallel", "JoblibLauncher"), ("local", "LocalLauncher"), ("slurm", "SlurmLauncher")]
)
def test_launcher_presets_give_one_torch_thread_per_cpu(launcher, target):
    submitit = launcher != "parallel"
    cfg = compose_config(
        [f"hydra/launcher={launcher}", *(["hydra.launcher.cpus_per_task=3"] if submitit else [])], hydra=True
    )
    assert cfg.hydra.launcher._target_.endswith(target)
    if submitit:  # OMP_NUM_THREADS follows the job's CPUs; trainer.num_threads=null follows it
        assert cfg.hydra.job.env_set.OMP_NUM_THREADS == "3"
    else:  # joblib's loky workers get OMP_NUM_THREADS=1
        assert cfg.hydra.launcher.inner_max_num_threads == 1


def test_overfit_test_fits_100_samples(data_root, tmp_path):
    result, out = fast_sweep(
        tmp_path,
        data_root,
        [
            "experiment=overfit_test",
            "data.n_train=100",
            "pool.size=20",
            "trainer.max_epochs=10",
            "trainer.patience=10",
            "seed=0",
        ],
        "overfit",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [metrics] = job_metrics(out)
    trained = metrics["history"][1:]
    assert metrics["status"] == "done" and metrics["settings"]["n_train"] == 100
    assert len(trained) == 10  # no early stopping
    assert trained[-1]["train_loss"] < trained[0]["train_loss"] / 5
    assert max(h["train_accuracy"] for h in trained[-5:]) >= 0.99
    [folder] = job_folders(out)
    assert {"Images/confounded_samples", "Images/corrected_samples"} <= set(events(folder).Tags()["images"])


def test_lambda_search_on_the_submitit_local_launcher_in_batches_of_one(data_root, tmp_path):
    result, out = fast_sweep(
        tmp_path,
        data_root,
        [
            "experiment=lambda_search",
            "best_lr=0.005",
            "loss.lam=0.5,2",
            "seed=0",
            "hydra/launcher=local",
            "trainer.num_threads=null",
            "hydra.sweeper.max_batch_size=1",
        ],
        "lambda",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name.split("_")[0] for p in job_folders(out)] == ["0", "1"]  # numbered on across batches
    runs = job_metrics(out)
    assert [(m["settings"]["lam"], m["settings"]["lr"]) for m in runs] == [(0.5, 0.005), (2.0, 0.005)]
    assert all(m["status"] == "done" and m["torch_threads"] == 1 for m in runs)
    assert len({m["pid"] for m in runs}) == 2 and (out / ".submitit").is_dir()  # a process per job


def test_optuna_study_resumes_from_sqlite_and_records_failed_trials(data_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna_args = ["hparams_search=lambda_optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_jobs=1"]
    result, first = fast_sweep(tmp_path, data_root, [*optuna_args, "hydra.sweeper.n_trials=1"], "optuna1")
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="xil_lambda", storage=storage)
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and 0.01 <= trial.params["loss.lam"] <= 100
    assert trial.value == job_metrics(first)[0]["best_val_accuracy"]
    # A second call adds trials to the same study; here each one fails (NaN loss) and the study goes on.
    result, second = fast_sweep(
        tmp_path,
        data_root,
        [*optuna_args, "hydra.sweeper.n_trials=2", "trainer.optimizer=sgd", "trainer.lr=1e12"],
        "optuna2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="xil_lambda", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.FAIL] * 2
    jobs = find_jobs(second)
    assert [j.status for j in jobs] == ["failed", "failed"]
    assert all("training loss became" in j.reason for j in jobs)
