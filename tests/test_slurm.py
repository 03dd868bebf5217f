"""hydra/launcher=slurm against a real one-node SLURM cluster (scripts/slurm-local.sh):
array jobs, one torch thread per CPU, logs in the sweep folder, a failing job,
and jobs interrupted by a time limit or a requeue that resume where they were."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO, TINY, comparable, start_xilsweep
from xilsweep.results.collect import find_jobs
from xilsweep.results.report import main as report_main

SCRIPT = REPO / "scripts" / "slurm-local.sh"
FAST = [*TINY, "save_model=false", "explainer.n_images=16", "hydra/launcher=slurm"]


def cluster(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm():
    """The local cluster: used if running (.ci/run starts it), else started here and stopped after."""
    if cluster("status").returncode == 0:
        yield
        return
    started = cluster("start")
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["scripts/slurm-local.sh start failed"])[-1]
        pytest.skip(f"no SLURM cluster here ({reason})")
    yield
    cluster("stop")


def slurm_jobs(sweep: Path) -> dict[int, str]:
    """Job number -> SLURM id (<array id>_<task>) of a sweep, from submitit's log folders."""
    ids = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    return {int(i.split("_")[1]): i for i in ids}


def job_folder(sweep: Path, number: int) -> Path:
    [folder] = sweep.glob(f"{number}_*")
    return folder


def cancel(sweep: Path) -> None:
    """Leave no job of this sweep behind on the cluster, whatever the test's outcome."""
    if (sweep / ".submitit").is_dir():
        subprocess.run(["scancel", *slurm_jobs(sweep).values()], capture_output=True)


def test_sweep_runs_as_an_array_with_threads_logs_report_and_a_failed_job(
    slurm, data_root, tmp_path, xilsweep_cli, plots_not_rendered
):
    """Two jobs, one array: a good one on two CPUs, and one with a bad learning rate."""
    sweep = tmp_path / "sweep"
    try:
        result = xilsweep_cli(
            [
                "-m",
                *FAST,
                f"data.root={data_root}",
                "trainer.num_threads=null",
                "hydra.launcher.cpus_per_task=2",
                "trainer.lr=0.001,-1",
                f"hydra.sweep.dir={sweep}",
            ],
            tmp_path,
        )
    finally:
        cancel(sweep)
    assert result.returncode != 0  # the failed job is reported at the end
    assert "sacct" not in result.stderr + result.stdout  # no accounting here, and no warning per poll
    ids = slurm_jobs(sweep)
    assert sorted(ids) == [0, 1] and len({i.split("_")[0] for i in ids.values()}) == 1  # one array
    for _number, slurm_id in ids.items():  # submitit's logs of every task, in the sweep folder
        assert (sweep / ".submitit" / slurm_id / f"{slurm_id}_0_log.out").is_file()
    jobs = {job.folder.name.split("_")[0]: job for job in find_jobs(sweep)}
    assert [jobs[n].status for n in "01"] == ["done", "failed"]
    assert "trainer.lr=-1" in jobs["1"].reason
    assert jobs["0"].metrics["torch_threads"] == 2  # OMP_NUM_THREADS follows the task's CPUs, torch follows it
    assert report_main([str(sweep)]) == 0  # python -m xilsweep.report SWEEP
    assert len((sweep / "report" / "jobs.csv").read_text().strip().splitlines()) == 1 + 2


def wait_for_epoch(folder_of, numbers, epoch: int, deadline: float) -> int:
    """The first of ``numbers`` whose job has logged ``epoch``."""
    while time.monotonic() < deadline:
        for number in numbers:
            log = folder_of(number) / "run.log" if folder_of(number) else None
            if log and log.is_file() and f"epoch {epoch}/" in log.read_text():
                return number
        time.sleep(0.2)
    raise TimeoutError(f"no job reached epoch {epoch}")


def test_jobs_cut_by_time_limit_or_requeue_resume_and_end_as_uninterrupted(slurm, data_root, tmp_path):
    """Three identical jobs: 0 runs through; 1 gets submitit's time-limit signal (the one SLURM
    sends signal_delay_s before the limit); 2 is requeued with scontrol, as on preemption."""
    sweep = tmp_path / "sweep"
    epochs = 24  # about 9 s a job: it outlasts the 2 s (KillWait) SLURM gives it to end after a requeue
    args = [
        "-m",
        *FAST,
        "data.n_train=null",  # the whole training split: epochs long enough to be interrupted mid-run
        f"data.root={data_root}",
        f"trainer.max_epochs={epochs}",
        f"trainer.patience={epochs}",
        "seed=0,0,0",
        "hydra.launcher.timeout_min=5",  # under 10 min submitit counts a signal as a time-out
        f"hydra.sweep.dir={sweep}",
    ]
    began = time.monotonic()
    sweeper = start_xilsweep(args, tmp_path)
    try:

        def folder_of(number):
            found = list(sweep.glob(f"{number}_*"))
            return found[0] if found else None

        deadline = time.monotonic() + 240
        to_interrupt = [1, 2]
        while to_interrupt:  # each one once it has checkpointed a few epochs
            number = wait_for_epoch(folder_of, to_interrupt, 2, deadline)
            slurm_id = slurm_jobs(sweep)[number]
            command = ["scancel", "--signal=USR2", slurm_id] if number == 1 else ["scontrol", "requeue", slurm_id]
            subprocess.run(command, check=True, capture_output=True)
            to_interrupt.remove(number)
        output, _ = sweeper.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        sweeper.kill()
        cancel(sweep)
    wall = time.monotonic() - began
    assert sweeper.returncode == 0, output[-3000:]
    records = [json.loads((job_folder(sweep, n) / "metrics.json").read_text()) for n in range(3)]
    assert all(r["status"] == "done" and r["epochs_run"] == epochs for r in records)
    for number in (1, 2):
        log = (job_folder(sweep, number) / "run.log").read_text()
        assert log.count("fine-tuning balanced") == 2  # started twice: interrupted, then resumed
        assert comparable(records[number]) == comparable(records[0])
        assert records[number]["config"]["trainer"]["resume"] is True
        events = EventAccumulator(str(job_folder(sweep, number)))
        events.Reload()
        steps = [event.step for event in events.Scalars("Accuracy/val_epoch")]
        assert steps == list(range(epochs + 1))  # every epoch once, none duplicated by the restart
    submitit_log = (sweep / ".submitit" / slurm_jobs(sweep)[1] / f"{slurm_jobs(sweep)[1]}_0_log.out").read_text()
    assert "Requeued job" in submitit_log  # submitit's checkpoint hook requeued it
    print(f"three jobs, two of them interrupted and resumed: {wall:.0f} s")
