"""End to end: the real `mlflow run . -e train_basic` on a copy of the project."""

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tabular_mlops.core.names import Tag
from tabular_mlops.mlflow.pipeline_model import declared_inputs
from tests.conftest import E2E_EXPERIMENT, mlflow_run, new_store, use_store
from tests.test_init import trap_table

pytestmark = pytest.mark.system

ENTRY_POINT = "train_basic"
REGISTERED = "churn-classifier"
ALIAS = "latest-model"
TEST_METRICS = {
    "roc_auc",
    "precision_recall_auc",
    "log_loss",
    "brier_score_loss",
    "f1_score",
    "precision_score",
    "recall_score",
    "accuracy_score",
}
PLOTS = {
    "roc_curve_plot.png",
    "precision_recall_curve_plot.png",
    "confusion_matrix.png",
    "calibration_curve_plot.png",
    "feature_importance/gain_share.png",
}


def only_run() -> mlflow.entities.Run:
    (run,) = mlflow.search_runs(experiment_names=[E2E_EXPERIMENT], output_format="list")
    return run


def test_train_basic_on_the_shipped_data(project: Path, tmp_path: Path) -> None:
    # In an isolated environment (conda.yaml converted by `--env-manager uv`, as the README
    # documents); `--env-manager local` runs every other end-to-end test.
    store = new_store(tmp_path)
    result = mlflow_run(project, store, ENTRY_POINT, env_manager="uv")
    assert result.returncode == 0, result.stderr[-3000:]
    client = use_store(store)
    # Run alone, it ends by saying what to run next, each a command that works as printed
    # (the chain and serving are run so in tests/test_e2e_main.py).
    runs_page = "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
    assert f"next: see the run: mlflow ui --backend-store-uri {store}, then open {runs_page}" in (
        result.stderr
    )
    chain = f"mlflow run . --env-manager uv --experiment-name {E2E_EXPERIMENT}"
    assert f"next: tune, review and wrap it (this run is reused): {chain}" in result.stderr
    serve = "python -m tabular_mlops.cli.serve models:/churn-classifier@latest-model"
    serve += " --env-manager uv"  # as it was run
    assert f"next: serve it: {serve} -p 5001" in result.stderr
    assert "WARNING" not in result.stderr and "warn" not in result.stderr.lower()

    run = only_run()
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert set(metrics) >= TEST_METRICS
    assert metrics["roc_auc"] >= 0.83
    assert 0 < metrics["brier_score_loss"] < 0.25
    assert metrics["example_count"] == 1409

    # Only the parameters MLproject declares, or that were given, are logged: none is "".
    assert (
        "n_estimators" not in run.data.params and run.data.params["config"] == "config/churn.yaml"
    )
    assert run.data.params["model.n_estimators"] == "300"  # the resolved config
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run.data.tags
    assert tags[Tag.GIT_COMMIT] == head and tags[Tag.GIT_DIRTY] == "false"
    assert tags["mlflow.project.entryPoint"] == tags[Tag.ENTRY_POINT] == "train_basic"
    assert tags["mlflow.project.env"] == "uv"
    contexts = {
        tag.value: dataset_input.dataset
        for dataset_input in run.inputs.dataset_inputs
        for tag in dataset_input.tags
        if tag.key == "mlflow.data.context"
    }
    assert contexts["training"].name == "wa_churn.csv"
    assert tags[Tag.DATASET_DIGEST] == contexts["training"].digest

    artifacts = set()
    pending = [None]
    while pending:
        for item in client.list_artifacts(run.info.run_id, pending.pop()):
            pending.append(item.path) if item.is_dir else artifacts.add(item.path)
    assert PLOTS | {"config/config.yaml", "predictions/sample_predictions.csv"} <= artifacts

    # Registered, aliased, and the alias loads the run's model.
    version = client.get_model_version_by_alias(REGISTERED, ALIAS)
    assert int(version.version) == 1 and version.run_id == run.info.run_id
    info = mlflow.models.get_model_info(f"models:/{REGISTERED}@{ALIAS}")
    assert tags[Tag.MODEL_URI] == f"models:/{info.model_id}"
    assert info.flavors["sklearn"]["serialization_format"] == "skops"
    # Inputs declared in the model's config (see tabular_custom_model.inputs), the input
    # example as the table holds its rows (whole numbers as ints).
    assert info.signature.inputs is None
    assert {column.name for column in declared_inputs(info)} >= {"tenure", "contract"}
    local_copy = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED}@{ALIAS}")
    example = mlflow.models.Model.load(local_copy).load_input_example(local_copy)
    assert len(example) == 5 and example["tenure"].dtype == np.int64
    assert set(mlflow.pyfunc.load_model(local_copy).predict(example)) <= {0, 1}

    sample = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="predictions/sample_predictions.csv"
        )
    )
    assert len(sample) == 20 and sample["probability"].between(0, 1).all()


def test_your_own_table_from_init_to_a_registered_model(project: Path, tmp_path: Path) -> None:
    """The README's "Your own table": `init` on a table the project never saw, then
    train_basic on the config it wrote, no YAML edited."""
    table = tmp_path / "Credit Risk.csv"
    trap_table().to_csv(table, sep=";", index=False, encoding="cp1252")
    init = subprocess.run(
        [sys.executable, "-m", "tabular_mlops.cli.init", str(table), "--target", "Status",
         "--positive-label", "bad", "--positive-label", "unknown"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert (project / "config" / "credit-risk.yaml").is_file()
    store = new_store(tmp_path)
    result = mlflow_run(
        project, store, ENTRY_POINT, "config=config/credit-risk.yaml", experiment="credit-risk"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr
    client = use_store(store)
    (run,) = mlflow.search_runs(experiment_names=["credit-risk"], output_format="list")
    assert run.info.status == "FINISHED" and run.info.run_name == "train_basic credit-risk.yaml"
    assert run.data.metrics["roc_auc"] > 0.5
    version = client.get_model_version_by_alias("credit-risk-classifier", "latest-model")
    assert version.run_id == run.info.run_id
    assert [model.name for model in client.search_registered_models()] == ["credit-risk-classifier"]
    # The user's table, as pandas reads it (whole numbers as int64, gaps as NaN): answered.
    rows = pd.read_csv(table, sep=";", encoding="cp1252").drop(columns=["Status"])
    assert rows["Seniority"].dtype == np.int64
    classes = mlflow.pyfunc.load_model("models:/credit-risk-classifier@latest-model").predict(rows)
    assert len(classes) == len(rows) and set(classes) <= {0, 1}


def test_a_bad_parameter_fails_the_run_in_one_line(project: Path, tmp_path: Path) -> None:
    """A refusal through `mlflow run`: the run MLflow opened ends FAILED with the error, and
    the step prints one line, no traceback. Each refusal of the job, once its run exists, is
    a unit test (tests/test_train_basic.py); through `mlflow run`, batch_score's
    (tests/test_e2e_batch_score.py)."""
    store = new_store(tmp_path)
    # MLflow appends an unknown -P as --n_trials 5: the step's parser refuses it.
    result = mlflow_run(project, store, ENTRY_POINT, "n_trials=5", experiment="bad-n_trials")
    message = "unrecognized arguments: --n_trials 5"
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr.split("=== Run (ID")[0]  # the step's own output
    client = use_store(store)
    (run,) = mlflow.search_runs(experiment_names=["bad-n_trials"], output_format="list")
    assert run.info.status == "FAILED" and message in run.data.tags[Tag.ERROR]
    assert client.search_registered_models() == []
