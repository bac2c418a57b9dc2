"""Canaries: each workaround of an MLflow or library behaviour has one here, which fails once
that behaviour changes, so that someone removes the workaround. Each workaround's own
docstring or comment names the upstream issue or function and the version checked:

- sqlite stores opened under a file lock (sqlite_store_lock): the SQL-store canaries;
- a tag or dataset written again when another process inserted it meanwhile
  (mlflow.runs.inserted_meanwhile): test_mlflows_sql_store_still_looks_up_then_inserts;
- KILLED put back after `mlflow run` (runtime.guardian):
  test_mlflow_run_still_overwrites_killed_with_failed;
- artifacts through the server, not presigned URLs (mlflow.runs.configure_tracking):
  test_mlflow_still_presigns_downloads_by_default;
- the fake `dbutils` MLflow can leave in sys.modules removed (tests/conftest.py):
  test_mlflow_still_fakes_dbutils_while_it_loads_a_model_from_code;
- the team's tracking server under gunicorn (team_stack.settings.GUNICORN_OPTIONS), and
  the serving proxy's connection per request (deploy/serving/nginx.conf.template):
  test_uvicorn_workers_still_delay_kept_alive_answers;
- a shared study's search resumed when Optuna hides its storage's failure
  (jobs.studies._storage_failed):
  test_optuna_still_hides_a_storage_failure_behind_unboundlocalerror;
- a shared study's trials known by their creation, not by the objective
  (jobs.studies.SharedStorage): test_optuna_still_asks_for_a_trial_it_created_in_two_steps;
- custom_model's checks end by an error, not an interrupt, when their step ends
  (jobs.checks._CHECK_PRELUDE):
  test_mlflow_still_keeps_what_an_interrupt_left_half_built;
- figures saved with pyplot drawn once, not again after saving (core.agg_once):
  test_pyplot_still_draws_a_figure_again_after_saving_it;
- the models check their own input types (tabular_custom_model.inputs): the canary in
  tests/test_inputs.py.
"""

import inspect
import socket
import statistics
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.environment_variables import MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD
from mlflow.store.artifact.mlflow_artifacts_repo import (
    SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED,
    MlflowArtifactsRepository,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tabular_mlops.core.plots import BACKEND, pyplot
from test_support.servers import LOOPBACK, background_server, free_port

pytestmark = pytest.mark.unit
CHECKED_ON = {"mlflow": "3.17.2"}


def test_the_workarounds_were_checked_on_this_mlflow() -> None:
    """A new MLflow: run these canaries, re-check each workaround, then update CHECKED_ON."""
    assert mlflow.__version__ == CHECKED_ON["mlflow"]


def test_mlflows_sqlite_tracking_store_still_migrates_a_new_file_without_a_lock() -> None:
    # sqlite_store_lock: mlflow/store/tracking/sqlalchemy_store.py's SqlAlchemyStore.__init__
    # runs `_initialize_tables` bare (several processes on a new file race: mlflow#19943),
    # where MLflow's own job and workspace stores already use `_safe_initialize_tables`.
    source = inspect.getsource(SqlAlchemyStore.__init__)
    assert "_initialize_tables(self.engine)" in source
    assert "_safe_initialize_tables" not in source


def test_mlflows_sql_store_still_looks_up_then_inserts() -> None:
    # runs.inserted_meanwhile: an experiment tag is `session.merge`d (a SELECT, then an
    # INSERT), and a dataset looked up before it is added: two processes at once both insert
    # and one fails on the unique key (mlflow#8442, seen on PostgreSQL).
    assert "session.merge(" in inspect.getsource(SqlAlchemyStore.set_experiment_tag)
    assert "SqlDataset(" in inspect.getsource(SqlAlchemyStore._log_inputs_impl)


def test_mlflow_run_still_overwrites_killed_with_failed(tracking_uri: str) -> None:
    # runtime.guardian: mlflow.projects._maybe_set_run_terminated passes a status name to
    # RunStatus.is_terminated, which compares it with numbers.
    from mlflow.projects import _maybe_set_run_terminated

    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("canary"))
    client.set_terminated(run.info.run_id, "KILLED")
    _maybe_set_run_terminated(client.get_run(run.info.run_id), "FAILED")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_mlflow_still_presigns_downloads_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # runs.configure_tracking sets MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false unless the
    # user set it: without it, a client downloads artifacts by presigned URLs straight from
    # the object store whenever the server says it can (MlflowArtifactsRepository).
    monkeypatch.delenv(MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD.name, raising=False)
    repository = object.__new__(MlflowArtifactsRepository)
    offered = {SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED: True}
    monkeypatch.setattr(repository, "_fetch_server_capabilities", lambda: offered, raising=False)
    assert repository._is_multipart_download_enabled()


def test_mlflow_still_fakes_dbutils_while_it_loads_a_model_from_code(
    tmp_path: Path, tracking_uri: str
) -> None:
    # tests/conftest.py's no_fake_dbutils_left: mlflow.models.utils._mock_dbutils puts a
    # MockDbutils in sys.modules while a model's code runs, and is not thread-safe.
    code = tmp_path / "model_code.py"
    code.write_text(
        "import sys, mlflow\n"
        "SEEN = type(sys.modules.get('dbutils')).__name__\n"
        "class Model(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return [SEEN] * len(model_input)\n"
        "mlflow.models.set_model(Model())\n"
    )
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=str(code), pip_requirements=[])
    assert mlflow.pyfunc.load_model(info.model_uri).predict([1]) == ["MockDbutils"]
    assert "dbutils" not in sys.modules


APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def kept_alive_milliseconds(url_port: int, requests: int = 15) -> float:
    """The median time of requests on one kept-alive connection."""
    request = f"GET / HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode()
    times = []
    with socket.create_connection((LOOPBACK, url_port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            started = time.perf_counter()
            connection.sendall(request)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += connection.recv(4096)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


@pytest.mark.timeout(120)
def test_uvicorn_workers_still_delay_kept_alive_answers(tmp_path: Path) -> None:
    # team_stack.settings.GUNICORN_OPTIONS: with --workers N > 1 uvicorn's sockets miss
    # TCP_NODELAY and each kept-alive answer waits for a delayed ACK, ~40 ms
    # (Kludex/uvicorn issue 3149); one worker does not.
    (tmp_path / "canary_app.py").write_text(APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "canary_app:app", "--host", LOOPBACK]
    command += ["--port", str(port), "--workers", "2", "--app-dir", str(tmp_path)]
    with background_server(command, f"http://{LOOPBACK}:{port}/", tmp_path / "uvicorn.log", 60):
        assert kept_alive_milliseconds(port) > 25


def test_optuna_still_hides_a_storage_failure_behind_unboundlocalerror() -> None:
    """Optuna 5.0.0: when telling a trial's result fails and reading the trial back fails
    too (the database went away mid-trial), `_run_trial` raises UnboundLocalError for
    `updated_state`, the storage's error as its context. Once this fails (the storage's own
    error escapes), jobs.studies._storage_failed can go."""
    import optuna

    class Failing(optuna.storages.InMemoryStorage):
        def set_trial_state_values(self, *args: object, **kwargs: object) -> bool:
            raise optuna.exceptions.StorageInternalError("connection lost")

        def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
            if self.failing:
                raise optuna.exceptions.StorageInternalError("connection lost")
            return super().get_trial(trial_id)

    storage = Failing()
    storage.failing = False
    study = optuna.create_study(storage=storage)

    def objective(trial: optuna.Trial) -> float:
        storage.failing = True
        return 1.0

    assert optuna.__version__ == "5.0.0"
    with pytest.raises(UnboundLocalError, match="updated_state") as raised:
        study.optimize(objective, n_trials=1)
    assert isinstance(raised.value.__context__, optuna.exceptions.StorageInternalError)


def test_optuna_still_asks_for_a_trial_it_created_in_two_steps(tmp_path: Path) -> None:
    """Optuna 5.0.0: `Study.ask` creates the trial through the cached storage's call of
    `RDBStorage._create_new_trial`, then reads it back; when that read fails the trial stays
    RUNNING and `ask` raises, the trial unseen by anyone. Once the trial is no longer left
    RUNNING (or `_create_new_trial` is no longer what creates it), jobs.studies.SharedStorage
    can go back to a plain RDBStorage."""
    import optuna

    from tabular_mlops.jobs import studies

    class LosingReads(studies.SharedStorage):
        def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
            raise optuna.exceptions.StorageInternalError("connection lost")

    created: set[int] = set()
    study = optuna.create_study(storage=LosingReads(f"sqlite:///{tmp_path}/o.db", created))
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.ask()
    assert created == {0}
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.RUNNING]


def test_mlflow_still_keeps_what_an_interrupt_left_half_built(tmp_path: Path) -> None:
    """MLflow removes an environment it was building on an error only: interrupted, it
    keeps the half-built one, which later checks would reuse as it is."""
    from mlflow.utils.file_utils import remove_on_error

    for stop, kept in ((RuntimeError, False), (KeyboardInterrupt, True)):
        building = tmp_path / stop.__name__
        with pytest.raises(stop), remove_on_error(building):
            building.mkdir()
            raise stop()
        assert building.exists() == kept


def _draws_per_save(backend: str, path: Path) -> int:
    """How many times pyplot.savefig, as MLflow's evaluation calls it, draws the figure."""
    import matplotlib

    matplotlib.use(backend)
    from matplotlib import pyplot

    draws: list[object] = []
    figure = pyplot.figure()
    listener = figure.canvas.mpl_connect("draw_event", draws.append)
    pyplot.plot([0, 0.5, 1], [0, 0.8, 1])
    pyplot.savefig(path)
    figure.canvas.mpl_disconnect(listener)
    pyplot.close(figure)
    return len(draws)


def test_pyplot_still_draws_a_figure_again_after_saving_it(tmp_path: Path) -> None:
    """On stock Agg (matplotlib 3.11.2) pyplot.savefig draws twice: the save, then
    `canvas.draw_idle()` (matplotlib PR #5800, not merged). Once this is 1, remove
    core.agg_once and point core.plots.BACKEND at "Agg"."""
    try:
        assert _draws_per_save("Agg", tmp_path / "stock.png") == 2
        assert _draws_per_save(BACKEND, tmp_path / "once.png") == 1
    finally:
        pyplot()  # this process's backend again: the project's
    assert (tmp_path / "stock.png").read_bytes() == (tmp_path / "once.png").read_bytes()
