"""End to end: `mlflow run . -e custom_model` (with its isolated uv check), then the
registered model behind `mlflow models serve`, with `--env-manager local` and `uv`."""

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server import predictions_to_json

from tabular_mlops import data
from tabular_mlops.config import load_config
from tabular_mlops.tracking import Tag
from tests.conftest import (
    CHURN_CONFIG,
    CHURN_CSV,
    SERVICE_URI,
    mlflow_run,
    post,
    served,
    sqlite_uri,
    use_store,
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Service:
    store: str
    run: mlflow.entities.Run


@pytest.fixture(scope="module")
def service(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Service:
    store = sqlite_uri(tmp_path_factory.mktemp("service") / "mlflow.db")
    trained = mlflow_run(project, store, "train_basic", "n_estimators=60")
    assert trained.returncode == 0, trained.stderr[-3000:]
    wrapped = mlflow_run(project, store, "custom_model")  # the pipeline's latest-model
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    use_store(store)
    (run,) = mlflow.search_runs(
        experiment_names=["churn"],
        filter_string="tags.`mlflow.project.entryPoint` = 'custom_model'",
        output_format="list",
    )
    return Service(store, run)


def request_rows() -> pd.DataFrame:
    """Test-split rows, plus one with missing values (as JSON nulls and empty CSV cells)."""
    config = load_config(CHURN_CONFIG, {"data.path": str(CHURN_CSV)})
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
    service: Service, env_manager: str, tmp_path: Path
) -> None:
    rows = request_rows()
    split = json.loads(rows.to_json(orient="split", index=False))
    records = json.loads(rows.to_json(orient="records"))
    params = {"explain": True, "top_k": 2, "threshold": 0.35}
    json_type = "application/json"
    payloads = {
        "dataframe_split": (json.dumps({"dataframe_split": split}), json_type, None),
        "dataframe_records": (json.dumps({"dataframe_records": records}), json_type, None),
        "csv": (rows.to_csv(index=False), "text/csv", None),
        "params": (json.dumps({"dataframe_split": split, "params": params}), json_type, params),
    }
    with served(service.store, env_manager, tmp_path) as url:
        for kind, (body, content_type, request_params) in payloads.items():
            status, answer = post(url, body.encode(), content_type)
            assert status == 200, (kind, answer)
            assert answer == in_process_answer(rows, request_params), kind

    explained = in_process_answer(rows, params)["predictions"]
    assert [len(reasons) for reasons in explained["reasons"]] == [2] * len(rows)
    assert set(explained["model_version"]) == {"1"}
