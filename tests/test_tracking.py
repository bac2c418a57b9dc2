import logging

import mlflow
import pytest

from tabular_mlops.config import load_config
from tabular_mlops.tracking import Tag, git_tags, project_run
from tests.conftest import CHURN_CONFIG


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
