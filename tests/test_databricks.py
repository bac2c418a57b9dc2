"""The Databricks profile: what can be checked without a workspace (names, URIs,
refusals, the bundle). Running on a workspace is described in docs/databricks.md and not
done here."""

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking._model_registry import utils as registry_utils

from tabular_mlops.core.config import load_config
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.sections import unity_catalog_problem
from tabular_mlops.mlflow.runs import configure_tracking
from tests.conftest import CHURN_CONFIG, PROJECT_DIR

DATABRICKS_CONFIG = PROJECT_DIR / "config" / "databricks.yaml"


def test_the_databricks_config_is_the_churn_one_on_the_workspace() -> None:
    config, churn = load_config(DATABRICKS_CONFIG), load_config(CHURN_CONFIG)
    assert config.tracking.profile == "databricks"
    assert config.tracking.experiment_name == "/Shared/tabular-mlops/churn"
    assert config.tracking.registered_model_name == "main.churn.churn_classifier"
    assert config.require_custom_model().registered_model_name == "main.churn.churn_service"
    # Aliases, never stages (Unity Catalog has none).
    assert config.tracking.alias == "latest-model"
    assert config.require_promotion().champion_alias == "champion"
    for section in ("data", "split", "model", "tuning", "promotion"):
        assert getattr(config, section) == getattr(churn, section), section
    assert config.require_custom_model().decision == churn.require_custom_model().decision


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("main.churn.churn_classifier", None),
        ("churn-classifier", "is not catalog.schema.model (1 part(s))"),
        ("churn.classifier", "is not catalog.schema.model (2 part(s))"),
        ("main.churn.churn-classifier", "'churn-classifier' may hold only letters, digits and _"),
        ("main..model", "'' may hold only"),
        ("main.1st.model", "'1st' may hold only"),
    ],
)
def test_unity_catalog_model_names(name: str, problem: str | None) -> None:
    found = unity_catalog_problem(name)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"tracking.registered_model_name": "churn-classifier"},
            "tracking.registered_model_name on Databricks (Unity Catalog): 'churn-classifier' "
            "is not catalog.schema.model",
        ),
        (
            {"custom_model.registered_model_name": "main.churn.churn-service"},
            "custom_model.registered_model_name on Databricks (Unity Catalog)",
        ),
        ({"tracking.experiment_name": "churn"}, "must be a workspace path on Databricks"),
        ({"tracking.profile": "databrick"}, "tracking.profile: Input should be 'local' or"),
    ],
)
def test_names_that_do_not_fit_the_workspace_are_refused(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"^invalid config") as caught:
        load_config(DATABRICKS_CONFIG, overrides)
    assert message in str(caught.value)


def test_the_local_config_with_the_databricks_profile_names_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"experiment_name must be a workspace path"):
        load_config(CHURN_CONFIG, {"tracking.profile": "databricks"})


@pytest.fixture
def restored_uris() -> Iterator[None]:
    """MLflow's tracking and registry URIs as they were (set_registry_uri also sets
    MLFLOW_REGISTRY_URI in the environment, for child processes)."""
    tracking, registry = mlflow.get_tracking_uri(), registry_utils._registry_uri
    variable = os.environ.get("MLFLOW_REGISTRY_URI")
    yield
    mlflow.set_tracking_uri(tracking)
    registry_utils._registry_uri = registry
    if variable is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    else:
        os.environ["MLFLOW_REGISTRY_URI"] = variable


@pytest.mark.usefixtures("restored_uris")
@pytest.mark.parametrize(
    ("environment", "tracking", "registry"),
    [
        ({}, "databricks", "databricks-uc"),
        ({"MLFLOW_TRACKING_URI": "databricks://team"}, "databricks://team", "databricks-uc"),
        # A server's address is not a workspace: the profile wins.
        ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}, "databricks", "databricks-uc"),
        ({"MLFLOW_REGISTRY_URI": "databricks-uc://team"}, "databricks", "databricks-uc://team"),
    ],
)
def test_the_profile_points_tracking_at_the_workspace_and_models_at_unity_catalog(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    tracking: str,
    registry: str,
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert configure_tracking("databricks") == tracking
    assert mlflow.get_tracking_uri() == tracking
    assert mlflow.get_registry_uri() == registry


def test_a_config_extends_another_and_refuses_a_circle(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(CHURN_CONFIG.read_text().replace("data/wa_churn", "x"))
    (tmp_path / "mine.yaml").write_text(
        "extends: base.yaml\nmodel: {n_estimators: 7}\ndata: {id_columns: []}\n"
    )
    config = load_config(tmp_path / "mine.yaml")
    assert config.model.n_estimators == 7 and config.model.learning_rate == 0.03
    assert config.data.id_columns == [] and str(config.data.path) == "x.csv"  # lists replaced
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a circle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        load_config(tmp_path / "c.yaml")


def test_the_bundle_runs_the_chain_as_tasks_each_steps_parser_takes() -> None:
    """databricks.yml (not run here): the job's tasks are main's steps in order, each the
    step's own module on the project's wheel, with parameters its parser takes and files
    that exist."""
    import yaml

    from tabular_mlops.cli.commands import parser_for
    from tabular_mlops.jobs.entry_points import ENTRY_POINTS, STEPS

    bundle = yaml.safe_load((PROJECT_DIR / "databricks.yml").read_text())
    (job,) = bundle["resources"]["jobs"].values()
    tasks = job["tasks"]
    assert [task["task_key"] for task in tasks] == [step.name for step in STEPS]
    for before, task in zip([None, *tasks], tasks, strict=False):
        after = [{"task_key": before["task_key"]}] if before else None
        assert task.get("depends_on") == after
        entry = ENTRY_POINTS[task["task_key"]]
        python_file = task["spark_python_task"]["python_file"]
        assert (PROJECT_DIR / python_file).is_file()
        assert python_file == f"./{entry.module.replace('.', '/')}.py"
        synced = [
            argument.replace("${workspace.file_path}", str(PROJECT_DIR))
            for argument in task["spark_python_task"]["parameters"]
        ]
        arguments = parser_for(entry).parse_args(synced)
        assert Path(arguments.config) == DATABRICKS_CONFIG
        assert Path(arguments.data_path).is_file()
        libraries = [next(iter(library.values())) for library in task["libraries"]]
        assert libraries == ["./dist/*.whl", "./requirements.lock"]
        assert (PROJECT_DIR / "requirements.lock").is_file()
    assert bundle["artifacts"]["wheel"]["build"].endswith("-w dist")
