"""Speed benchmark: ``python bench/speed.py [--out bench/results/speed.json]``
(``make bench``, about 12 minutes on 2 cores). Not part of the test suite;
``--tiny`` is the quick setting its smoke test runs.

One run measures, on the same data, models and batches:

1. **profile**: where a default job's time goes, for jobs run one after
   another in a process that has already run one (a warm worker): start-up
   (config, assembly, TensorBoard run, the references' cached reasons), the
   epochs, the reason metrics, the end; and the share of the reason metrics;
2. **loop**: training samples/s of xilsweep's loop (``train_one_epoch`` on
   in-memory tensors, the model placed by ``Trainer``) against a plain
   reference loop (a ``Dataset`` of (image, one-hot) pairs, a ``DataLoader``
   with the same batches, the same model, loss and optimiser), the other
   memory format, evaluation at several batch sizes, and achieved GFLOP/s
   against a matrix-product ceiling (``torch.mm``) measured in the same rounds;
3. **sweeps**: jobs per hour of a small lambda x seed sweep run the naive way
   (one process per job, the reason metrics every epoch on the whole test
   set), one process per job, in parallel processes with one thread each
   (``hydra/launcher=parallel``) and in one process (Hydra's basic launcher);
4. **full**: the wall time of a 100-job lambda_search-style sweep of the
   default model with the recommended launcher (``parallel``);
5. **grid**: the wall time of ``experiment=full_grid_search`` (108 jobs);
6. **curve** (not by default): the wall time of an interaction-efficiency
   curve, one method and query strategy at 1, 2, 5 and 10 corrections, seeds
   0-2 (``experiment=interaction_efficiency``, 12 jobs);
7. **sharing**: jobs per hour of a sweep whose jobs share the machine's device,
   run 1, 2, 4, ... at a time (``hydra/launcher=parallel`` with that many
   workers): how many jobs one GPU takes at once;
8. **compile** (not by default): ``torch.compile`` against eager.

``--device cuda`` runs every job, loop and ceiling on the GPU (``trainer.device=cuda``;
default sections there: profile, loop, sharing): loop samples/s, the share of the
GPU's float32 matrix-product ceiling, and jobs per hour with several jobs sharing it.

Every loop figure is the best of interleaved repeats (the machine may be
shared); the ratios compare variants measured in the same run. Prints
Markdown tables and every target with its measured value, and writes
everything as JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xilsweep.config import CONF_DIR  # noqa: E402
from xilsweep.job import assemble, build  # noqa: E402
from xilsweep.losses import Batch  # noqa: E402
from xilsweep.run import run_job  # noqa: E402
from xilsweep.sampling import create_is_user_corrected_mask  # noqa: E402
from xilsweep.training import concat, evaluate, train_one_epoch  # noqa: E402

MODELS = ("cnn", "cnn_examples", "lenet", "mlp")
MODEL_OVERRIDES = {"mlp": ["explainer=input_gradients"]}  # GradCAM needs a convolution
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
EVAL_BATCH_SIZES = (64, 128, 256, 512, 1024, 2048)
SWEEP_MODES = ("naive", "per_process", "parallel", "in_process")
DEVICES = ("cpu", "cuda")
DEFAULT_SECTIONS = {"cpu": "profile,loop,sweeps,full,grid", "cuda": "profile,loop,sharing"}
# The naive way's reason metrics: every epoch, every figure, on the whole test set.
NAIVE = ["explainer.attribution_every=1", "explainer.monitor_images=null"]
LAMBDAS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
TINY = ["debug=tiny"]  # conf/debug/tiny.yaml
LAUNCHERS = {
    "parallel": ["hydra/launcher=parallel"],  # joblib: a worker process per core, one thread each
    "in_process": [],
}  # Hydra's basic launcher


def job_overrides(args, model_name: str) -> list[str]:
    return [
        f"model={model_name}",
        *MODEL_OVERRIDES.get(model_name, []),
        f"data.root={args.data_root}",
        *args.job_overrides,
    ]


def config(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def profile_section(args) -> dict:
    """Default jobs one after another in this process (the first warms it up, as a
    launcher's worker is after its first job): where their time goes."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    torch.set_num_threads(1)
    jobs = []
    for seed in range(args.profile_jobs + 1):
        began = time.perf_counter()
        cfg = config([f"data.root={args.data_root}", *args.job_overrides, f"seed={seed}"], hydra=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        composed = time.perf_counter() - began
        out = args.work_dir / "profile" / str(seed)
        out.mkdir(parents=True)
        run_job(cfg, out)
        record = json.loads((out / "metrics.json").read_text())
        timings = {"compose": composed, **record["seconds_by_stage"], "total": time.perf_counter() - began}
        timings["startup"] = timings["compose"] + timings["assemble"] + timings["start"]
        jobs.append({"epochs": record["epochs_run"], **timings})
    warm = jobs[1:]
    mean = {key: sum(job[key] for job in warm) / len(warm) for key in warm[0]}
    mean["reasons_share"] = sum(job["reasons"] for job in warm) / sum(job["total"] for job in warm)
    print(
        f"  profile: {mean['total']:.2f} s per warm job ({mean['epochs']:.1f} epochs), start-up "
        f"{mean['startup']:.2f} s, reason metrics {100 * mean['reasons_share']:.0f}%",
        flush=True,
    )
    return {"first_job": jobs[0], "warm_jobs": warm, "warm_mean": mean}


def synchronize() -> None:
    """Wait for queued GPU work, so that it counts in the time measured."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def best_seconds(fn, *args, repeats: int = 1) -> float:
    """The shortest of ``repeats`` calls of ``fn(*args)``."""
    times = []
    for _ in range(repeats):
        synchronize()
        began = time.perf_counter()
        fn(*args)
        synchronize()
        times.append(time.perf_counter() - began)
    return min(times)


def matmul_gflops(size: int, device: str = "cpu") -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    return 2 * size**3 / best_seconds(torch.mm, a, b, repeats=3) / 1e9


class PairDataset(Dataset):
    """The plain reference: one (image, one-hot target) pair per item."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor):
        self.x, self.targets = x, targets

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def reference_epoch(model, loader, k: int, loss_fn, optimizer) -> float:
    """A plain PyTorch epoch: DataLoader batches, the same loss and optimiser."""
    model.train()
    running = 0.0
    for x, targets in loader:
        batch = Batch(x, targets, create_is_user_corrected_mask(len(x), k), torch.zeros_like(x, dtype=torch.bool))
        running += loss_fn.update(model, batch, optimizer).losses["total"].item()
    return running


def flops_per_sample(model) -> tuple[float, float]:
    """(forward, forward + backward) convolution and linear FLOPs of one image."""
    model = copy.deepcopy(model)
    x = torch.zeros(1, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return forward, counter.get_total_flops()


class LoopCase:
    """One model's loop variants, built once and trained on round after round."""

    def __init__(self, args, model_name: str):
        self.name = model_name
        cfg = config(job_overrides(args, model_name))
        job = assemble(cfg)
        self.trainer, self.loss_fn, self.data, self.sampler = job.trainer, job.loss, job.data, job.sampler
        device = self.trainer.device
        self.merged = concat(self.data.train, job.pool.corrected).to(device)
        self.val, self.test = self.data.val.to(device), self.data.test.to(device)
        torch.manual_seed(0)
        self.start_model = build(cfg, "model", num_classes=self.data.num_classes)
        self.forward_flops, self.train_flops = flops_per_sample(self.start_model)
        self.other = "contiguous" if self.trainer.memory_format == torch.channels_last else "channels_last"
        # xilsweep's loop; the same with the other memory format or torch's default optimiser
        # implementation; the plain reference (channels-first model, default optimiser, DataLoader)
        self.loops = {
            "xilsweep": self.fresh(),
            f"xilsweep_{self.other}": self.fresh(FORMATS[self.other]),
            "xilsweep_plain_optimizer": self.fresh(plain_optimizer=True),
            "reference": self.fresh(torch.contiguous_format, plain_optimizer=True),
        }
        for model, optimizer in self.loops.values():  # first calls build kernels and caches: not timed
            train_one_epoch(model, self.merged, self.sampler.batches(0)[:2], self.sampler.k, self.loss_fn, optimizer)
            evaluate(model, self.val)

    def fresh(self, memory_format=None, plain_optimizer=False):
        """A copy of the start model, placed as Trainer does (or in ``memory_format``), with
        xilsweep's optimiser (or torch's default implementation of it)."""
        model = copy.deepcopy(self.start_model)
        if memory_format is None:
            model = self.trainer.place(model)
        else:
            model = model.to(self.trainer.device, memory_format=memory_format)
        optimizer = self.trainer.make_optimizer(model.parameters())
        if plain_optimizer:
            optimizer = type(optimizer)(model.parameters(), **{**optimizer.defaults, "fused": None})
        return model, optimizer

    def measure(self, epoch: int) -> dict[str, float]:
        """Samples/s of one epoch of every variant and of evaluation per batch size."""
        batches, k = self.sampler.batches(epoch), self.sampler.k
        n_samples = sum(len(b) for b in batches)
        loader = DataLoader(
            PairDataset(self.merged.x, self.merged.targets), batch_sampler=[b.tolist() for b in batches]
        )
        rates = {}
        for name, (model, optimizer) in self.loops.items():
            if name == "reference":
                seconds = best_seconds(reference_epoch, model, loader, k, self.loss_fn, optimizer)
            else:
                seconds = best_seconds(train_one_epoch, model, self.merged, batches, k, self.loss_fn, optimizer)
            rates[name] = n_samples / seconds
        for size in EVAL_BATCH_SIZES:
            seconds = best_seconds(evaluate, self.loops["xilsweep"][0], self.test, size)
            rates[f"eval_{size}"] = len(self.test) / seconds
        return rates

    def summary(self, threads: int, rates: dict[str, list[float]], ceilings: list[float]) -> dict:
        best = {name: max(values) for name, values in rates.items()}
        ceiling = max(ceilings)
        eval_size = max(EVAL_BATCH_SIZES, key=lambda size: best[f"eval_{size}"])
        train_gflops = best["xilsweep"] * self.train_flops / 1e9
        eval_gflops = best[f"eval_{eval_size}"] * self.forward_flops / 1e9
        return {
            "threads": threads,
            "model": self.name,
            "memory_format": FORMAT_NAMES[self.trainer.memory_format],
            "forward_mflop_per_sample": self.forward_flops / 1e6,
            "train_mflop_per_sample": self.train_flops / 1e6,
            "ceiling_gflops": ceiling,
            "ceiling_gflops_all": ceilings,
            "samples_per_s": best,
            "samples_per_s_all": rates,
            "loop_vs_reference": best["xilsweep"] / best["reference"],
            "loop_vs_other_format": best["xilsweep"] / best[f"xilsweep_{self.other}"],
            "other_format": self.other,
            "loop_vs_plain_optimizer": best["xilsweep"] / best["xilsweep_plain_optimizer"],
            "train_gflops": train_gflops,
            "train_percent_of_ceiling": 100 * train_gflops / ceiling,
            "eval_batch_size_best": eval_size,
            "eval_gflops": eval_gflops,
            "eval_percent_of_ceiling": 100 * eval_gflops / ceiling,
        }


def loop_section(args) -> list[dict]:
    """Samples/s and GFLOP/s of the training loops, per thread count and model. The
    rounds go over every (threads, model) in turn, so each is sampled at several
    moments and the best of them is the least disturbed by other work."""
    cases = [LoopCase(args, name) for name in args.models]
    rates = {(t, c.name): defaultdict(list) for t in args.threads for c in cases}
    ceilings = defaultdict(list)
    for epoch in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            ceilings[threads].append(matmul_gflops(args.matmul_size, args.device))
            for case in cases:
                for name, rate in case.measure(epoch).items():
                    rates[threads, case.name][name].append(rate)
        print(f"  loop: round {epoch + 1}/{args.repeats} done", flush=True)
    results = [
        case.summary(threads, dict(rates[threads, case.name]), ceilings[threads])
        for threads in args.threads
        for case in cases
    ]
    for r in results:
        print(
            f"  loop: {r['threads']} thread(s), {r['model']}: {r['samples_per_s']['xilsweep']:.0f} samples/s, "
            f"{r['loop_vs_reference']:.2f}x reference, {r['train_percent_of_ceiling']:.0f}% of "
            f"{r['ceiling_gflops']:.0f} GFLOP/s",
            flush=True,
        )
    return results


def compile_section(args) -> dict:
    """torch.compile against eager on the default model: compile time and steady epochs."""
    torch.set_num_threads(min(args.threads))
    cfg = config([f"data.root={args.data_root}", *args.job_overrides])
    job = assemble(cfg)
    trainer, loss_fn, sampler = job.trainer, job.loss, job.sampler
    merged = concat(job.data.train, job.pool.corrected).to(trainer.device)
    torch.manual_seed(0)
    eager = trainer.place(build(cfg, "model", num_classes=job.data.num_classes))
    compiled = torch.compile(copy.deepcopy(eager))
    result = {"threads": torch.get_num_threads()}
    for name, model in (("eager", eager), ("compiled", compiled)):
        optimizer = trainer.make_optimizer(model.parameters())
        epochs = [
            best_seconds(train_one_epoch, model, merged, sampler.batches(e), sampler.k, loss_fn, optimizer)
            for e in range(1 + args.repeats)
        ]
        result[name] = {"first_epoch_seconds": epochs[0], "epoch_seconds": min(epochs[1:])}
    result["steady_speedup"] = result["eager"]["epoch_seconds"] / result["compiled"]["epoch_seconds"]
    print(
        f"  torch.compile: first epoch {result['compiled']['first_epoch_seconds']:.1f} s, "
        f"steady {result['steady_speedup']:.2f}x eager",
        flush=True,
    )
    return result


def sweep_grid(n_jobs: int) -> tuple[list[str], list[str]]:
    """About ``n_jobs`` lambda_search-style jobs: (lambda values, seeds) of the grid."""
    n_seeds = 1 if n_jobs <= 2 else 2 if n_jobs <= 2 * len(LAMBDAS) else math.ceil(n_jobs / len(LAMBDAS))
    n_lambdas = min(len(LAMBDAS), math.ceil(n_jobs / n_seeds))
    return [str(lam) for lam in LAMBDAS[:n_lambdas]], [str(seed) for seed in range(n_seeds)]


def sweep_jobs(grid) -> list[list[str]]:
    """The grid's jobs, in the order Hydra's basic sweeper runs them."""
    return [[f"loss.lam={lam}", f"seed={seed}"] for lam, seed in itertools.product(*grid)]


def sweep_arguments(grid) -> list[str]:
    lambdas, seeds = grid
    return [f"loss.lam={','.join(lambdas)}", f"seed={','.join(seeds)}"]


# Runs argv[2:] and writes its peak RSS (KiB; wait4 counts the process and the descendants it
# waited for) to argv[1]. A small interpreter of its own: a child forked straight from this
# large benchmark process would report the benchmark's RSS as its peak.
RSS_PROBE = """import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))"""


def run_measured(command: list[str], cwd: Path, env: dict) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB of the largest process of its tree, exit status, output tail)."""
    with tempfile.TemporaryDirectory() as scratch:
        rss_file, log_file = Path(scratch) / "rss", Path(scratch) / "output"
        with open(log_file, "w") as output:
            began = time.perf_counter()
            status = subprocess.run(
                [sys.executable, "-c", RSS_PROBE, str(rss_file), *command],
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            ).returncode
            seconds = time.perf_counter() - began
        return seconds, int(rss_file.read_text()) / 1024, status, log_file.read_text()[-3000:]


def finished_jobs(folder: Path) -> int:
    done = 0
    for metrics in folder.rglob("metrics.json"):
        try:
            done += json.loads(metrics.read_text()).get("status") == "done"
        except (OSError, ValueError):
            pass
    return done


def xilsweep_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "xilsweep.run", *arguments]


def run_sweep(mode: str, grid, common: list[str], folder: Path, env: dict, launcher: tuple[str, ...] = ()) -> dict:
    """Run the grid's jobs one way (``launcher``: further launcher settings); wall time,
    jobs/hour, peak memory, jobs finished."""
    cwd, jobs = REPO, sweep_jobs(grid)
    if mode in ("naive", "per_process"):
        extra = NAIVE if mode == "naive" else []
        wall, peak, failures = 0.0, 0.0, 0
        for i, job in enumerate(jobs):
            seconds, rss, status, tail = run_measured(
                xilsweep_command(*common, *extra, *job, f"hydra.run.dir={folder / str(i)}"), cwd, env
            )
            wall, peak, failures = wall + seconds, max(peak, rss), failures + (status != 0)
            if status:
                print(tail, file=sys.stderr)
    else:
        wall, peak, status, tail = run_measured(
            xilsweep_command(
                "-m", *LAUNCHERS[mode], *launcher, *common, *sweep_arguments(grid), f"hydra.sweep.dir={folder}"
            ),
            cwd,
            env,
        )
        failures = status != 0
        if status:
            print(tail, file=sys.stderr)
    done = finished_jobs(folder)
    return {
        "mode": mode,
        "jobs": len(jobs),
        "done": done,
        "seconds": wall,
        "jobs_per_hour": 3600 * len(jobs) / wall,
        "peak_rss_mb": peak,
        "failed_commands": int(failures),
    }


def sweep_section(args, env: dict) -> list[dict]:
    results = []
    grid = sweep_grid(args.sweep_jobs)
    for model_name in args.sweep_models:
        common = job_overrides(args, model_name)
        # Build the cached data and confounded model first, so that no mode's time includes them
        # (the smoke run, timing nothing, lets its first job build them).
        if not args.tiny:
            warm_up = xilsweep_command(*common, f"hydra.run.dir={args.work_dir / 'warm-up' / model_name}")
            run_measured(warm_up, REPO, env)
        by_mode = {}
        for mode in args.modes:
            by_mode[mode] = run_sweep(mode, grid, common, args.work_dir / model_name / mode, env)
            print(
                f"  sweep: {model_name}, {mode}: {by_mode[mode]['seconds']:.1f} s for {by_mode[mode]['jobs']} jobs "
                f"({by_mode[mode]['jobs_per_hour']:.0f} jobs/hour)",
                flush=True,
            )
        base = by_mode.get("naive")
        for result in by_mode.values():
            result.update(model=model_name, vs_naive=result["jobs_per_hour"] / base["jobs_per_hour"] if base else None)
            results.append(result)
    return results


def full_sweep_section(args, env: dict) -> dict:
    """A ~100-job lambda_search-style sweep of the default model with the recommended launcher."""
    grid = sweep_grid(args.full_sweep_jobs)
    result = run_sweep(args.full_sweep_mode, grid, job_overrides(args, "cnn"), args.work_dir / "full_sweep", env)
    result["arguments"] = sweep_arguments(grid)
    print(f"  {result['jobs']}-job sweep ({args.full_sweep_mode}): {result['seconds']:.0f} s", flush=True)
    return result


def sharing_section(args, env: dict) -> list[dict]:
    """Jobs/hour of the same sweep of default jobs run 1, 2, 4, ... at a time on one device
    (the parallel launcher with that many workers, one thread each)."""
    grid, results = sweep_grid(args.sharing_sweep_jobs), []
    for workers in args.sharing_workers:
        result = run_sweep(
            "parallel",
            grid,
            job_overrides(args, "cnn"),
            args.work_dir / "sharing" / str(workers),
            env,
            launcher=(f"hydra.launcher.n_jobs={workers}",),
        )
        base = results[0] if results else result
        result.update(workers=workers, vs_first=result["jobs_per_hour"] / base["jobs_per_hour"])
        results.append(result)
        print(f"  sharing: {workers} at a time: {result['jobs_per_hour']:.0f} jobs/hour", flush=True)
    return results


def experiment_section(args, env: dict, name: str, arguments: list[str]) -> dict:
    """An experiment's sweep with the recommended launcher: jobs planned and done, wall time, peak RSS."""
    folder = args.work_dir / name
    command = xilsweep_command(
        "-m",
        *arguments,
        *LAUNCHERS["parallel"],
        f"data.root={args.data_root}",
        *args.job_overrides,
        f"hydra.sweep.dir={folder}",
    )
    seconds, peak, status, tail = run_measured(command, REPO, env)
    if status:
        print(tail, file=sys.stderr)
    planned = len(yaml.safe_load((folder / "planned_jobs.yaml").read_text())["jobs"])
    result = {"jobs": planned, "done": finished_jobs(folder), "seconds": seconds, "peak_rss_mb": peak}
    print(f"  {name}: {result['done']}/{planned} jobs in {seconds:.0f} s", flush=True)
    return {**result, "arguments": arguments}


def grid_section(args, env: dict) -> dict:
    """The protocol's full grid (experiment=full_grid_search) with the recommended launcher."""
    extra = ["trainer.lr=0.001", "loss.lam=1", "pool.size=10,100", "seed=0"] if args.tiny else []
    return experiment_section(args, env, "full_grid", ["experiment=full_grid_search", *extra])


def curve_section(args, env: dict) -> dict:
    """An interaction-efficiency curve: one method and query strategy, 1 to 10 corrections,
    seeds 0-2 (experiment=interaction_efficiency), with the recommended launcher."""
    sizes = "1,2" if args.tiny else "1,2,5,10"
    seeds = ["seed=0"] if args.tiny else []
    arguments = ["experiment=interaction_efficiency", f"loss={args.curve_loss}", f"pool.select={args.curve_select}"]
    return experiment_section(args, env, "curve", [*arguments, f"pool.size={sizes}", *seeds])


def target(
    name: str, value: float, limit: float, unit: str, higher_is_better: bool, detail: str = "", complete: bool = True
) -> str:
    """One target line: the measured value, the target, their ratio (> 1: met; never met where
    the measured run did not ``complete``)."""
    ratio = value / limit if higher_is_better else limit / value
    verdict = "met" if ratio >= 1 and complete else "NOT met" + ("" if complete else ": not every job finished")
    return (
        f"{name}: {value:.2f}{unit} (target {'>=' if higher_is_better else '<='} {limit:g}{unit}; "
        f"{ratio:.2f}x the target, {verdict}){detail}"
    )


def targets(report: dict) -> list[str]:
    """Every target of the speed issue against what this run measured."""
    lines = []
    full, grid = report.get("full_sweep"), report.get("grid")
    if full:
        lines.append(
            target(
                f"{full['jobs']}-job sweep, default settings, {full['mode']} launcher",
                full["seconds"] / 60,
                4,
                " min",
                False,
            )
        )
    naive = [s for s in report.get("sweeps", []) if s["model"] == "cnn" and s["mode"] == "naive"]
    if full and naive:
        lines.append(
            target(
                "jobs/hour of that sweep against the naive way (one process per job, reason metrics "
                "every epoch on the whole test set)",
                full["jobs_per_hour"] / naive[0]["jobs_per_hour"],
                3,
                "x",
                True,
                f" [{full['jobs_per_hour']:.0f} vs {naive[0]['jobs_per_hour']:.0f}]",
            )
        )
    if grid:
        lines.append(
            target(
                f"full_grid_search ({grid['done']}/{grid['jobs']} jobs)",
                grid["seconds"] / 60,
                6,
                " min",
                False,
                complete=grid["done"] == grid["jobs"],
            )
        )
    curve = report.get("curve")
    if curve:
        lines.append(
            target(
                f"interaction-efficiency curve ({' '.join(curve['arguments'][1:])}, "
                f"{curve['done']}/{curve['jobs']} jobs)",
                curve["seconds"] / 60,
                15,
                " min",
                False,
                complete=curve["done"] == curve["jobs"],
            )
        )
    loops = {(r["model"], r["threads"]): r for r in report.get("loop", [])}
    for (model, threads), r in loops.items():
        if model == "cnn":
            lines.append(
                target(
                    f"training loop vs plain reference, default model, {threads} thread(s)",
                    r["loop_vs_reference"],
                    1.3,
                    "x",
                    True,
                )
            )
        if model == "cnn_examples":
            lines.append(
                target(
                    f"conv32-conv64 training, share of the matmul ceiling, {threads} thread(s)",
                    r["train_percent_of_ceiling"],
                    60,
                    "%",
                    True,
                )
            )
    profile = report.get("profile")
    if profile:
        mean = profile["warm_mean"]
        lines.append(
            target("reason metrics, share of a default job's time", 100 * mean["reasons_share"], 20, "%", False)
        )
        lines.append(
            target(
                "start-up per job in a warm worker (config, data, cached models, TensorBoard)",
                mean["startup"],
                1,
                " s",
                False,
            )
        )
    return lines


def table(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"xilsweep speed benchmark: {machine['cpus']} CPUs, {machine['device']}, torch {machine['torch']}, "
        f"load average {machine['load_before']:.1f} before, {machine['load_after']:.1f} after"
    ]
    if report.get("profile"):
        keys = ("total", "startup", "compose", "assemble", "start", "fit", "end", "reasons")
        lines += [
            "",
            "Profile: seconds per default job, jobs one after another in one process (first row: the first job, "
            "which also imports and warms up)",
            "",
            "| job | epochs | " + " | ".join(keys) + " | reasons share |",
            "|---|---|" + "---|" * (len(keys) + 1),
        ]
        rows = [("first", report["profile"]["first_job"]), ("warm, mean", report["profile"]["warm_mean"])]
        for name, row in rows:
            share = f"{100 * row['reasons'] / row['total']:.0f}%"
            lines.append(
                f"| {name} | {row['epochs']:.1f} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + f" | {share} |"
            )
    if report.get("loop"):
        lines += [
            "",
            "Training loop: samples/s (best of the repeats), GFLOP/s against the torch.mm ceiling "
            "measured in the same rounds",
            "",
            "| threads | model | xilsweep loop | plain reference | ratio | vs other memory format "
            "| vs unfused optimiser | train GFLOP/s | % ceiling "
            "| eval GFLOP/s (batch) | % ceiling | ceiling GFLOP/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["loop"]:
            s = r["samples_per_s"]
            lines.append(
                f"| {r['threads']} | {r['model']} | {s['xilsweep']:.0f} | {s['reference']:.0f} "
                f"| {r['loop_vs_reference']:.2f}x | {r['loop_vs_other_format']:.2f}x ({r['other_format']}) "
                f"| {r['loop_vs_plain_optimizer']:.2f}x "
                f"| {r['train_gflops']:.1f} "
                f"| {r['train_percent_of_ceiling']:.0f}% | {r['eval_gflops']:.1f} ({r['eval_batch_size_best']}) "
                f"| {r['eval_percent_of_ceiling']:.0f}% | {r['ceiling_gflops']:.0f} |"
            )
        lines += [
            "",
            "Evaluation: samples/s by batch size",
            "",
            "| threads | model | " + " | ".join(map(str, EVAL_BATCH_SIZES)) + " |",
            "|---|---|" + "---|" * len(EVAL_BATCH_SIZES),
        ]
        for r in report["loop"]:
            lines.append(
                f"| {r['threads']} | {r['model']} | "
                + " | ".join(f"{r['samples_per_s'][f'eval_{b}']:.0f}" for b in EVAL_BATCH_SIZES)
                + " |"
            )
    if report.get("compile"):
        r = report["compile"]
        lines += [
            "",
            f"torch.compile, default model, {r['threads']} thread(s): first epoch (compiling) "
            f"{r['compiled']['first_epoch_seconds']:.1f} s, then {r['compiled']['epoch_seconds']:.2f} "
            f"s/epoch against eager {r['eager']['epoch_seconds']:.2f} s/epoch "
            f"({r['steady_speedup']:.2f}x)",
        ]
    if report.get("sweeps"):
        lines += [
            "",
            "Sweeps: wall time, jobs/hour, peak RSS of the largest process",
            "",
            "| model | mode | jobs done | seconds | jobs/hour | x naive | peak RSS MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["sweeps"]:
            ratio = f"{r['vs_naive']:.2f}x" if r["vs_naive"] else "-"
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['done']}/{r['jobs']} | {r['seconds']:.1f} "
                f"| {r['jobs_per_hour']:.0f} | {ratio} | {r['peak_rss_mb']:.0f} |"
            )
    if report.get("sharing"):
        lines += [
            "",
            f"Jobs sharing one {report['settings']['device']} device: the same sweep of default jobs, "
            "so many at a time (parallel launcher)",
            "",
            "| jobs at a time | jobs done | seconds | jobs/hour | x the first row |",
            "|---|---|---|---|---|",
        ]
        for r in report["sharing"]:
            lines.append(
                f"| {r['workers']} | {r['done']}/{r['jobs']} | {r['seconds']:.1f} | {r['jobs_per_hour']:.0f} "
                f"| {r['vs_first']:.2f}x |"
            )
    if report.get("full_sweep"):
        r = report["full_sweep"]
        lines += [
            "",
            f"{r['jobs']}-job lambda_search-style sweep of the default model ({r['mode']}, "
            f"{' '.join(r['arguments'])}): {r['done']}/{r['jobs']} done in {r['seconds']:.0f} s "
            f"({r['seconds'] / 60:.1f} min)",
        ]
    if report.get("grid"):
        r = report["grid"]
        lines += ["", f"experiment=full_grid_search (parallel): {r['done']}/{r['jobs']} done in {r['seconds']:.0f} s"]
    if report.get("curve"):
        r = report["curve"]
        lines += ["", f"{' '.join(r['arguments'])} (parallel): {r['done']}/{r['jobs']} done in {r['seconds']:.0f} s"]
    if targets(report):
        lines += ["", "Targets:", *(f"- {line}" for line in targets(report))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed.json")
    parser.add_argument("--tiny", action="store_true", help="a quick check on a 300-image subset (for tests)")
    parser.add_argument(
        "--sections",
        default=None,
        help="comma-separated: profile, loop, sweeps, full, grid, sharing, curve, compile "
        "(default: profile,loop,sweeps,full,grid; with --device cuda: profile,loop,sharing)",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where jobs, loops and the ceiling run")
    parser.add_argument(
        "--sharing-workers", type=int, nargs="+", default=[1, 2, 4, 8], help="jobs at a time of the sharing section"
    )
    parser.add_argument("--sharing-sweep-jobs", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads of the loop section")
    parser.add_argument("--models", nargs="+", default=["cnn", "cnn_examples"], choices=MODELS)
    parser.add_argument("--profile-jobs", type=int, default=3, help="warm jobs of the profile section")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of the loop measurements")
    parser.add_argument("--matmul-size", type=int, default=None, help="default: 2048 (cpu), 8192 (cuda)")
    parser.add_argument("--sweep-models", nargs="+", default=["cnn"], choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(SWEEP_MODES), choices=SWEEP_MODES)
    parser.add_argument("--sweep-jobs", type=int, default=8)
    parser.add_argument("--full-sweep-jobs", type=int, default=100)
    parser.add_argument("--full-sweep-mode", choices=SWEEP_MODES, default="parallel", help="the recommended launcher")
    parser.add_argument("--curve-loss", default="rrr", help="the method of the curve section")
    parser.add_argument("--curve-select", default="caipi", help="the query strategy of the curve section")
    parser.add_argument("--data-root", type=Path, default=REPO / "data")
    parser.add_argument("--work-dir", type=Path, default=None, help="job folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is false)")
    args.sections = args.sections or DEFAULT_SECTIONS[args.device]
    args.matmul_size = args.matmul_size or (8192 if args.device == "cuda" else 2048)
    args.job_overrides = [*(TINY if args.tiny else []), f"trainer.device={args.device}"]
    if args.tiny:
        args.threads, args.models, args.repeats, args.matmul_size = [1], ["cnn"], 1, 256
        args.sweep_models, args.sweep_jobs, args.full_sweep_jobs, args.profile_jobs = ["cnn"], 2, 2, 1
        args.sharing_workers, args.sharing_sweep_jobs = [2], 2
    sections = set(args.sections.split(","))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "load_before": os.getloadavg()[0],
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="xilsweep-bench-") as scratch:
        args.work_dir = args.work_dir or Path(scratch)
        if "profile" in sections:
            report["profile"] = profile_section(args)
        if "loop" in sections:
            report["loop"] = loop_section(args)
        if "compile" in sections:
            report["compile"] = compile_section(args)
        if "sweeps" in sections:
            report["sweeps"] = sweep_section(args, env)
        if "full" in sections:
            report["full_sweep"] = full_sweep_section(args, env)
        if "grid" in sections:
            report["grid"] = grid_section(args, env)
        if "sharing" in sections:
            report["sharing"] = sharing_section(args, env)
        if "curve" in sections:
            report["curve"] = curve_section(args, env)
    report["machine"]["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(report))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
