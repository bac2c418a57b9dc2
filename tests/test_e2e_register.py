"""End to end: the real `mlflow run . -e register` on a sqlite store where `train_basic` has
logged a model (the session's trained store); against a tracking server, `register` runs
in tests/test_e2e_stack.py's chain."""

from pathlib import Path

import mlflow
import pytest

from steps import register as register_step
from tabular_mlops.core.names import Tag
from tests.conftest import (
    E2E_EXPERIMENT,
    FAST_CONFIG,
    copy_of_trained_store,
    mlflow_run,
    point_mlflow_at,
    use_store,
)

pytestmark = pytest.mark.system

REGISTERED = "churn-classifier"


def register_runs(experiment: str = E2E_EXPERIMENT) -> list[mlflow.entities.Run]:
    """The runs `mlflow run -e register` opened in the experiment, oldest first."""
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.`mlflow.project.entryPoint` = 'register'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def test_register_promotes_then_reuses_and_lists(
    project: Path,
    trained_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = copy_of_trained_store(trained_store, tmp_path)
    first = mlflow_run(project, store, "register", FAST_CONFIG)
    assert first.returncode == 0, first.stderr[-3000:]
    client = use_store(store)

    # The best run of the experiment was found, its version (train_basic's) reused.
    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    assert int(champion.version) == 1
    assert client.get_model_version_by_alias(REGISTERED, "challenger").version == champion.version
    (run,) = register_runs()
    assert run.info.status == "FINISHED" and run.data.tags[Tag.VERDICT] == "passed"
    assert run.data.params["decision.candidate_run_id"] == champion.run_id
    assert run.data.metrics["challenger.roc_auc"] >= 0.8
    assert "passed: roc_auc 0.8" in first.stderr

    # `-P action=list`, in this process (its parameter's way through `mlflow run` is the
    # same as action's default above).
    point_mlflow_at(tmp_path, monkeypatch)
    config = str(project / "config" / "churn.yaml")
    assert register_step.main(["--config", config, "--action", "list"]) == 0
    listing = capsys.readouterr().out
    assert "Versions of churn-classifier:" in listing
    (row,) = [line for line in listing.splitlines() if champion.run_id in line]
    assert "challenger, champion, latest-model" in row and "passed" in row
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == 1
