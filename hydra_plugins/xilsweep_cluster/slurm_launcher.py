"""hydra-submitit-launcher's SLURM launcher, also quiet on clusters without accounting.

submitit polls job states with sacct; where SLURM accounting is disabled, sacct
fails and prints an error at every poll. There this launcher asks squeue
instead (job states are only needed for jobs that die without a result file).
"""

from __future__ import annotations

import subprocess
from typing import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


def accounting_enabled() -> bool:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return "accounting_storage/none" not in config


def squeue_watcher():
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """Job states from squeue: this user's jobs, running or recently ended."""

        def _make_command(self) -> list[str] | None:
            if not self._registered - self._finished:
                return None
            return ["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info("JobID|State|NodeList\n" + text)

    return SqueueWatcher(delay_s=600)


class XilSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

        if type(SlurmJob.watcher) is SlurmInfoWatcher and not accounting_enabled():
            SlurmJob.watcher = squeue_watcher()  # shared by all SLURM jobs of this process, as submitit's is
        return super().launch(job_overrides, initial_job_idx)
