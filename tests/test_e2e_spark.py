"""End to end, with Spark: `batch_score --engine spark` answers exactly as the custom model
does in process (Parquet parts without reasons, a CSV with reasons), on a local session and
on a standalone cluster of this machine (test_support.spark_cluster), where `monitor
--engine spark` gives the pandas engine's figures; and both registered models answer
through `mlflow.pyfunc.spark_udf` as they do in process.

All in this process, in one JVM for the module: Spark's start-up is the cost here, not the
rows (`mlflow run -e batch_score` itself is tested with the pandas engine)."""

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from steps import batch_score as batch_score_step
from steps import monitor as monitor_step
from tabular_mlops.core.names import Tag
from tabular_mlops.jobs.spark_engine import spark_session
from test_support.spark_cluster import standalone_cluster
from tests.conftest import (
    leave_no_run_behind,
    point_mlflow_at,
    shipped_config,
    shipped_config_file,
    use_store,
)
from tests.test_e2e_batch_score import (
    ID,
    ROWS,
    Scoring,
    assert_same_answers,
    in_process_answers,
    score_in_process,
    scoring,  # noqa: F401 (the module's fixture)
    the_run,
)
from tests.test_e2e_clients import (
    PIPELINE,
    SERVICE,
    TARGET,
    Store,
    assert_same,
    expected,  # noqa: F401 (the module's fixture)
    store,  # noqa: F401 (the module's fixture)
)

pytestmark = [pytest.mark.system, pytest.mark.spark]
# The driver (this process) on loopback, where the workers reach it; small executors.
CLUSTER_CONF = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.executor.memory": "512m",
    "spark.executor.cores": "1",
}


@pytest.fixture(scope="module", autouse=True)
def one_jvm() -> Iterator[None]:
    """Each test stops its session, not the JVM behind it (started by PySpark once per
    Python process): the next session starts in seconds. Stopped with the module, or it
    would idle, using CPU, to the end of the suite."""
    yield
    stop_spark_jvm()


def stop_spark_jvm() -> None:
    """PySpark's JVM ends when its stdin closes."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    gateway.proc.stdin.close()
    gateway.proc.wait(timeout=30)
    SparkContext._gateway = SparkContext._jvm = None


def test_the_spark_engine_reads_a_csv_and_explains_as_the_model_does(
    scoring: Scoring,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A CSV whose missing values are spelt as pandas reads them, with reasons
    # (array<struct> through the UDF).
    rows = scoring.rows.head(2_000)
    csv, output = tmp_path / "rows.csv", tmp_path / "scores"
    rows.to_csv(csv, index=False, na_rep="NA")
    args = ["--input", str(csv), "--output", str(output), "--engine", "spark"]
    assert score_in_process(scoring, monkeypatch, *args, "--explain", "true") == 0
    use_store(scoring.store)
    written = pd.read_parquet(output)
    assert_same_answers(written, in_process_answers(rows, {"explain": True}))
    assert all(len(reasons) == 3 for reasons in written["reasons"])


def test_batch_score_on_a_standalone_cluster_answers_as_the_model_does(
    scoring: Scoring,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`batch.spark.master` pointing at a Spark standalone cluster (a master and two
    workers, JVMs of their own, from PySpark's scripts): the model travels to the executors
    (MLflow's spark_udf ships the checked copy), input and output on this machine's disk
    (a cluster's shared storage here); the answers are the model's own, to 1e-12. Parquet
    parts, without reasons: the UDF leaves them out and a typed null is added. (The next
    test runs the engine on a local session.)"""
    started = time.monotonic()
    with standalone_cluster(tmp_path / "cluster") as master:
        up = time.monotonic() - started
        cluster_config = tmp_path / "cluster.yaml"
        settings = {
            "extends": str(shipped_config_file(scoring.directory)),
            "batch": {"spark": {"master": master, "conf": CLUSTER_CONF}},
        }
        cluster_config.write_text(yaml.safe_dump(settings))
        output = tmp_path / "scores-cluster"
        argv = ["--config", str(cluster_config), "--input", str(scoring.parquet_parts)]
        argv += ["--output", str(output), "--engine", "spark", "--threshold", "0.3"]
        point_mlflow_at(scoring.directory, monkeypatch)
        # Monitored: the first part's rows, with outcomes (any will do: both engines).
        night = scoring.parquet_parts / "a.parquet"
        labels, rows = tmp_path / "outcomes.csv", len(pd.read_parquet(night, columns=[ID]))
        outcomes = np.random.default_rng(0).random(rows) < 0.3
        scoring.rows[[ID]].head(rows).assign(churn=np.where(outcomes, "Yes", "No")).to_csv(
            labels, index=False
        )
        monitoring = ["--config", str(cluster_config), "--input", str(night)]
        monitoring += ["--labels", str(labels)]
        try:
            with caplog.at_level(logging.INFO):
                assert batch_score_step.main(argv) == 0
                assert monitor_step.main([*monitoring, "--engine", "spark"]) == 0
        finally:
            leave_no_run_behind()
        assert monitor_step.main([*monitoring, "--engine", "pandas"]) == 0
        leave_no_run_behind()
    for stage in ("reading", "scoring and writing", "summing up", "scoring and counting"):
        assert f"spark: {stage}" in caplog.text
    on_spark, on_pandas = monitor_runs(scoring.store)
    assert on_spark.data.tags[Tag.VERDICT] == on_pandas.data.tags[Tag.VERDICT]
    assert on_spark.data.tags[Tag.VERDICT_REASONS] == on_pandas.data.tags[Tag.VERDICT_REASONS]
    figures = on_pandas.data.metrics
    assert figures["rows"] == ROWS // 2 and figures["labelled_rows"] == ROWS // 2
    assert on_spark.data.metrics.keys() == figures.keys() and len(figures) > 80
    for name, value in on_spark.data.metrics.items():
        assert value == pytest.approx(figures[name], abs=1e-9), name
    use_store(scoring.store)
    expected_answers = in_process_answers(scoring.rows, {"threshold": 0.3})
    written = pd.read_parquet(output)
    assert_same_answers(written, expected_answers)
    assert written["reasons"].isna().all()
    run = the_run(scoring.store)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows"] == ROWS
    assert run.data.metrics["decision_rate"] == pytest.approx(expected_answers["decision"].mean())
    print(f"cluster up in {up:.1f} s; the test took {time.monotonic() - started:.1f} s")


def monitor_runs(tracking_store: str) -> list[mlflow.entities.Run]:
    use_store(tracking_store)
    return mlflow.search_runs(
        experiment_names=["churn"],
        filter_string=f"tags.{Tag.ENTRY_POINT} = 'monitor'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def test_spark_udf_on_the_csv_as_spark_reads_it(
    store: Store,  # noqa: F811
    expected: dict[tuple[str, str], pd.DataFrame],  # noqa: F811
) -> None:
    from pyspark.sql import functions as F

    mlflow.set_tracking_uri(store.uri)
    session = spark_session(shipped_config().batch.spark, threads=2)
    try:
        for form, path in store.tables.items():
            frame = session.read.option("header", True).option("inferSchema", True).csv(str(path))
            inputs = [name for name in frame.columns if name != TARGET]
            assert dict(frame.dtypes)["tenure"] == "int"  # with nulls in the gaps
            service = mlflow.pyfunc.spark_udf(
                session,
                SERVICE,
                result_type="probability double, decision boolean, risk_band string",
                env_manager="local",
            )
            pipeline = mlflow.pyfunc.spark_udf(
                session, PIPELINE, result_type="long", env_manager="local"
            )
            # The columns by name, as one struct (the models declare their inputs in
            # `model_config`, so MLflow names unnamed columns 0, 1, ...).
            rows = F.struct(*inputs)
            got = (
                frame.select(service(rows).alias("answer"), pipeline(rows).alias("class"))
                .select("answer.*", "class")
                .toPandas()
            )
            answers = got[["probability", "decision", "risk_band"]]
            assert_same(answers, expected[SERVICE, form], f"spark {form}")
            assert_same(got[["class"]].astype(int), expected[PIPELINE, form], f"spark {form}")
    finally:
        session.stop()
