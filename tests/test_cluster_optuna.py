"""One Optuna study grown by several sweeper processes at once: on a real
PostgreSQL server the test starts itself, and on Optuna's journal file."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import TINY, run_xilsweep, start_xilsweep
from hydra_plugins.xilsweep_cluster.optuna_sweeper import open_storage

POSTGRES_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
FAST = [*TINY, "trainer.max_epochs=1", "save_model=false", "explainer.n_images=16"]
STUDY = "xil_lambda"  # the study name of hparams_search=lambda_optuna


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server in a temporary folder on a free loopback port, as the unprivileged
    ``postgres`` user (the server refuses root); yields the URL of an empty database."""
    if not POSTGRES_BINS:
        pytest.skip("no PostgreSQL server here (initdb not found under /usr/lib/postgresql)")
    bin_dir = POSTGRES_BINS[-1].parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="xilsweep-postgres-"))
    if as_user:
        os.chown(folder, pwd.getpwnam("postgres").pw_uid, -1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"

    def pg(tool: str, *args: str):
        return subprocess.run([*as_user, str(bin_dir / tool), *args], capture_output=True, text=True, timeout=60)

    started = None
    try:
        pg("initdb", "-D", str(data), "-U", "xil", "--auth=trust")
        started = pg(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
        )
        if started.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {started.stderr.strip()[-300:]}")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "xil", "optuna")
        yield f"postgresql://xil@127.0.0.1:{port}/optuna"
    finally:
        if started is not None and started.returncode == 0:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def worker_args(storage: str, sweep: Path, data_root: Path, n_trials: int) -> list[str]:
    """A sweeper adding ``n_trials`` trials, one at a time, to the shared study."""
    return [
        "-m",
        *FAST,
        f"data.root={data_root}",
        "hparams_search=lambda_optuna",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweep.dir={sweep}",
    ]


def worker(storage: str, sweep: Path, data_root: Path, n_trials: int) -> subprocess.Popen:
    """That sweeper in a process of its own, started in the background."""
    return start_xilsweep(worker_args(storage, sweep, data_root, n_trials), sweep.parent)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


def best_reported(sweep: Path) -> dict:
    return yaml.safe_load((sweep / "optimization_results.yaml").read_text())


def trials_of(sweep: Path, trials: list) -> list:
    """The trials a worker ran: those whose λ is in one of its job folders' overrides."""
    overrides = "".join(p.read_text() for p in sweep.glob("*/.hydra/overrides.yaml"))
    return [t for t in trials if f"loss.lam={t.params['loss.lam']}" in overrides]


def test_workers_started_together_on_an_empty_postgres_share_one_study(postgres, data_root, tmp_path):
    began = time.monotonic()
    workers = [worker(postgres, tmp_path / name, data_root, 3) for name in ("first", "second")]  # at once
    try:
        for process in workers:
            finish(process)
        two_workers = time.monotonic() - began
        # the same study, grown later
        resumed = run_xilsweep(worker_args(postgres, tmp_path / "resumed", data_root, 1), tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        for process in workers:
            process.kill()
    study = optuna.load_study(study_name=STUDY, storage=postgres)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(7))  # none lost, none run twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [len(trials_of(tmp_path / name, trials)) for name in ("first", "second", "resumed")] == [3, 3, 1]
    # The best trial as the last worker and a fresh reader see it, over every worker's trials.
    assert best_reported(tmp_path / "resumed")["best_value"] == study.best_value == max(t.value for t in trials)
    assert best_reported(tmp_path / "resumed")["best_params"] == study.best_params
    for name in ("first", "second"):  # each worker's best is at least as good as its own trials
        assert best_reported(tmp_path / name)["best_value"] >= max(t.value for t in trials_of(tmp_path / name, trials))
    print(f"two workers with three trials each on PostgreSQL: {two_workers:.0f} s")


def test_a_killed_workers_running_trial_is_failed_by_the_next_worker(postgres):
    """A worker's heartbeats stop when it dies; the next trial asked for fails its stale trial."""

    def storage():
        return open_storage(postgres, heartbeat_interval=1, grace_period=2)

    killed = storage()
    study = optuna.create_study(study_name="killed_worker", storage=killed, direction="maximize")
    trial = study.ask()
    killed._beating.pop(trial._trial_id).set()  # what the worker's death does to its heartbeat
    time.sleep(3)
    other = optuna.load_study(study_name="killed_worker", storage=storage())
    assert other.trials[0].state == optuna.trial.TrialState.RUNNING  # until someone asks
    running = other.ask()
    assert [t.state for t in other.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
    time.sleep(3)  # the live trial keeps beating, so it is not failed
    third = other.ask()
    assert other.trials[running.number].state == optuna.trial.TrialState.RUNNING
    for live in (running, third):  # their heartbeats end with them
        other.tell(live, 1.0)


def test_workers_share_a_study_through_a_journal_file(data_root, tmp_path):
    storage = f"journal://{tmp_path / 'study.journal'}"
    workers = [worker(storage, tmp_path / name, data_root, 2) for name in ("first", "second")]
    try:
        for process in workers:
            finish(process)
    finally:
        for process in workers:
            process.kill()
    study = optuna.load_study(
        study_name=STUDY,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
        ),
    )
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {best_reported(tmp_path / name)["best_value"] for name in ("first", "second")} <= {
        t.value for t in study.trials
    }
