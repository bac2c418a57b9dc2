import json
import logging
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.exceptions import MlflowException
from mlflow.types.utils import _infer_schema
from mlflow.utils.rest_utils import get_error_code

from tabular_mlops.cli.commands import parser_for, run_with_config
from tabular_mlops.core.config import load_config
from tabular_mlops.core.data import LabeledTable, prepare
from tabular_mlops.core.names import Tag
from tabular_mlops.core.sections import DataConfig
from tabular_mlops.jobs.entry_points import TRACK
from tabular_mlops.mlflow import datasets, runs
from tabular_mlops.mlflow.datasets import log_dataset, sampled_schema
from tabular_mlops.mlflow.runs import git_tags, project_run, quiet_integer_schema_hint
from tests.conftest import CHURN_CONFIG, CHURN_CSV, churn_frame


def test_resumes_the_run_mlflow_run_opened_and_warns_about_its_experiment(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened = mlflow.MlflowClient().create_run(experiment_id="0")  # as `mlflow run` does
    monkeypatch.setenv("MLFLOW_RUN_ID", opened.info.run_id)
    with caplog.at_level(logging.WARNING), project_run(load_config(CHURN_CONFIG), "x") as run:
        assert run.info.run_id == opened.info.run_id
    assert "experiment 'Default' chosen by `mlflow run`; config names 'churn'" in caplog.text
    finished = mlflow.get_run(opened.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags[Tag.ENTRY_POINT] == "x"


def test_own_run_goes_to_the_config_experiment_and_fails_with_the_reason(
    tracking_uri: str,
) -> None:
    with pytest.raises(RuntimeError), project_run(load_config(CHURN_CONFIG), "x"):
        raise RuntimeError("boom")
    (run,) = mlflow.search_runs(experiment_names=["churn"], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.ERROR] == "RuntimeError('boom')"


def test_no_git_tags_outside_a_repository(tracking_uri: str) -> None:
    # tracking_uri's working directory is a fresh temporary directory, not a repository.
    assert git_tags() == {}


def labeled(frame: pd.DataFrame) -> LabeledTable:
    return prepare(frame, DataConfig(path=CHURN_CSV, target="churn", positive_label="Yes"))


def test_the_dataset_digest_covers_every_row_and_the_column_types() -> None:
    frame = pd.concat([churn_frame()] * 3, ignore_index=True)  # 21,129 rows
    digest = labeled(frame).digest
    assert digest == labeled(frame.copy()).digest and len(digest) == 8
    late = frame.copy()
    late.loc[20_000, "tenure"] += 1  # past the 10,000 rows MLflow's own digest reads
    assert labeled(late).digest != digest
    assert compute_pandas_digest(late) == compute_pandas_digest(frame)  # why we have our own
    retyped = frame.astype({"tenure": "float64"})
    assert labeled(retyped).digest != digest


def test_the_dataset_schema_is_mlflows_read_from_a_sample() -> None:
    frame = pd.concat([churn_frame()] * 2, ignore_index=True)
    frame["late_gap"] = 1.0
    frame.loc[len(frame) - 1, "late_gap"] = np.nan  # missing only past the sample
    schema = sampled_schema(frame)
    with quiet_integer_schema_hint():
        assert schema == _infer_schema(frame)
    spec = {column.name: column for column in schema.inputs}
    assert not spec["late_gap"].required and spec["tenure"].required


def test_the_logged_dataset_has_the_tables_digest_schema_and_size(tracking_uri: str) -> None:
    table = labeled(churn_frame())
    with mlflow.start_run() as run:
        assert log_dataset(table) == table.digest
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == table.digest
    assert json.loads(logged.dataset.profile)["num_rows"] == len(churn_frame())
    with quiet_integer_schema_hint():
        expected = _infer_schema(table.raw).to_dict()
    assert json.loads(logged.dataset.schema)["mlflow_colspec"] == expected
    assert mlflow.get_run(run.info.run_id).data.tags[Tag.DATASET_DIGEST] == table.digest


# What the server answers when two processes insert the same new row at once (PostgreSQL).
PG_RACE = (
    "BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique "
    'constraint "dataset_pk"'
)


def test_a_dataset_another_run_inserted_meanwhile_is_logged_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    race = MlflowException(PG_RACE)
    calls = []

    def log_input(dataset: object, context: str) -> None:
        calls.append(context)
        if len(calls) == 1:
            raise race

    monkeypatch.setattr(mlflow, "log_input", log_input)
    datasets.log_input(SimpleNamespace(name="table.csv"), "training")
    assert calls == ["training", "training"]


def test_any_other_error_logging_a_dataset_is_raised_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def log_input(dataset: object, context: str) -> None:
        calls.append(context)
        raise MlflowException("PERMISSION_DENIED: Permission denied")

    monkeypatch.setattr(mlflow, "log_input", log_input)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        datasets.log_input(SimpleNamespace(name="table.csv"), "training")
    assert calls == ["training"]


def test_experiment_tags_another_process_set_meanwhile_are_set_again(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(CHURN_CONFIG)
    experiment_id = mlflow.create_experiment("described")
    client = mlflow.MlflowClient()
    set_tag, raised = client.set_experiment_tag, []

    def racing(experiment: str, key: str, value: str) -> None:
        if not raised:  # the first tag, as a second process inserting it at the same time
            raised.append(key)
            set_tag(experiment, key, value)
            raise MlflowException(PG_RACE.replace("dataset_pk", "experiment_tag_pk"))
        set_tag(experiment, key, value)

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", lambda self, *a: racing(*a))
    runs.describe_experiment(experiment_id, config.tracking)
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.note.content"] == config.tracking.experiment_description
    assert {k: tags[k] for k in config.tracking.experiment_tags} == config.tracking.experiment_tags


@pytest.mark.parametrize("status", [401, 403])
def test_a_request_the_server_refuses_is_one_line_naming_the_user_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    endpoint = "/api/2.0/mlflow/registered-models/get"

    def step(config: object) -> None:  # as MLflow's REST client raises it
        raise MlflowException(
            f"API request to endpoint {endpoint} failed with error code {status} != 200. "
            "Response body: 'Permission denied'",
            error_code=get_error_code(status),
        )

    args = parser_for(TRACK).parse_args(["--config", str(CHURN_CONFIG)])
    with caplog.at_level(logging.ERROR):
        assert run_with_config(args, TRACK, step) == 1
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"the tracking server refused a request ({endpoint}) to user alice")
    assert line.endswith("(scripts/stack.sh user NAME trainer)")


def test_other_mlflow_errors_are_not_taken_for_a_refusal() -> None:
    def step(config: object) -> None:
        raise MlflowException("boom", error_code=get_error_code(500))

    args = parser_for(TRACK).parse_args(["--config", str(CHURN_CONFIG)])
    with pytest.raises(MlflowException, match="boom"):
        run_with_config(args, TRACK, step)
