"""End to end: the real `mlflow run . -e register` after `train_basic`, on a sqlite store
and on a tracking server."""

from pathlib import Path

import mlflow
import pytest

from tabular_mlops.tracking import Tag
from tests.conftest import E2E_EXPERIMENT, mlflow_run, sqlite_uri, use_store

pytestmark = pytest.mark.e2e

REGISTERED = "churn-classifier"


def register_runs(experiment: str = E2E_EXPERIMENT) -> list[mlflow.entities.Run]:
    """The runs `mlflow run -e register` opened in the experiment, oldest first."""
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.`mlflow.project.entryPoint` = 'register'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def test_register_promotes_then_reuses_and_lists(project: Path, tmp_path: Path) -> None:
    store = sqlite_uri(tmp_path / "mlflow.db")
    trained = mlflow_run(project, store, "train_basic", "n_estimators=60")
    assert trained.returncode == 0, trained.stderr[-3000:]
    first = mlflow_run(project, store, "register")
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

    again = mlflow_run(project, store, "register", "dry_run=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dry run, nothing changed: already_champion: version 1" in again.stderr

    listing = mlflow_run(project, store, "register", "action=list")
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert "Versions of churn-classifier:" in listing.stdout
    (row,) = [line for line in listing.stdout.splitlines() if champion.run_id in line]
    assert "challenger, champion, latest-model" in row and "passed" in row
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == 1


def test_register_against_a_tracking_server(project: Path, tracking_server: str) -> None:
    experiment, name = "register-on-server", "server-churn"
    options = {"experiment": experiment}
    trained = mlflow_run(
        project, tracking_server, "train_basic", "n_estimators=50",
        f"registered_model_name={name}", **options,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = mlflow_run(
        project, tracking_server, "register", f"registered_model_name={name}", **options
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = use_store(tracking_server)
    (run,) = register_runs(experiment)
    assert run.data.tags[Tag.VERDICT] == "passed"
    assert client.get_registered_model(name).aliases == {
        "champion": "1",
        "challenger": "1",
        "latest-model": "1",
    }
    # The champion loads back over HTTP.
    model = mlflow.sklearn.load_model(f"models:/{name}@champion")
    assert model.named_steps["classifier"].n_estimators == 50


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (["dry_run=maybe"], "argument --dry-run: expected true or false, got 'maybe'"),
        (["action=rollback"], "churn-classifier has no 'previous-champion' alias: nothing to"),
    ],
)
def test_bad_input_fails_the_run(
    project: Path, tmp_path: Path, parameters: list[str], message: str
) -> None:
    store = sqlite_uri(tmp_path / "mlflow.db")
    result = mlflow_run(project, store, "register", *parameters)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr.split("=== Run (ID")[0]
    use_store(store)
    (run,) = register_runs()
    assert run.info.status == "FAILED"
