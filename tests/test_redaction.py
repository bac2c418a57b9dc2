"""No secret in what is logged: URL passwords are masked in params, the config artifact,
error tags and log lines."""

import logging

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from tabular_mlops.cli.commands import RedactingFormatter
from tabular_mlops.core.config import ProjectConfig, load_config
from tabular_mlops.core.redaction import redact, redact_values
from tabular_mlops.mlflow.runs import log_config, project_run
from tests.conftest import CHURN_CONFIG, leave_no_run_behind

SECRET = "s3cr/t@pass"  # an unencoded "/" and "@": the worst case a user may type


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql+psycopg://optuna:pw@127.0.0.1:5432/optuna",
            "postgresql+psycopg://optuna:***@127.0.0.1:5432/optuna",
        ),
        (f"postgresql://u:{SECRET}@db/optuna", "postgresql://u:***@db/optuna"),
        (
            "two: http://a:b@h1 and s3://k:s@bucket/x",
            "two: http://a:***@h1 and s3://k:***@bucket/x",
        ),
        ('{"storage": "mysql://u:p@h/db"}', '{"storage": "mysql://u:***@h/db"}'),
    ],
)
def test_a_url_password_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["postgresql://optuna@127.0.0.1/optuna", "https://host/path?a=b:c@d", "user:pw@host", "no url"],
)
def test_text_without_a_url_password_is_kept(text: str) -> None:
    assert redact(text) == text


def test_structures_are_redacted_everywhere() -> None:
    value = {"a": [f"http://u:{SECRET}@h", 3], "b": {"c": f"x://u:{SECRET}@h"}, "d": None}
    assert SECRET not in str(redact_values(value))
    assert redact_values(value)["a"][1] == 3


def storage_config() -> ProjectConfig:
    return load_config(CHURN_CONFIG, {"tuning.storage": f"postgresql://optuna:{SECRET}@db/optuna"})


def test_logged_params_and_config_artifact_hold_no_password(tracking_uri: str) -> None:
    config = storage_config()
    assert config.tuning.storage.endswith(f"{SECRET}@db/optuna")  # the config keeps it for use
    with mlflow.start_run() as run:
        log_config(config)
    params = mlflow.get_run(run.info.run_id).data.params
    artifact = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/config.yaml")
    assert params["tuning.storage"] == "postgresql://optuna:***@db/optuna"
    assert SECRET not in str(params)
    assert SECRET not in artifact
    assert "postgresql://optuna:***@db/optuna" in artifact


def test_an_error_holding_a_password_is_tagged_masked(tracking_uri: str) -> None:
    config = storage_config()
    with pytest.raises(RuntimeError), project_run(config, "track") as run:
        raise RuntimeError(f"cannot reach {config.tuning.storage}")
    leave_no_run_behind()
    error = mlflow.get_run(run.info.run_id).data.tags["error"]
    assert SECRET not in error
    assert "optuna:***@db" in error


def test_log_lines_are_masked_whoever_logs_them() -> None:
    formatter = RedactingFormatter("%(name)s: %(message)s")
    record = logging.LogRecord(
        "optuna.storages", logging.INFO, __file__, 1, "using %s", (f"x://u:{SECRET}@h",), None
    )
    assert formatter.format(record) == "optuna.storages: using x://u:***@h"


def test_a_token_in_the_source_url_mlflow_tagged_is_masked(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `mlflow run https://user:token@host/repo.git` tags the run it opens.
    url = f"https://user:{SECRET}@git.example.com/team/project.git"
    tags = {MLFLOW_SOURCE_NAME: url, MLFLOW_GIT_REPO_URL: url}
    opened = mlflow.MlflowClient().create_run(experiment_id="0", tags=tags)
    monkeypatch.setenv("MLFLOW_RUN_ID", opened.info.run_id)
    with project_run(storage_config(), "train_basic"):
        pass
    masked = mlflow.get_run(opened.info.run_id).data.tags
    for name in tags:
        assert masked[name] == "https://user:***@git.example.com/team/project.git"
