"""MLflow's sqlite stores, safe to use for the first time from several processes at once.

MLflow creates and migrates a new sqlite store when a process first opens it; several
processes opening a new file together run the migration together, and all but one fail
(`ALTER TABLE metrics ADD COLUMN step`: duplicate column). Two `mlflow run
--experiment-name churn` on a store without that experiment both create it, and one fails.

This package is registered (pyproject.toml's entry points) as MLflow's store builder for
`sqlite` URIs, in every process of an environment where the project is installed (`mlflow
run` itself included): MLflow's own stores, opened under an exclusive file lock beside the
database (`<file>.lock`), and an experiment that a racing process created a moment ago is
joined instead of being an error. Other URIs (a server, PostgreSQL) are untouched.

It is a package of its own, apart from `tabular_mlops`, because MLflow imports it in
every process, serving a model included: it imports nothing of the project.

Workaround of MLflow's `SqlAlchemyStore.__init__` (checked on 3.17.2), which runs
`_initialize_tables` without a lock (mlflow/mlflow#19943; MLflow's own job and workspace
stores already call `_safe_initialize_tables`), and of `mlflow run --experiment-name`
looking an experiment up, then creating it (mlflow/mlflow#4123). Canary:
tests/test_workarounds.py::test_mlflows_sqlite_tracking_store_still_migrates_a_new_file_without_a_lock.
"""

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# An experiment of the same name created this recently was made by a racing process
# (`mlflow run --experiment-name` looks it up, then creates it): joined, not an error.
RACING_CREATOR_SECONDS = 60

# MLflow loads these builders while `mlflow.tracking` is still importing: MLflow's own
# modules are imported when a store is built, not with this module.


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.tracking._tracking_service.utils import (
        _SERVER_ARTIFACT_ROOT_ENV_VAR,
        _get_sqlalchemy_store,
    )

    with store_lock(store_uri):
        if MLFLOW_ENABLE_WORKSPACES.get():
            return _get_sqlalchemy_store(store_uri, artifact_uri)
        # As MLflow's own builder chooses the default artifact root.
        root = os.environ.get(_SERVER_ARTIFACT_ROOT_ENV_VAR, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        return _joining_store_class()(store_uri, artifact_uri or root)


def registry_store(store_uri: str) -> Any:
    from mlflow.tracking._model_registry.utils import _get_sqlalchemy_store

    # Registering a model already tolerates a racing creator (mlflow.register_model).
    with store_lock(store_uri):
        return _get_sqlalchemy_store(store_uri)


@contextmanager
def store_lock(store_uri: str) -> Iterator[None]:
    """An exclusive lock on a sqlite store's file, across processes and threads, re-entrant
    within a thread (opening a store inside a held lock must not wait for itself): held
    while a store is opened (created and migrated if new), and while registry aliases move
    (tabular_mlops.mlflow.registry.move_aliases). A no-op for an in-memory database."""
    database = sqlite_path(store_uri)
    if database is None:  # in memory: no other process can see it
        yield
        return
    key = database.resolve()
    with _guard:
        held = _held.setdefault(key, _Held(threading.RLock()))
    with held.thread_lock:  # other threads of this process wait here
        if held.depth == 0:
            database.parent.mkdir(parents=True, exist_ok=True)
            held.descriptor = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(held.descriptor, fcntl.LOCK_EX)  # other processes wait here
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                os.close(held.descriptor)  # releases the file lock


@dataclass
class _Held:
    thread_lock: threading.RLock
    depth: int = 0
    descriptor: int = -1


_guard = threading.Lock()
_held: dict[Path, _Held] = {}


def sqlite_path(store_uri: str) -> Path | None:
    """The database file of `sqlite:///relative.db` or `sqlite:////absolute.db`; None for
    an in-memory database."""
    path = store_uri.partition("://")[2].removeprefix("/").split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


@cache
def _joining_store_class() -> type:
    """MLflow's sqlite tracking store, joining an experiment a racing process just created."""
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    class JoiningSqlAlchemyStore(SqlAlchemyStore):
        def create_experiment(
            self, name: str, artifact_location: str | None = None, tags: Any = None
        ) -> str:
            try:
                return super().create_experiment(name, artifact_location, tags)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                existing = self.get_experiment_by_name(name)
                if existing is None or existing.lifecycle_stage != LifecycleStage.ACTIVE:
                    raise
                if time.time() - existing.creation_time / 1000 > RACING_CREATOR_SECONDS:
                    raise
                return existing.experiment_id

    return JoiningSqlAlchemyStore
