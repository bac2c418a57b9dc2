"""Optuna studies for `track`: in memory, or shared by several processes through a
database, opened and searched across that database's failures (a restart, a worker that
starts while it is down), with the workarounds Optuna 5.0.0 needs for them.
"""

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import mlflow
import optuna
import sqlalchemy.exc

from tabular_mlops.core.concurrency import again_if_created_meanwhile
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import Status, Tag
from tabular_mlops.core.redaction import redact
from tabular_mlops.core.search import COMPLETE, PRUNED
from tabular_mlops.core.sections import TuningConfig

logger = logging.getLogger(__name__)

# Seconds to wait before opening a shared study again, or resuming its search, when its
# database failed (a restart takes seconds, more on a busy machine); once each, then the
# failure stands.
STORAGE_PAUSES = (2, 5, 10, 20)

# The user attribute of a trial that names its MLflow run.
RUN_ID_ATTR = "mlflow_run_id"


def open_study(
    name: str,
    storage: str | None,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    created: set[int],
) -> optuna.Study:
    """The study, in memory or in the shared `storage`, which adds to `created` the number
    of each trial this process creates in it. A database that cannot be reached is waited
    for (STORAGE_PAUSES); one that refuses us (`_unreachable`) is one line for the user."""

    # Processes that start together on a fresh database race to create Optuna's tables
    # (a duplicate-table or duplicate-type error for the loser); once the tables exist,
    # `load_if_exists` makes the study itself safe to create from many processes.
    def create(**kwargs: Any) -> optuna.Study:
        shared = storage and SharedStorage(storage, created)
        return optuna.create_study(storage=shared or None, **kwargs)

    create_it = partial(
        create,
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    pauses = iter(STORAGE_PAUSES)
    while True:
        try:
            return again_if_created_meanwhile(
                create_it,
                f"Optuna's storage of {name}",
                raced=lambda error: isinstance(
                    error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError
                ),
                pause_seconds=(0.5, 1.5),
            )
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as error:
            reason = redact(str(error.__cause__ or error).splitlines()[0])
            pause = next(pauses, None)
            if pause is None or not _unreachable(error):
                where = redact(str(storage))
                raise UserInputError(f"Optuna's storage {where}: {reason}") from error
            # A worker started while the database restarts waits as the search would.
            logger.warning("Optuna's storage cannot be reached (%s): again in %d s", reason, pause)
            time.sleep(pause)


class SharedStorage(optuna.storages.RDBStorage):
    """Optuna's database storage, adding to `created` the number of each trial this process
    creates. Optuna 5.0.0 creates a trial, then reads it back (`Study.ask` ->
    `Trial.__init__` -> `storage.get_trial`): a database that fails in between leaves a
    RUNNING trial the objective never saw, known only by this record (`_fail_unfinished`).
    Optuna's `_CachedStorage` calls `_create_new_trial`, not `create_new_trial`. Canary:
    tests/test_workarounds.py::test_optuna_still_asks_for_a_trial_it_created_in_two_steps."""

    def __init__(self, url: str, created: set[int]) -> None:
        # Connections checked before use: one a database restart closed is replaced.
        super().__init__(url, engine_kwargs={"pool_pre_ping": True})
        self.created = created

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        self.created.add(trial.number)
        return trial


def _unreachable(error: BaseException) -> bool:
    """`error` says PostgreSQL could not be reached, or is shutting down or starting (a
    restart: worth waiting for), rather than that it refused us (a password, a missing
    database: worth one line now). psycopg's errors carry the server's SQLSTATE, None when
    no server answered; other drivers' errors are not waited for."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            sqlstate = getattr(seen.orig, "sqlstate", "")
            return sqlstate is None or sqlstate[:2] in ("08", "57")
        seen = seen.__cause__ or seen.__context__
    return False


def _storage_failed(error: BaseException) -> bool:
    """`error` is, or was raised while handling, a failure of Optuna's storage. Optuna 5.0.0
    (optuna/study/optimize.py, `_run_trial`) raises UnboundLocalError for
    `updated_state` when a trial's result and then the trial itself both fail to reach the
    database; the storage's error is its context. Canary:
    tests/test_workarounds.py::test_optuna_still_hides_a_storage_failure_behind_unboundlocalerror."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, optuna.exceptions.StorageInternalError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _fail_unfinished(study: optuna.Study, created: set[int]) -> None:
    """The trials this process `created` that the storage's failure left RUNNING, ended
    FAILED (another process sharing the study would otherwise count them as running for
    good), and their MLflow runs with them (a run may have finished before its result was
    lost; a trial caught while it was being created has none)."""
    client = mlflow.MlflowClient()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in created:
            continue
        # Not suppressed: a failed tell is retried with the search (optimize), or the
        # trial would stay RUNNING for good.
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if run_id := trial.user_attrs.get(RUN_ID_ATTR):
            client.set_tag(
                run_id, Tag.ERROR, "Optuna's storage failed before the trial's result was recorded"
            )
            client.set_terminated(run_id, Status.FAILED)


def _finished(study: optuna.Study, created: set[int]) -> int:
    """The trials this process `created` that the database holds finished: a result whose
    answer the failure lost (committed, then the connection dropped) counts, as it should."""
    states = (COMPLETE, PRUNED)
    return sum(trial.number in created for trial in study.get_trials(False, states=states))


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    tuning: TuningConfig,
    created: set[int],
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """`study.optimize` until `n_trials` trials finished here (or the timeout), resumed when
    a shared study's database fails meanwhile (a restart: its connections are checked
    before use, `pool_pre_ping`), at most STORAGE_PAUSES times. A trial this process
    `created` that the failure caught ends FAILED and another replaces it; `on_trial` is
    called as each trial ends."""
    deadline = None if tuning.timeout_seconds is None else time.monotonic() + tuning.timeout_seconds
    remaining: int | None = tuning.n_trials
    for pause in (*STORAGE_PAUSES, None):
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if remaining is None:  # after a failure; reaches the database: it may still be down
                _fail_unfinished(study, created)
                remaining = tuning.n_trials - _finished(study, created)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout,
                n_jobs=tuning.n_jobs,
                callbacks=[on_trial] if on_trial else None,
            )
            return
        except (optuna.exceptions.StorageInternalError, UnboundLocalError) as error:
            if pause is None or not tuning.storage or not _storage_failed(error):
                raise
            logger.warning(
                "Optuna's storage failed (%s): the search goes on in %d s",
                redact(str(error).splitlines()[0]),
                pause,
            )
            time.sleep(pause)
            remaining = None  # counted again from the database once it answers
