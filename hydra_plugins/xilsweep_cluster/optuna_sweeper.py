"""Hydra's Optuna sweeper for one study grown by many sweeper processes at once
(``hydra/sweeper=xilsweep_optuna``, used by ``hparams_search=lambda_optuna``).

``hydra.sweeper.storage`` takes, besides a database URL, ``journal://PATH``:
Optuna's journal file, for clusters with a shared filesystem but no database
server. With a database, the running trials send heartbeats: Optuna sends them
only inside ``study.optimize``, while Hydra's sweeper asks and tells, so the
storage here beats for the trials it creates, and a trial whose worker was
killed is marked failed by the next worker that asks for a trial. Optuna's
tables are created under a lock (``schema_lock``: PostgreSQL's advisory lock, a
lock file beside an SQLite file), so workers started together on a new
database do not race to create them. The sweeper's log shows the storage as
its URL, the password hidden (``shown_url``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)
JOURNAL = "journal://"
SCHEMA_LOCK = 0x78696C  # any number; the one advisory lock xilsweep takes on the database


@dataclass
class SharedOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.xilsweep_cluster.optuna_sweeper.SharedOptunaSweeper"
    heartbeat_interval: int = 60  # seconds between heartbeats of a running trial (database storages)
    grace_period: int | None = None  # a running trial without heartbeat this long is failed; null: 2 intervals


ConfigStore.instance().store(
    group="hydra/sweeper", name="xilsweep_optuna", node=SharedOptunaSweeperConf, provider="xilsweep"
)


def heartbeat_storage(url: str, heartbeat_interval: int, grace_period: int | None):
    # Optuna and SQLAlchemy imported here: Hydra imports every plugin module at each start.
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState
    from sqlalchemy.exc import SQLAlchemyError

    class HeartbeatStorage(RDBStorage):
        """An RDBStorage whose newly asked trials beat until they are finished."""

        def __str__(self) -> str:  # Hydra's sweeper logs "Storage: <this>"
            return shown_url(url)

        def __init__(self):
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", ExperimentalWarning)
                super().__init__(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
            self._beating: dict[int, threading.Event] = {}

        def _create_new_trial(self, study_id: int, template_trial=None):
            # What create_new_trial and Optuna's cache in front of every RDBStorage both call.
            self._fail_stale_trials(study_id)
            trial = super()._create_new_trial(study_id, template_trial)
            if template_trial is None:  # asked for, so running now
                stop = self._beating[trial._trial_id] = threading.Event()
                threading.Thread(target=self._beat, args=(trial._trial_id, stop), daemon=True).start()
            return trial

        def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
            try:
                return super().set_trial_state_values(trial_id, state, values)
            finally:
                if state.is_finished() and trial_id in self._beating:
                    self._beating.pop(trial_id).set()

        def _beat(self, trial_id: int, stop: threading.Event) -> None:
            while True:
                try:
                    self.record_heartbeat(trial_id)
                except SQLAlchemyError as e:  # the database out of reach for a while: try again
                    log.warning("heartbeat of trial %d not recorded: %s", trial_id, e)
                if stop.wait(heartbeat_interval):
                    return

        def _fail_stale_trials(self, study_id: int) -> None:
            for trial_id in self._get_stale_trial_ids(study_id):
                try:
                    super().set_trial_state_values(trial_id, TrialState.FAIL)
                except UpdateFinishedTrialError:
                    pass  # another worker failed it first

    # Optuna warns at every ask that heartbeats belong to study.optimize; here the storage beats itself.
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
    with schema_lock(url):
        return HeartbeatStorage()


def shown_url(url: str) -> str:
    """A database URL as the log shows it: ``postgresql://user:***@host/db``."""
    import sqlalchemy

    return sqlalchemy.make_url(url).render_as_string(hide_password=True)


def journal_storage(path: str):
    """Optuna's journal file at ``path``, shown in the log as ``journal://PATH``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    class SharedJournal(JournalStorage):
        def __str__(self) -> str:  # Hydra's sweeper logs "Storage: <this>"
            return f"{JOURNAL}{path}"

    return SharedJournal(JournalFileBackend(path))


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Held while Optuna creates its tables: one process creates them, the others wait, then find
    them. PostgreSQL: an advisory lock; an SQLite file: a lock file beside it (``<file>.lock``);
    other databases: none."""
    import sqlalchemy

    parsed = sqlalchemy.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from filelock import FileLock

        with FileLock(f"{parsed.database}.lock"):  # its folder too is created if missing
            yield
    elif backend == "postgresql":
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:  # the lock lasts until engine.dispose() closes the connection
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
                yield
        finally:
            engine.dispose()
    else:
        yield


def open_storage(storage: Any, heartbeat_interval: int, grace_period: int | None) -> Any:
    """The Optuna storage for a ``hydra.sweeper.storage`` value (None: in memory)."""
    if not isinstance(storage, str):
        return storage
    if storage.startswith(JOURNAL):
        return journal_storage(storage[len(JOURNAL) :])
    return heartbeat_storage(storage, heartbeat_interval, grace_period)


class SharedOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper with the storage opened as ``open_storage`` says."""

    def __init__(self, storage: Any, heartbeat_interval: int, grace_period: int | None, **kwargs: Any) -> None:
        super().__init__(storage=open_storage(storage, heartbeat_interval, grace_period), **kwargs)
