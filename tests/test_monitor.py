"""The `monitor` entry point on the session's trained models: a quiet night, a drifted one,
outcomes flipped, and bad input, in process; one night through `mlflow run`, and the
retrain leg of the nightly loop."""

import logging
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from steps import monitor as monitor_step
from tabular_mlops.cli import nightly
from tabular_mlops.core.config import load_config
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.jobs.train import train_basic
from test_support import screenshots
from tests.conftest import (
    CHROMIUM,
    FAST_CONFIG_FILE,
    churn_frame,
    copy_of_trained_store,
    leave_no_run_behind,
    mlflow_run_environment,
    point_mlflow_at,
    shipped_config_file,
)

ID, TARGET = "customer_id", "churn"
MODEL = "models:/churn-service/1"


@pytest.fixture
def store(trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy_of_trained_store(trained_store, tmp_path)
    point_mlflow_at(tmp_path, monkeypatch)
    yield tmp_path
    leave_no_run_behind()


def night(seed: int = 0, rows: int = 5000) -> pd.DataFrame:
    """Rows resampled from the shipped table, ids unique, outcomes included."""
    frame = churn_frame().sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    return frame.assign(**{ID: np.arange(rows) + 1_000_000})


def drifted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["monthly_charges"] = frame["monthly_charges"] * 1.2
    frame["contract"] = frame["contract"].replace("Two year", "Three year")
    gaps = np.random.default_rng(0).random(len(frame)) < 0.2
    frame["tenure"] = frame["tenure"].astype(float).mask(gaps)
    return frame


def run_monitor(store: Path, frame: pd.DataFrame, labels: pd.DataFrame | None = None) -> int:
    inputs = store / "night.csv"
    frame.drop(columns=[TARGET]).to_csv(inputs, index=False)
    argv = ["--config", str(shipped_config_file(store)), "--input", str(inputs)]
    if labels is not None:
        labels.to_csv(store / "labels.csv", index=False)
        argv += ["--labels", str(store / "labels.csv")]
    return monitor_step.main(argv)


def monitor_run() -> mlflow.entities.Run:
    (run,) = mlflow.search_runs(
        experiment_names=["churn"],
        filter_string="tags.entry_point = 'monitor'",
        output_format="list",
    )
    return run


@pytest.mark.integration
def test_a_quiet_night_is_ok_and_logs_what_the_ui_charts(store: Path) -> None:
    assert run_monitor(store, night()) == 0
    run = monitor_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags[Tag.VERDICT] in ("ok", "warn")
    assert run.data.tags[Tag.MONITORED_MODEL] == MODEL
    assert {"drift_psi/tenure", "drift_distance/contract", "drift_psi/score"} <= set(
        run.data.metrics
    )
    report = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{Artifact.MONITOR_REPORT}")
    assert "Verdict: " in report and "data:image/png;base64," in report
    plots = mlflow.artifacts.list_artifacts(
        run_id=run.info.run_id, artifact_path=Artifact.MONITOR_PLOTS
    )
    assert any(p.path.endswith("score.png") for p in plots)


@pytest.mark.integration
def test_a_drifted_night_says_retrain_and_names_the_features(store: Path) -> None:
    assert run_monitor(store, drifted(night())) == 0
    tags = monitor_run().data.tags
    assert tags[Tag.VERDICT] == "retrain"
    reasons = tags[Tag.VERDICT_REASONS]
    for named in ("monthly_charges PSI", "contract unseen categories", "tenure missing +"):
        assert named in reasons
    assert "retrain" in tags[Tag.DESCRIPTION]


@pytest.mark.integration
def test_outcomes_flipped_give_a_realized_performance_retrain(store: Path) -> None:
    frame = night(1)
    labels = frame[[ID, TARGET]].copy()
    flipped = np.random.default_rng(3).random(len(labels)) < 0.3
    labels.loc[flipped, TARGET] = labels.loc[flipped, TARGET].map({"Yes": "No", "No": "Yes"})
    assert run_monitor(store, frame, labels) == 0
    run = monitor_run()
    assert run.data.tags[Tag.VERDICT] == "retrain"
    assert run.data.tags[Tag.VERDICT_REASONS].startswith("retrain: roc_auc")
    assert run.data.metrics["realized_roc_auc_high"] < run.data.metrics["realized_roc_auc"] + 0.1
    assert run.data.metrics["labelled_rows"] == len(frame)


@pytest.mark.integration
def test_honest_outcomes_raise_no_realized_alarm(store: Path) -> None:
    frame = night(2)
    assert run_monitor(store, frame, frame[[ID, TARGET]]) == 0
    run = monitor_run()
    assert "roc_auc" not in run.data.tags[Tag.VERDICT_REASONS]
    assert 0.75 < run.data.metrics["realized_roc_auc"] < 0.95


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("missing column", "lacks required column(s): tenure"),
        ("labels match nothing", "no row's customer_id matches a row of"),
    ],
)
def test_bad_input_is_one_line_and_a_failed_run(
    store: Path, caplog: pytest.LogCaptureFixture, case: str, line: str
) -> None:
    frame = night(3, rows=500)
    labels = None
    if case == "missing column":
        frame = frame.drop(columns=["tenure"])
    else:
        labels = frame[[ID, TARGET]].assign(**{ID: frame[ID] + 10**9})
    with caplog.at_level(logging.ERROR):
        assert run_monitor(store, frame, labels) == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line in error
    assert monitor_run().info.status == "FAILED"


@pytest.mark.integration
def test_an_empty_batch_is_ok_with_a_warning(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert run_monitor(store, night(4).head(0)) == 0
    tags = monitor_run().data.tags
    assert tags[Tag.VERDICT] == "ok" and "empty" in tags[Tag.VERDICT_REASONS]
    assert any("has no rows" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
@pytest.mark.browser
def test_the_report_opens_as_it_is_from_the_run(store: Path, tmp_path: Path) -> None:
    """The HTML report, downloaded from the run's artifacts, shows its verdict, its reasons
    and its plots in a browser with nothing else (the plots are inline)."""
    from playwright.sync_api import sync_playwright

    assert run_monitor(store, drifted(night(7))) == 0
    run_id = monitor_run().info.run_id
    report = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{Artifact.MONITOR_REPORT}"))
    shot = tmp_path / "monitor-report.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(report.as_uri())
        page.get_by_text("Verdict: retrain").wait_for(timeout=30_000)
        page.get_by_text("monthly_charges PSI", exact=False).first.wait_for()
        loaded = page.eval_on_selector_all(
            "img", "images => images.filter(i => i.complete && i.naturalWidth > 0).length"
        )
        page.screenshot(path=shot)
        browser.close()
    assert loaded >= 2  # the scores' plot and the most drifted features'
    assert shot.stat().st_size > 10_000
    screenshots.keep(shot, "monitor-report.png")  # docs/entry-points/monitor.md shows it


@pytest.mark.system
def test_a_drifted_night_through_mlflow_run_asks_for_its_outcomes(
    trained_store: Path, tmp_path: Path, project: Path
) -> None:
    """scripts/nightly.sh's loop as a user runs it: batch_score and monitor through
    `mlflow run`; a drifted night without outcomes ends `retrain` asking for them (exit 3),
    nothing trained. With outcomes: the next test (and `mlflow run .` itself:
    tests/test_e2e_main.py)."""
    store = copy_of_trained_store(trained_store, tmp_path)
    drifted(night(6, rows=3000)).drop(columns=[TARGET]).to_csv(tmp_path / "night.csv", index=False)
    command = [sys.executable, "-m", "tabular_mlops.cli.nightly"]
    command += ["--input", str(tmp_path / "night.csv"), "--output", str(tmp_path / "scores")]
    command += ["--config", str(FAST_CONFIG_FILE)]
    done = subprocess.run(
        command,
        cwd=project,
        env=mlflow_run_environment(project, store),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == nightly.NEEDS_LABELS, done.stderr[-4000:]
    assert "verdict: retrain" in done.stderr and "run again with --labels" in done.stderr
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("churn").experiment_id
    by_entry: dict[str | None, list[mlflow.entities.Run]] = {}
    for run in client.search_runs([experiment]):
        by_entry.setdefault(run.data.tags.get(Tag.ENTRY_POINT), []).append(run)
    assert {run.info.status for run in by_entry["batch_score"]} == {"FINISHED"}
    (judged,) = by_entry["monitor"]
    assert judged.data.tags[Tag.VERDICT] == "retrain"
    # Nothing trained: no chain, and only the trained store's own train_basic run.
    assert "main" not in by_entry and len(by_entry["train_basic"]) == 1


@pytest.mark.integration
def test_a_drifted_night_with_outcomes_retrains_on_them(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain leg: the night's rows joined with their outcomes become the chain's
    table, and `main` runs on it with the -P values given (here each `mlflow run` is
    recorded, and monitor runs in process); train_basic trains on that table."""
    frame = drifted(night(6, rows=3000))
    frame.drop(columns=[TARGET]).to_csv(store / "night.csv", index=False)
    frame[[ID, TARGET]].to_csv(store / "outcomes.csv", index=False)
    config = shipped_config_file(store)
    launched: list[tuple[str, dict[str, str]]] = []

    def recorded(entry_point: str, parameters: dict[str, str], args: object) -> str:
        launched.append((entry_point, parameters))
        if entry_point != "monitor":
            return f"{entry_point}-run"
        argv = ["--config", str(config), "--input", parameters["input"]]
        assert monitor_step.main([*argv, "--labels", parameters["labels"]]) == 0
        return monitor_run().info.run_id

    monkeypatch.setattr(nightly, "mlflow_run", recorded)
    argv = ["--input", str(store / "night.csv"), "--labels", str(store / "outcomes.csv")]
    argv += ["--output", str(store / "scores"), "--config", str(config), "-P", "n_trials=1"]
    assert nightly.main(argv) == 0
    assert [entry for entry, _ in launched] == ["batch_score", "monitor", "main"]
    parameters = launched[-1][1]
    assert parameters["n_trials"] == "1"
    table = Path(parameters["data_path"])
    assert table.name == "train-night.csv"
    joined = pd.read_csv(table)
    assert len(joined) == len(frame) and joined[TARGET].notna().all()
    trained = train_basic(load_config(config, {"data.path": str(table)}))
    assert mlflow.get_run(trained.run_id).info.status == "FINISHED"
