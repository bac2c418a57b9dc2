"""First use of a new sqlite store from many processes at once (sqlite_store_lock)."""

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

import sqlite_store_lock as stores
from tests.conftest import users_environment

PROCESSES = 4

# What `mlflow run --experiment-name churn` does first, then what a step does: open the
# tracking and registry stores, get or create the experiment, log a run, register a model.
_FIRST_USE = """
import sys, time
from pathlib import Path
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
import mlflow
client = mlflow.MlflowClient(sys.argv[1])
found = client.get_experiment_by_name("churn")
experiment_id = found.experiment_id if found else client.create_experiment("churn")
run = client.create_run(experiment_id)
client.log_param(run.info.run_id, "worker", sys.argv[3])
client.set_terminated(run.info.run_id)
from mlflow.exceptions import MlflowException
try:  # as mlflow.register_model does
    client.create_registered_model("first-use")
except MlflowException as error:
    assert error.error_code == "RESOURCE_ALREADY_EXISTS", error
version = client.create_model_version("first-use", sys.argv[4], run_id=run.info.run_id)
print(experiment_id, version.version)
"""


@pytest.mark.system  # processes of their own
def test_processes_started_together_on_a_new_store_all_succeed(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_USE, store, str(go), str(worker), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=users_environment(),
        )
        for worker in range(PROCESSES)
    ]
    time.sleep(1)  # every interpreter started, waiting for the same moment
    go.touch()
    results = [worker.communicate(timeout=120) for worker in workers]
    failures = [
        err[-2000:] for worker, (_, err) in zip(workers, results, strict=True) if worker.returncode
    ]
    assert failures == []
    answers = [out.split() for out, _ in results]
    assert {experiment for experiment, _ in answers} == {"1"}  # one experiment, joined by all
    assert sorted(int(version) for _, version in answers) == list(range(1, PROCESSES + 1))
    client = mlflow.MlflowClient(store)
    assert len(client.search_runs(["1"])) == PROCESSES


def test_an_experiment_created_long_ago_is_still_a_duplicate(tmp_path: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("churn")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(stores, "RACING_CREATOR_SECONDS", -1)
        with pytest.raises(mlflow.exceptions.MlflowException, match="already exists"):
            client.create_experiment("churn")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////tmp/x/mlflow.db", Path("/tmp/x/mlflow.db")),
        ("sqlite:///sub/m.db?timeout=5", Path("sub/m.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
    ],
)
def test_the_database_file_of_a_sqlite_uri(uri: str, path: Path | None) -> None:
    assert stores.sqlite_path(uri) == path
