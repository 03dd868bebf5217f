"""``hydra/launcher=ensemble``: a sweep's jobs in one process, those that can
share a vectorised model trained together (``xilsweep.ensemble``).

    python -m xilsweep.run -m hydra/launcher=ensemble experiment=lambda_search

Every job runs through Hydra's ``run_job`` and xilsweep's own task function,
exactly as with the basic launcher (same folder, ``.hydra/``, ``run.log``,
TensorBoard run and ``metrics.json``), each in a thread used as a coroutine:
only one thread runs at a time. A job pauses where ``Trainer.fit`` would start
training and hands over its ``FitRequest``; once a batch of ``max_members``
jobs is prepared, the requests that fit together are trained as one ensemble
and each job resumes with its result, to evaluate and record it. Jobs that
cannot join an ensemble (see ``xilsweep.ensemble.signature``), or where
vectorising does not pay (``vectorise=auto``, the default), train alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)
TRAIN_ALONE = object()  # reply to a job that trains by itself


@dataclass
class EnsembleLauncherConf:
    _target_: str = "hydra_plugins.xilsweep_ensemble_launcher.ensemble_launcher.EnsembleLauncher"
    # Jobs prepared (and kept in memory) at a time, and the most trained as one model.
    max_members: int = 32
    # auto: vectorise where it measured faster (see xilsweep.ensemble.vectorising_pays), train
    # the other jobs one by one in this process; always: wherever the jobs allow it.
    vectorise: str = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="ensemble", node=EnsembleLauncherConf,
                             provider="xilsweep")


class JobThread:
    """One job, run by Hydra's ``run_job`` in its own thread, one turn at a time."""

    def __init__(self, hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction):
        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function
        self._to_job: queue.Queue = queue.Queue(maxsize=1)
        self._to_launcher: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"job {config.hydra.job.num}")
        self.request = None  # the FitRequest the job is paused at
        self.job_return: JobReturn | None = None
        self._logging = self._hydra_cfg = None  # the job's logging handlers and Hydra config, between turns

    def _main(self) -> None:
        from xilsweep.training import fit_runner

        self._to_job.get()
        fit_runner.set(self._fit)  # this thread's context only
        try:
            outcome = ("done", run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                       config=self.config, job_dir_key="hydra.sweep.dir",
                                       job_subdir_key="hydra.sweep.subdir"))
        except BaseException as e:  # noqa: BLE001 - handed to the launcher's thread, which raises it
            outcome = ("raised", e)
        self._to_launcher.put(outcome)

    def _fit(self, *args):
        """Trainer.fit's runner in this job: pause with the request, go on with the reply."""
        from xilsweep.ensemble import FitRequest
        from xilsweep.training import fit_until_early_stopping

        self._to_launcher.put(("paused", FitRequest(*args)))
        reply = self._to_job.get()
        if reply is TRAIN_ALONE:
            return fit_until_early_stopping(*args)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    @contextmanager
    def turn(self) -> Iterator[None]:
        """While the job (or its on_epoch) runs: its own logging handlers
        (its run.log) and Hydra config; the launcher's again afterwards."""
        root, hydra_config = logging.getLogger(), HydraConfig.instance()
        outer = root.handlers[:], hydra_config.cfg
        if self._logging is not None:
            root.handlers, hydra_config.cfg = self._logging[:], self._hydra_cfg
        try:
            yield
        finally:
            self._logging, self._hydra_cfg = root.handlers[:], hydra_config.cfg
            root.handlers, hydra_config.cfg = outer[0], outer[1]

    def resume(self, reply=None) -> None:
        """Let the job run until it pauses at training or ends."""
        with self.turn():
            if not self._thread.is_alive():
                self._thread.start()
            self._to_job.put(reply)
            state, value = self._to_launcher.get()
        if state == "raised":
            raise value
        self.request, self.job_return = (value, None) if state == "paused" else (None, value)


class EnsembleLauncher(Launcher):
    def __init__(self, max_members: int = 32, vectorise: str = "auto") -> None:
        super().__init__()
        if not isinstance(max_members, int) or max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members!r} is not allowed: an integer >= 1")
        if vectorise not in ("auto", "always"):
            raise ValueError(f"hydra.launcher.vectorise={vectorise!r} is not allowed: one of auto, always")
        self.max_members, self.vectorise = max_members, vectorise
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose,
                      execution_whitelist=self.hydra_context.execution_whitelist)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Ensemble launcher: %d jobs in this process, up to %d trained as one model",
                 len(job_overrides), self.max_members)
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id, sweep_config.hydra.job.num = str(idx), idx
            jobs.append(JobThread(self.hydra_context, sweep_config, self.task_function))
        for start in range(0, len(jobs), self.max_members):  # a batch of jobs in memory at a time
            self.run_batch(jobs[start:start + self.max_members])
        return [job.job_return for job in jobs]

    def run_batch(self, jobs: list[JobThread]) -> None:
        from xilsweep.ensemble import ensembles, fit_ensemble

        for job in jobs:
            job.resume()  # prepares the job and writes its folder; pauses at training
        waiting = [job for job in jobs if job.request is not None]
        for group in ensembles([job.request for job in waiting], self.max_members, self.vectorise):
            members = [waiting[i] for i in group]
            if len(members) == 1:
                members[0].resume(TRAIN_ALONE)
                continue
            log.info("training jobs %s as one vectorised model",
                     ", ".join(f"#{m.config.hydra.job.num}" for m in members))
            try:
                results = fit_ensemble([m.request for m in members], around=lambda i: members[i].turn())
            except Exception as e:  # the ensemble itself failed: each job fails with it and records why
                results = [e] * len(members)
            for member, result in zip(members, results):
                member.resume(result)
