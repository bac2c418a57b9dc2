"""No secret in what is logged: URL credentials and settings named as secrets are masked in
params, the config artifact, run names and descriptions, error tags, log lines (ours and
MLflow's) and what a step prints; a parameter holding a credential is refused."""

import logging
from pathlib import Path

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from tabular_mlops.cli.commands import (
    RedactingFilter,
    configure_logging,
    parser_for,
    run_with_config,
)
from tabular_mlops.core.config import ProjectConfig, load_config
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.redaction import redact, redact_values
from tabular_mlops.jobs.entry_points import TRACK
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
        ("https://ghp_T0KEN@github.com/o/r.git", "https://***@github.com/o/r.git"),
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
    record = logging.LogRecord(
        "optuna.storages", logging.INFO, __file__, 1, "using %s", (f"x://u:{SECRET}@h",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "using x://u:***@h"


def test_mlflows_own_loggers_and_printed_links_are_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    logging.getLogger("mlflow.tracking").warning("server https://u:%s@host", SECRET)
    token = "ghp_T0KENs3cret"
    print(f"View run at: https://{token}@host/#/runs/1")  # as MLflow writes it
    out, err = capsys.readouterr()
    assert SECRET not in out + err and token not in out
    assert "https://u:***@host" in err and "https://***@host/#/runs/1" in out


def test_a_setting_named_as_a_secret_is_masked_wherever_config_is_shown(
    tracking_uri: str,
) -> None:
    key = "batch.spark.conf.spark.hadoop.fs.s3a.secret.key"
    config = load_config(CHURN_CONFIG)
    config.batch.spark.conf["spark.hadoop.fs.s3a.secret.key"] = SECRET
    with mlflow.start_run() as run:
        log_config(config)
    params = mlflow.get_run(run.info.run_id).data.params
    artifact = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/config.yaml")
    assert params[key] == "***" and SECRET not in str(params) + artifact


def test_run_names_and_descriptions_mask_what_they_show(tracking_uri: str) -> None:
    storage = f"postgresql://optuna:{SECRET}@db/optuna"
    config = load_config(CHURN_CONFIG, {"tuning.storage": storage, "tuning.n_trials": 2})
    with project_run(config, "track", summary="Tunes.") as run:
        pass
    leave_no_run_behind()
    shown = mlflow.get_run(run.info.run_id)
    assert SECRET not in shown.info.run_name + shown.data.tags["mlflow.note.content"]
    assert "storage=postgresql://optuna:***@db/optuna" in shown.info.run_name


def test_a_config_error_names_the_file_never_its_content(tmp_path: Path) -> None:
    secrets = tmp_path / "credentials"
    secrets.write_text(f"aws_secret_access_key {SECRET}\n")  # not YAML for a config
    config = tmp_path / "config.yaml"
    config.write_text(f"extends: {secrets.name}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert SECRET not in str(refused.value)
    assert str(secrets) in str(refused.value)
    secrets.write_text(f"[{SECRET}\n")  # invalid YAML: its parser would quote the line
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert SECRET not in str(refused.value) and "is not valid YAML at line" in str(refused.value)


def test_a_secret_setting_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(CHURN_CONFIG, {"batch.spark.conf": {"fs.s3a.secret.key": [SECRET]}})
    assert SECRET not in str(refused.value)


def test_a_parameter_holding_a_credential_is_refused(
    tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    args = parser_for(TRACK).parse_args(
        ["--config", str(CHURN_CONFIG), "--storage", f"postgresql://optuna:{SECRET}@db/optuna"]
    )
    ran = []
    with caplog.at_level(logging.ERROR):
        assert run_with_config(args, TRACK, ran.append) == 1
    assert ran == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("parameter storage holds a credential") and "PGPASSWORD" in line
    assert SECRET not in line


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
