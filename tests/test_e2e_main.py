"""End to end: `mlflow run .` (entry point `main`) chains the four steps as child runs and
reuses those whose inputs did not change: with `--env-manager local` on the default sqlite
store (./mlflow.db). The tests build on each other, in file order. (`main` under uv, on the
team stack: tests/test_e2e_stack.py.)"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run
from mlflow.projects.utils import load_project
from mlflow.utils.mlflow_tags import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
)

from tabular_mlops.core.names import Tag
from tabular_mlops.mlflow.descriptions import runs_page
from test_support import screenshots
from test_support.servers import LOOPBACK, background_server, free_port
from tests.conftest import (
    CHROMIUM,
    E2E_EXPERIMENT,
    FAST_CONFIG,
    SERVICE_URI,
    churn_frame,
    mlflow_run,
    post,
    served,
    session_env_root,
    sqlite_uri,
    use_store,
)

pytestmark = pytest.mark.system

STEPS = ("train_basic", "track", "register", "custom_model")
# Small and fast; the isolated uv check of custom_model has its own end-to-end test.
BASE = (FAST_CONFIG, "n_trials=2", "check_env_manager=none")
# The same values as BASE, typed otherwise: the cache must see no change.
BASE_RETYPED = (FAST_CONFIG, "n_trials=2.0", "check_env_manager=none")
# BASE with one of register's parameters changed.
CHANGED = (*BASE, "threshold=0.75")


@dataclass(frozen=True)
class MainRun:
    process: subprocess.CompletedProcess[str]
    run: Run

    @property
    def step_run_ids(self) -> dict[str, str]:
        return {step: self.run.data.tags[f"step.{step}.run_id"] for step in STEPS}

    @property
    def reused(self) -> dict[str, bool]:
        return {step: self.run.data.tags[f"step.{step}.reused"] == "true" for step in STEPS}

    def children(self) -> dict[str, Run]:
        """Entry point -> the child run `main` launched for it (reused steps have none)."""
        runs = mlflow.search_runs(
            experiment_ids=[self.run.info.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.run.info.run_id}'",
            output_format="list",
        )
        return {run.data.tags[MLFLOW_PROJECT_ENTRY_POINT]: run for run in runs}


def run_main(project: Path, store: str | None, *parameters: str, **options: object) -> MainRun:
    """`mlflow run <project>` (entry point main) and the main run it made."""
    process = mlflow_run(project, store, "main", *parameters, **options)
    use_store(store or sqlite_uri(project / "mlflow.db"))
    experiment = str(options.get("experiment", E2E_EXPERIMENT))
    (newest,) = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = 'main'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return MainRun(process, newest)


def champion_version(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)


@pytest.fixture(scope="module")
def first(project: Path) -> MainRun:
    """A newcomer's path in a fresh store (the project's default ./mlflow.db): the step
    `scripts/train.sh` runs alone, then the first `mlflow run .`."""
    assert not (project / "mlflow.db").exists()
    alone = mlflow_run(project, None, "train_basic", FAST_CONFIG)
    assert alone.returncode == 0, alone.stderr[-5000:]
    chained = run_main(project, None, *BASE)
    assert chained.process.returncode == 0, chained.process.stderr[-5000:]
    return chained


def test_a_fresh_main_chains_the_steps_and_serves_a_champion(
    first: MainRun, project: Path, tmp_path: Path
) -> None:
    # The train_basic run made alone is reused: no second, identical version.
    assert first.reused == {step: step == "train_basic" for step in STEPS}
    basic = mlflow.get_run(first.step_run_ids["train_basic"])
    assert MLFLOW_PARENT_RUN_ID not in basic.data.tags and basic.info.status == "FINISHED"
    versions = mlflow.MlflowClient().search_model_versions("name = 'churn-classifier'")
    sources = [version.run_id for version in versions]
    assert basic.info.run_id in sources and len(set(sources)) == len(sources)

    children = first.children()
    assert set(children) == set(STEPS) - {"train_basic"}
    assert {step: run.info.run_id for step, run in children.items()} == {
        step: run_id for step, run_id in first.step_run_ids.items() if step != "train_basic"
    }
    assert all(run.info.status == "FINISHED" for run in children.values())
    # Run inside main's process (--env-manager local), each step's run is what `mlflow run`
    # makes: a project run with every MLproject parameter of its entry point.
    spec = load_project(str(project))
    for step, run in children.items():
        assert run.data.tags["mlflow.source.type"] == "PROJECT"
        assert run.data.tags["mlflow.source.git.commit"] == first.run.data.tags[Tag.GIT_COMMIT]
        assert set(spec.get_entry_point(step).parameters) <= set(run.data.params)
    tuned, review, service = (children[step] for step in STEPS[1:])

    # Run ids and model URIs went from step to step.
    assert tuned.data.tags[Tag.BASELINE_RUN_ID] == basic.info.run_id
    assert tuned.data.tags[f"{Tag.UPSTREAM_PREFIX}train_basic"] == basic.info.run_id
    assert tuned.data.metrics["baseline.roc_auc"] == basic.data.metrics["roc_auc"]
    better = max((basic, tuned), key=lambda run: run.data.metrics["roc_auc"])
    assert review.data.params["run_id"] == better.info.run_id
    assert review.data.tags[Tag.VERDICT] == "passed"
    champion_uri = f"models:/churn-classifier/{champion_version('churn-classifier')}"
    assert review.data.tags[Tag.CHAMPION_URI] == champion_uri
    assert service.data.params["model_uri"] == champion_uri
    assert service.data.tags[Tag.SOURCE_MODEL_URI] == champion_uri
    assert service.data.tags[f"{Tag.UPSTREAM_PREFIX}register"] == review.info.run_id
    versions = mlflow.MlflowClient().get_model_version_by_alias("churn-service", "champion")
    assert versions.run_id == service.info.run_id

    out = first.process.stdout
    assert "main: 4 steps, 1 reused" in out
    serve = "python -m tabular_mlops.cli.serve models:/churn-service@champion"
    serve += " --env-manager local -p 5001"
    assert f"serve it: {serve}" in out
    assert f"serve it: {serve}" in first.process.stderr  # custom_model's own hint too
    for noise in ("WARNING mlflow", "Failed to log", "looks like None"):
        assert noise not in first.process.stderr

    # Served-ready: the hint's command (on another port) answers for the champion.
    row = churn_frame().drop(columns=["customer_id", "churn"]).head(1)
    body = row.to_json(orient="split", index=False)
    store, env_root = sqlite_uri(project / "mlflow.db"), session_env_root(project)
    with served(store, "local", env_root, tmp_path, SERVICE_URI) as url:
        status, answer = post(url, f'{{"dataframe_split": {body}}}'.encode(), "application/json")
    assert status == 200, answer
    prediction = answer["predictions"]  # columnar: one list per output
    assert 0 <= prediction["probability"][0] <= 1
    assert prediction["model_version"] == [str(versions.version)]


@pytest.mark.browser
def test_the_ui_shows_the_runs_the_models_and_the_plots(
    first: MainRun, project: Path, tmp_path: Path
) -> None:
    """MLflow's UI on the chain's store, in a headless browser; screenshots in tmp_path (and,
    with UPDATE_SCREENSHOTS=1, those docs/getting-started.md shows)."""
    from playwright.sync_api import Page, sync_playwright

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--host", LOOPBACK, "--port", str(port)]
    command += ["--backend-store-uri", sqlite_uri(project / "mlflow.db"), "--workers", "1"]
    ui = f"http://{LOOPBACK}:{port}"
    basic_run_id = first.step_run_ids["train_basic"]
    experiment_id = first.run.info.experiment_id
    # Without MLflow's job runner (seven processes for GenAI jobs, on by default in
    # MLflow 3.17): nothing here submits a job, and they took 20 s of CPU beside the test.
    quiet = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (
        background_server(command, f"{ui}/health", tmp_path / "ui.log", 120, quiet),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))

        def opened(url: str) -> Page:
            # A page per address: the UI does not always redraw on a change of `#...` alone.
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            return page

        # The link train_basic prints opens the experiment on its training runs, named
        # after what ran (the steps main ran are folded under its run).
        page = opened(runs_page(ui, experiment_id))
        page.get_by_text("train_basic fast.yaml", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text(
            "main fast.yaml n_trials=2 check_env_manager=none", exact=True
        ).first.wait_for()
        page.screenshot(path=tmp_path / "experiment.png")
        screenshots.keep(tmp_path / "experiment.png", "ui-experiment.png")
        assert f"/experiments/{experiment_id}/runs" in page.url

        # The served model's page, with its description and alias (the pipeline's page is
        # the same page of the UI).
        page = opened(f"{ui}/#/models/churn-service")
        page.get_by_text("Serves decisions on churn = Yes").first.wait_for(timeout=30_000)
        page.get_by_text("champion").first.wait_for()
        page.screenshot(path=tmp_path / "model-churn-service.png")
        screenshots.keep(tmp_path / "model-churn-service.png", "ui-model.png")

        # The run page lists the evaluation's plots, and shows one.
        page = opened(f"{ui}/#/experiments/{experiment_id}/runs/{basic_run_id}/artifacts")
        for plot in ("roc_curve_plot.png", "confusion_matrix.png", "calibration_curve_plot.png"):
            page.get_by_text(plot, exact=True).first.wait_for(timeout=30_000)
        page.get_by_text("roc_curve_plot.png", exact=True).first.click()
        page.locator("img[src^='blob:']").first.wait_for(timeout=30_000)  # the plot, loaded
        page.screenshot(path=tmp_path / "run-plots.png")
        screenshots.keep(tmp_path / "run-plots.png", "ui-run-plots.png")
        browser.close()
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "experiment.png", "model-churn-service.png", "run-plots.png",
    ]  # fmt: skip


def test_a_second_main_reuses_every_step(first: MainRun, project: Path) -> None:
    again = run_main(project, None, *BASE_RETYPED)
    assert again.process.returncode == 0, again.process.stderr[-5000:]
    assert all(again.reused.values())
    assert again.step_run_ids == first.step_run_ids
    assert again.children() == {}
    assert "main: 4 steps, 4 reused" in again.process.stdout
    assert again.process.stderr.count("same inputs as run") == 4


def test_changing_one_parameter_reruns_that_step_and_the_later_ones(
    first: MainRun, project: Path
) -> None:
    changed = run_main(project, None, *CHANGED)
    assert changed.process.returncode == 0, changed.process.stderr[-5000:]
    assert changed.reused == {
        "train_basic": True,
        "track": True,
        "register": False,
        "custom_model": False,
    }
    assert set(changed.children()) == {"register", "custom_model"}
    for step in ("train_basic", "track"):
        assert changed.step_run_ids[step] == first.step_run_ids[step]
    review = changed.children()["register"]
    assert review.data.params["threshold"] == "0.75"
    assert review.data.tags[Tag.VERDICT] == "already_champion"


def test_a_failing_step_fails_main_and_moves_no_alias(first: MainRun, project: Path) -> None:
    before = champion_version("churn-service")
    # No conda here: custom_model's isolated check cannot run, so the step fails.
    failed = run_main(
        project, None, FAST_CONFIG, "n_trials=2", "threshold=0.75", "check_env_manager=conda",
        extra_env={"MLFLOW_CONDA_HOME": str(project / "no-conda")},
    )  # fmt: skip
    assert failed.process.returncode != 0
    assert failed.run.info.status == "FAILED"
    error = failed.run.data.tags[Tag.ERROR]
    assert error.startswith("step custom_model failed (run ")
    assert "failed to predict in isolated_env_conda" in error
    assert error in failed.process.stderr
    assert [run.info.status for run in failed.children().values()] == ["FAILED"]
    assert champion_version("churn-service") == before
