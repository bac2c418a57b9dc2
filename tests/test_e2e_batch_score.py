"""End to end: `mlflow run . -e batch_score` answers exactly as the custom model does in
process, on 20,000 rows with nulls and unseen categories; what the run records; bad inputs
(the Spark engine on the same rows: tests/test_e2e_spark.py)."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tabular_custom_model import ChurnModel

from steps import batch_score as batch_score_step
from tabular_mlops.core.names import Tag
from tests.conftest import (
    churn_frame,
    copy_of_trained_store,
    leave_no_run_behind,
    mlflow_run,
    point_mlflow_at,
    shipped_config_file,
    use_store,
)

pytestmark = pytest.mark.system
ROWS = 20_000
ID = "customer_id"
MODEL = "models:/churn-service/1"  # what the fixture registers
PIPELINE = "models:/churn-classifier@latest-model"  # not the custom model


@dataclass(frozen=True)
class Scoring:
    directory: Path  # of the store
    store: str
    rows: pd.DataFrame  # ids and model inputs, as written to the inputs below
    parquet_parts: Path  # a folder of two Parquet files
    csv: Path


@pytest.fixture(scope="module")
def scoring(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Scoring:
    # The models to score with, made in process for the session (`mlflow run` of the steps
    # that make them is tested in their own modules, the isolated check too).
    folder = tmp_path_factory.mktemp("batch")
    store = copy_of_trained_store(trained_store, folder)
    rows = rows_to_score()
    parts = folder / "parts"
    parts.mkdir()
    half = ROWS // 2
    rows.iloc[:half].to_parquet(parts / "a.parquet", index=False)
    rows.iloc[half:].to_parquet(parts / "b.parquet", index=False)
    csv = folder / "rows.csv"
    rows.to_csv(csv, index=False)
    return Scoring(folder, store, rows, parts, csv)


def rows_to_score() -> pd.DataFrame:
    """20,000 rows resampled from the shipped table: unique ids, 2% nulls in every model
    input, and categories training never saw."""
    rng = np.random.default_rng(7)
    frame = churn_frame().drop(columns="churn").sample(ROWS, replace=True, random_state=7)
    frame = frame.reset_index(drop=True).assign(**{ID: np.arange(ROWS) + 100_000})
    for column in frame.columns.drop(ID):
        frame[column] = frame[column].astype(object).mask(rng.random(ROWS) < 0.02, None)
    frame.loc[::997, "contract"] = "Weekly"
    frame.loc[::1499, "payment_method"] = "Barter"
    return frame.infer_objects()


def in_process_answers(rows: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The model's own `predict`, loaded in this process, 10,000 rows at a time."""
    model = mlflow.pyfunc.load_model(MODEL)
    answers = [
        pd.DataFrame(model.predict(rows.iloc[start : start + 10_000].drop(columns=ID), params))
        for start in range(0, len(rows), 10_000)
    ]
    return pd.concat(answers, ignore_index=True).assign(**{ID: rows[ID].to_numpy()})


def assert_same_answers(written: pd.DataFrame, expected: pd.DataFrame) -> None:
    written = written.sort_values(ID).reset_index(drop=True)
    expected = expected.sort_values(ID).reset_index(drop=True)
    assert list(written.columns) == [ID, *expected.columns.drop(ID)]
    assert written[ID].tolist() == expected[ID].tolist()
    np.testing.assert_allclose(written["probability"], expected["probability"], rtol=0, atol=1e-12)
    for column in ("decision", "risk_band", "model_name", "model_version"):
        assert written[column].tolist() == expected[column].tolist(), column
    assert [_plain(v) for v in written["unseen_categories"]] == [
        _plain(v) for v in expected["unseen_categories"]
    ]
    assert any(v is not None for v in expected["unseen_categories"])  # some were exercised
    for got, want in zip(written["reasons"], expected["reasons"], strict=True):
        if want is None:
            assert got is None
            continue
        assert [r["feature"] for r in got] == [r["feature"] for r in want]
        np.testing.assert_allclose(
            [r["contribution"] for r in got], [r["contribution"] for r in want], atol=1e-12
        )


def _plain(value: Any) -> list[str] | None:
    return None if value is None else list(value)


def the_run(store: str) -> mlflow.entities.Run:
    use_store(store)
    (run,) = mlflow.search_runs(
        experiment_names=["churn"],
        filter_string=f"tags.{Tag.ENTRY_POINT} = 'batch_score'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return run


def test_the_pandas_engine_answers_as_the_model_does(scoring: Scoring, project: Path) -> None:
    output = scoring.parquet_parts.parent / "scores-pandas"
    done = mlflow_run(
        project,
        scoring.store,
        "batch_score",
        f"input={scoring.parquet_parts}",
        f"output={output}",
        "threshold=0.3",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch 2: 20,000/20,000 rows scored" in done.stderr
    use_store(scoring.store)
    expected = in_process_answers(scoring.rows, {"threshold": 0.3})
    assert_same_answers(pd.read_parquet(output), expected)
    assert [p.name for p in output.parent.iterdir() if p.name.startswith("scores-pandas")] == [
        "scores-pandas"  # no partial folder left beside it
    ]

    run = the_run(scoring.store)
    assert run.info.status == "FINISHED"
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["rows"] == ROWS
    assert metrics["decision_rate"] == pytest.approx(expected["decision"].mean())
    for band, count in expected["risk_band"].value_counts().items():
        assert metrics[f"risk_band.{band}"] == count
    assert metrics["rows_per_second"] > 0
    assert tags[Tag.SCORED_WITH] == MODEL
    assert tags[Tag.OUTPUT_PATH] == str(output)
    assert run.data.params["batch.threshold"] == "0.3"
    (scored_input,) = run.inputs.dataset_inputs
    assert scored_input.dataset.name == "parts"
    assert scored_input.tags[0].value == "scoring"
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "score_distribution.png" in artifacts


def test_a_model_that_is_not_the_custom_model_fails_the_run(
    scoring: Scoring, project: Path
) -> None:
    output = scoring.csv.parent / "never"
    done = mlflow_run(
        project,
        scoring.store,
        "batch_score",
        f"input={scoring.csv}",
        f"output={output}",
        f"model_uri={PIPELINE}",
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if " ERROR tabular_mlops" in line]
    assert len(errors) == 1
    assert f"model {PIPELINE} is not this project's custom model" in errors[0]
    assert "Traceback" not in done.stderr
    run = the_run(scoring.store)
    assert run.info.status == "FAILED"
    assert "is not this project's custom model" in run.data.tags[Tag.ERROR]
    assert not output.exists()


def score_in_process(scoring: Scoring, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """`batch_score` in this process, as a fresh process would run it (and leaving no
    experiment behind in the environment for later `mlflow run`s)."""
    point_mlflow_at(scoring.directory, monkeypatch)
    try:
        config = shipped_config_file(scoring.directory)
        return batch_score_step.main(["--config", str(config), *argv])
    finally:
        leave_no_run_behind()


def test_missing_columns_are_named_before_spark_starts(
    scoring: Scoring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = tmp_path / "rows.parquet"
    scoring.rows.drop(columns=["tenure", "contract"]).head(50).to_parquet(rows)
    args = ["--input", str(rows), "--output", str(tmp_path / "out"), "--engine", "spark"]
    with caplog.at_level(logging.INFO):
        assert score_in_process(scoring, monkeypatch, *args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"input {rows} lacks required column(s): tenure, contract"]
    assert not any("spark:" in r.getMessage() for r in caplog.records)
    run = the_run(scoring.store)
    assert run.info.status == "FAILED"
    assert not (tmp_path / "out").exists()


def test_an_empty_input_gives_an_empty_output_with_the_schema(
    scoring: Scoring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = tmp_path / "rows.csv"
    scoring.rows.head(0).to_csv(rows, index=False)
    output = tmp_path / "out"
    args = ["--input", str(rows), "--output", str(output)]
    assert score_in_process(scoring, monkeypatch, *args) == 0
    written = pq.read_table(output)
    assert written.num_rows == 0
    assert written.schema.names == [ID, *ChurnModel.output_schema().input_names()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"input {rows} has no rows: the output holds its schema only" in warnings
    assert the_run(scoring.store).data.metrics["rows"] == 0


def test_an_existing_output_is_kept_unless_overwrite(
    scoring: Scoring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = tmp_path / "rows.parquet"
    scoring.rows.head(30).to_parquet(rows)
    output = tmp_path / "out"
    args = ["--input", str(rows), "--output", str(output)]
    assert score_in_process(scoring, monkeypatch, *args) == 0
    first = the_run(scoring.store).info.run_id
    assert score_in_process(scoring, monkeypatch, *args) == 1  # exists: kept
    assert the_run(scoring.store).info.status == "FAILED"
    assert score_in_process(scoring, monkeypatch, *args, "--overwrite", "true") == 0
    assert len(pd.read_parquet(output)) == 30
    assert the_run(scoring.store).info.run_id != first
    # A folder of someone else's, with the marker planted: still not ours to delete.
    (output / "keep.txt").write_text("earlier results")
    assert score_in_process(scoring, monkeypatch, *args, "--overwrite", "true") == 1
    assert (output / "keep.txt").read_text() == "earlier results"


def test_an_unreadable_input_fails_the_run(
    scoring: Scoring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = tmp_path / "rows.parquet"
    rows.write_bytes(b"\x00\x01 not a parquet file")
    args = ["--input", str(rows), "--output", str(tmp_path / "out")]
    assert score_in_process(scoring, monkeypatch, *args) == 1
    run = the_run(scoring.store)
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.ERROR].startswith(f"cannot read input {rows}")


def test_a_model_version_that_does_not_exist_fails_the_run(
    scoring: Scoring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = ["--input", str(scoring.csv), "--output", str(tmp_path / "out")]
    for uri in ("models:/churn-service/99", "models:/churn-service@nowhere"):
        assert score_in_process(scoring, monkeypatch, *args, "--model-uri", uri) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors[-1].startswith(f"model {uri} ")
        assert the_run(scoring.store).info.status == "FAILED"
