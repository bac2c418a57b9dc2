"""The `train_basic` step in-process: parameters, another table, and every bad input."""

import logging
import re
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.entities import RunStatus

from steps import train_basic as train_basic_step
from tabular_mlops.cli.commands import parser_for
from tabular_mlops.core.monitoring import Profile
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.jobs.entry_points import TRAIN_BASIC
from tabular_mlops.mlflow.pipeline_model import declared_inputs
from tests.conftest import churn_frame, churn_settings, mixed_table, write_config

# Trains, logs and registers for real, in process: not in the fast tier.
TRAINS = pytest.mark.integration


def runs_of(experiment: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def registered_names() -> list[str]:
    return [model.name for model in mlflow.MlflowClient().search_registered_models()]


# Parameters


def test_empty_parameters_keep_the_config_and_numbers_are_typed() -> None:
    args = parser_for(TRAIN_BASIC).parse_args(
        ["--n-estimators", "50.0", "--learning-rate", "", "--seed", "7"]
    )
    assert args.n_estimators == 50
    assert args.learning_rate is None
    assert args.seed == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-estimators", "abc"], "parameter n_estimators: expected a whole number, got 'abc'"),
        (["--num-leaves", "2.5"], "parameter num_leaves: expected a whole number, got '2.5'"),
        (["--test-size", "big"], "parameter test_size: expected a number, got 'big'"),
        (["--n_trials", "5"], "unrecognized arguments: --n_trials 5"),
    ],
)
def test_bad_parameter_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parser_for(TRAIN_BASIC).parse_args(argv)
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error == f"train_basic: error: {message}\n"


# Another table, by config alone


@TRAINS
def test_trains_and_registers_a_parquet_table_with_inferred_features(
    tracking_uri: str, tmp_path: Path
) -> None:
    mixed_table(rows=400).to_parquet(tmp_path / "mixed.parquet")
    config = write_config(
        tmp_path / "mixed.yaml",
        {
            "data": {"path": "mixed.parquet", "target": "label", "id_columns": ["id"]},
            "model": {"n_estimators": 20, "params": {"min_child_samples": 5}},
            "tracking": {"experiment_name": "mixed", "registered_model_name": "mixed-model"},
            "model_code": churn_settings()["model_code"],
        },
    )
    assert train_basic_step.main(["--config", str(config)]) == 0

    (run,) = runs_of("mixed")
    assert run.info.status == "FINISHED"
    assert run.data.params["data.numeric_features"] == "None"  # inferred
    assert {"roc_auc", "log_loss", "brier_score_loss", "f1_score"} <= set(run.data.metrics)
    # Autologging is off by default: nothing of it in the run.
    assert not [name for name in run.data.metrics if name.startswith("training_")]
    assert not [name for name in run.data.params if "__" in name]
    version = mlflow.MlflowClient().get_model_version_by_alias("mixed-model", "latest-model")
    assert version.run_id == run.info.run_id

    model = mlflow.pyfunc.load_model("models:/mixed-model@latest-model")
    inputs = {spec.name: spec.type.name for spec in declared_inputs(model.metadata).inputs}
    assert inputs == {
        "age": "double",
        "income": "double",
        "member": "double",
        "plan": "string",
        "region": "string",
    }
    sample = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="predictions/sample_predictions.csv"
        )
    )
    assert list(sample.columns) == ["id", "actual", "predicted", "probability"]
    assert len(sample) == 20 and sample["probability"].between(0, 1).all()
    # The reference `monitor` judges batches against: the inputs as inferred, the scores.
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{Artifact.PROFILE}")
    reference = Profile.from_dict(logged)
    assert (set(reference.numeric), set(reference.categorical)) == (
        {"age", "income", "member"},
        {"plan", "region"},
    )
    assert reference.metrics["roc_auc"] == pytest.approx(run.data.metrics["roc_auc"])
    assert sum(reference.scores.shares) == pytest.approx(1)


@TRAINS
def test_parameters_override_the_config(tracking_uri: str, tmp_path: Path) -> None:
    frame = churn_frame().sample(1000, random_state=1)
    frame.to_csv(tmp_path / "churn.csv", index=False)
    config = write_config(tmp_path / "c.yaml", churn_settings(), data={"path": "churn.csv"})
    argv = ["--config", str(config), "--n-estimators", "25", "--seed", "3"]
    argv += ["--registered-model-name", "override-model", "--autolog", "true"]
    assert train_basic_step.main(argv) == 0
    (run,) = runs_of("churn")
    assert run.data.params["model.n_estimators"] == "25"
    assert run.data.params["split.seed"] == "3"
    assert registered_names() == ["override-model"]

    # What a person sees in the UI: a run named after what ran and described.
    assert (
        run.info.run_name
        == "train_basic c.yaml seed=3 n_estimators=25 registered_model_name=override-model "
        "autolog=true"
    )
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith("Train, evaluate, log and register one LightGBM pipeline.")
    assert f"- config: `{config}`, with `split.seed=3`, `model.n_estimators=25`" in description
    assert "predicting `churn` = `Yes`" in description
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    model = mlflow.MlflowClient().get_registered_model("override-model")
    assert model.description.startswith("Predicts whether `churn` = `Yes` for a row of `churn.csv`")
    assert (
        "`contract`" in model.description
        and "models:/override-model@latest-model" in model.description
    )

    # Autologging (-P autolog=true) beside the explicit logging: the pipeline's parameters
    # and training metrics, no second model, no name shared with what the step logs.
    autologged = {name for name in run.data.params if name.startswith("classifier__")}
    assert {"classifier__n_estimators", "classifier__num_leaves"} <= autologged
    assert run.data.params["classifier__n_estimators"] == "25"
    assert {"training_roc_auc", "training_log_loss"} <= set(run.data.metrics)
    assert run.data.metrics["roc_auc"] != run.data.metrics["training_roc_auc"]
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert logged.source_run_id == run.info.run_id


# Bad input: one error line, exit 1, the run FAILED with the reason, nothing registered.


def _too_few_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.head(50)


def _single_class(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(churn="No")


def _text_in_numeric(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({"monthly_charges": object}).assign(monthly_charges="high")


def _no_target(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="churn")


def _no_feature(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="contract")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_too_few_rows, "too few rows"),
        (_single_class, "has a single class"),
        (_text_in_numeric, "'monthly_charges' is listed as numeric"),
        (_no_target, "target column 'churn' not in"),
        (_no_feature, "data.categorical_features not in .*: contract"),
        (None, "data file not found"),
    ],
)
def test_bad_data_fails_the_run_and_registers_nothing(
    tracking_uri: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    corrupt: Any,
    message: str,
) -> None:
    if corrupt is not None:
        corrupt(churn_frame()).to_csv(tmp_path / "bad.csv", index=False)
    config = write_config(tmp_path / "c.yaml", churn_settings(), data={"path": "bad.csv"})
    with caplog.at_level(logging.ERROR):
        assert train_basic_step.main(["--config", str(config)]) == 1

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    (run,) = runs_of("churn")
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED)
    assert run.data.tags[Tag.ERROR] == errors[0]
    assert re.search(message, errors[0])
    assert "roc_auc" not in run.data.metrics
    assert registered_names() == []


def test_bad_config_fails_before_any_run(
    tracking_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "c.yaml", churn_settings(), split={"test_size": 1.5})
    with caplog.at_level(logging.ERROR):
        assert train_basic_step.main(["--config", str(config)]) == 1
    assert "split.test_size: Input should be less than 1 (got 1.5)" in caplog.text
    assert mlflow.search_runs(search_all_experiments=True).empty
    assert registered_names() == []
