"""End to end: `mlflow run . -e custom_model` (with its isolated uv check), then the
registered model behind `mlflow models serve`, with `--env-manager local` and `uv`."""

import io
import json
import signal
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server import predictions_to_json

from tabular_mlops.core import data
from tabular_mlops.core.names import Tag
from test_support.stopping import ISOLATED_CHECK, interrupt
from tests.conftest import (
    FAST_CONFIG,
    SERVICE_URI,
    copy_of_trained_store,
    mlflow_run,
    mlflow_run_environment,
    post,
    served,
    session_env_root,
    shipped_config,
    use_store,
)

pytestmark = pytest.mark.system
MAX_ROWS = 50
JSON = "application/json"


@dataclass(frozen=True)
class Service:
    store: str
    run: mlflow.entities.Run


@pytest.fixture(scope="module")
def service(
    project: Path, trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Service:
    # The session's trained pipeline (`mlflow run -e train_basic` has its own tests), its
    # latest-model wrapped again: version 2 of the service model, with a small row limit.
    store = copy_of_trained_store(trained_store, tmp_path_factory.mktemp("service"))
    wrapped = mlflow_run(project, store, "custom_model", FAST_CONFIG, f"max_rows={MAX_ROWS}")
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    use_store(store)
    (run,) = mlflow.search_runs(
        experiment_names=["churn"],
        filter_string="tags.`mlflow.project.entryPoint` = 'custom_model'",
        output_format="list",
    )
    return Service(store, run)


@pytest.fixture(scope="module")
def local_url(
    service: Service, project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The registered custom model behind `mlflow models serve --env-manager local`."""
    logs = tmp_path_factory.mktemp("serve-local")
    with served(service.store, "local", session_env_root(project), logs) as url:
        yield url


def request_rows() -> pd.DataFrame:
    """Test-split rows, plus one with missing values (as JSON nulls and empty CSV cells)."""
    config = shipped_config()
    rows = data.split(data.load_table(config.data), config.split).X_test.head(4)
    gaps = rows.head(1).assign(total_charges=np.nan, internet_service=None)
    return pd.concat([rows, gaps], ignore_index=True)


def in_process_answer(rows: pd.DataFrame, params: dict[str, Any] | None) -> dict[str, Any]:
    model = mlflow.pyfunc.load_model(SERVICE_URI)
    output = io.StringIO()
    predictions_to_json(model.predict(rows, params=params), output)
    return json.loads(output.getvalue())


def test_custom_model_is_checked_everywhere_then_aliased(service: Service) -> None:
    tags = service.run.data.tags
    assert service.run.info.status == "FINISHED"
    assert tags[Tag.CHECKS] == "in_process, fresh_process, isolated_env_uv"
    version = mlflow.MlflowClient().get_model_version_by_alias("churn-service", "champion")
    assert version.run_id == service.run.info.run_id
    assert tags[Tag.WHEEL].startswith("tabular_custom_model-0.1.0+")


@pytest.mark.parametrize("env_manager", ["local", "uv"])
def test_served_answers_match_in_process(
    service: Service,
    env_manager: str,
    project: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    rows = request_rows()
    split = json.loads(rows.to_json(orient="split", index=False))
    records = json.loads(rows.to_json(orient="records"))
    params = {"explain": True, "top_k": 2, "threshold": 0.35}
    payloads = {
        "dataframe_split": (json.dumps({"dataframe_split": split}), JSON, None),
        "dataframe_records": (json.dumps({"dataframe_records": records}), JSON, None),
        "csv": (rows.to_csv(index=False), "text/csv", None),
        "params": (json.dumps({"dataframe_split": split, "params": params}), JSON, params),
    }
    server = (
        nullcontext(request.getfixturevalue("local_url"))
        if env_manager == "local"
        # The environment custom_model's isolated check built: one per session.
        else served(service.store, env_manager, session_env_root(project), tmp_path)
    )
    with server as url:
        for kind, (body, content_type, request_params) in payloads.items():
            status, answer = post(url, body.encode(), content_type)
            assert status == 200, (kind, answer)
            assert answer == in_process_answer(rows, request_params), kind

    explained = in_process_answer(rows, params)["predictions"]
    assert [len(reasons) for reasons in explained["reasons"]] == [2] * len(rows)
    assert set(explained["model_version"]) == {"2"}


def split_body(rows: pd.DataFrame, **more: Any) -> bytes:
    split = json.loads(rows.to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split, **more}).encode()


def bad_requests() -> dict[str, tuple[bytes, str, int, str]]:
    """Each: body, content type, expected status, what the message must say."""
    rows = request_rows().head(2)
    text_in_number = rows.astype({"tenure": object}).assign(tenure=["abc", 5])
    return {
        "missing column": (
            split_body(rows.drop(columns="tenure")), JSON, 400, "Model is missing inputs ['tenure']"
        ),
        "text in a numeric column": (
            split_body(text_in_number), JSON, 400,
            "Incompatible input types for column tenure: 'abc' is not a number.",
        ),
        "empty body": (b"", JSON, 400, "Ensure that input is a valid JSON formatted string"),
        "malformed JSON": (
            b'{"dataframe_split": {"columns": [', JSON, 400, "valid JSON formatted string"
        ),
        "{}": (b"{}", JSON, 400, "The input must be a JSON dictionary with exactly one of"),
        "wrong content type": (split_body(rows), "text/plain", 415, "Got 'text/plain'"),
        "threshold: high": (
            split_body(rows, params={"threshold": "high"}), JSON, 400,
            "Failed to validate type and shape for 'threshold'",
        ),
        "threshold: 1.5": (
            split_body(rows, params={"threshold": 1.5}), JSON, 400,
            "params.threshold must be between 0 and 1, got 1.5",
        ),
        "top_k: 0": (
            split_body(rows, params={"explain": True, "top_k": 0}), JSON, 400,
            "params.top_k must be at least 1, got 0",
        ),
        "over the row limit": (
            split_body(pd.concat([rows] * MAX_ROWS, ignore_index=True)), JSON, 400,
            f"the request has {2 * MAX_ROWS} rows; this model takes at most {MAX_ROWS}",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_requests_get_a_4xx_naming_the_problem(local_url: str, case: str) -> None:
    body, content_type, status, message = bad_requests()[case]
    got, answer = post(local_url, body, content_type)
    assert got == status, answer
    assert message in (answer if isinstance(answer, str) else answer["message"])
    # The server keeps answering.
    ok, answer = post(local_url, split_body(request_rows().head(1)), JSON)
    assert ok == 200, answer


def test_nulls_unseen_categories_and_extra_columns_are_answered(
    service: Service, local_url: str
) -> None:
    rows = request_rows().head(3).reset_index(drop=True)
    unusual = rows.copy()
    unusual.loc[0, :] = None  # every input missing: scored the way training treated gaps
    unusual.loc[1, ["contract", "payment_method"]] = ["Weekly", "Barter"]
    unusual["not_a_feature"] = "ignored"
    status, answer = post(local_url, split_body(unusual), JSON)
    assert status == 200, answer
    got = answer["predictions"]
    assert got["unseen_categories"] == [None, ["contract", "payment_method"], None]
    # Exactly what the pipeline gives the same rows (nulls as NaN; unseen as all-zero).
    use_store(service.store)
    pipeline = mlflow.sklearn.load_model(service.run.data.tags[Tag.SOURCE_MODEL_URI])
    expected = unusual.drop(columns="not_a_feature").astype(
        {column: "float64" for column in rows.select_dtypes("number")}
    )
    np.testing.assert_allclose(
        got["probability"], pipeline.predict_proba(expected)[:, 1], rtol=0, atol=1e-9
    )


def test_custom_model_stopped_during_its_isolated_check(service: Service, project: Path) -> None:
    # Last in this module: it leaves a version of the service model with no alias.
    environment = mlflow_run_environment(project, service.store)
    use_store(service.store)
    champion = mlflow.MlflowClient().get_model_version_by_alias("churn-service", "champion")
    result = interrupt(
        project, environment, "custom_model", [], signal.SIGTERM, False, ISOLATED_CHECK, 1.0
    )
    assert result.seconds_to_end < 5.0, result.output[-3000:]
    assert result.left_behind == []  # the check's processes went with the step
    assert result.statuses == {"KILLED": 1}
    assert result.errors == {"interrupted by SIGTERM"}
    now = mlflow.MlflowClient().get_model_version_by_alias("churn-service", "champion")
    assert now.version == champion.version
