"""How fast `batch_score` scores, and in how much memory, beside its floors.

    python -m bench.batch [--rows 1000000] [--big-rows 3000000]

In a temporary store (nothing else is touched) it trains the pipeline on the shipped
churn config and wraps it (`train_basic`, `custom_model` without the isolated check), then
scores `--rows` rows resampled from the shipped table with 2% nulls added to every input
column (and `--big-rows` rows for the memory check):

- (a) the custom model's own `predict`, in process, 10,000-row batches of rows already in
  memory (no reading, no writing);
- (b) the pandas engine end to end: `python -m steps.batch_score`, Parquet in, Parquet out;
- (c) the Spark engine, the same command with `engine: spark` on `local[2]`;
- (d) Spark's own floor: a bare `pandas_udf` that encodes the rows and calls the booster
  (no MLflow, no schema enforcement), Parquet in, probabilities out, on `local[2]`;
- the pandas engine's peak RSS at `--big-rows` rows.

Engine figures are the job's own (the run's `seconds`: model load, read, score, write;
Spark's session start included on both Spark rows); process start-up is shown beside.
Peak RSS is the scoring process's own (with what it waited for). It prints the table and
the targets.
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from bench.pages import page
from bench.serving import bench_config, temporary_store
from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.jobs.wrap import custom_model

logger = logging.getLogger("bench.batch")
PROJECT_DIR = Path(__file__).resolve().parents[1]
BATCH = 10_000
NULL_SHARE = 0.02
SPARK_MASTER = "local[2]"

# Runs a command and prints its peak RSS in kB. Measured from a small launcher: a child
# forked from this (large) process would report this process's RSS as its own peak.
_PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""

# Spark's floor: the same rows, encoded and scored by the booster in a bare pandas UDF.
_SPARK_FLOOR_SCRIPT = """
import sys, time
from collections.abc import Iterator
import pandas as pd
from pyspark.sql import SparkSession, functions as F

pipeline_uri, source, target, master = sys.argv[1:5]
started = time.perf_counter()
spark = (SparkSession.builder.master(master).config("spark.ui.enabled", "false")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000").getOrCreate())

@F.pandas_udf("double")
def probability(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
    import mlflow
    from tabular_custom_model.encoding import FeatureEncoder
    pipeline = mlflow.sklearn.load_model(pipeline_uri)
    encoder, booster = FeatureEncoder.from_pipeline(pipeline), pipeline.steps[-1][1].booster_
    for rows in batches:
        yield pd.Series(booster.predict(encoder.encode(rows).matrix))

rows = spark.read.parquet(source)
features = [c for c in rows.columns if c != "customer_id"]
rows.select("customer_id", probability(F.struct(*features)).alias("probability")) \\
    .write.mode("overwrite").parquet(target)
print(time.perf_counter() - started)
spark.stop()
"""


@dataclass(frozen=True)
class Measured:
    what: str
    rows: int
    seconds: float  # the job's
    process_seconds: float | None = None
    peak_rss_mb: float | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def resampled(rows: int, seed: int) -> pd.DataFrame:
    """`rows` rows drawn from the shipped table (target dropped), unique ids, and 2% of
    every input column set to null."""
    table = pd.read_csv(PROJECT_DIR / "data" / "wa_churn.csv").drop(columns="churn")
    rng = np.random.default_rng(seed)
    frame = table.iloc[rng.integers(0, len(table), rows)].reset_index(drop=True)
    frame["customer_id"] = np.arange(rows)
    for column in frame.columns.drop("customer_id"):
        nulls = rng.random(rows) < NULL_SHARE
        if frame[column].dtype.kind in "iu":
            frame[column] = frame[column].astype(float)
        frame[column] = frame[column].mask(nulls)
    return frame


def build_model(config: ProjectConfig) -> tuple[str, str]:
    """The registered custom model and the pipeline it wraps, as version URIs."""
    trained = train_basic(config)
    wrapped = custom_model(config)
    custom_name = config.require_custom_model().registered_model_name
    return (
        f"models:/{custom_name}/{wrapped.registered_version}",
        f"models:/{config.tracking.registered_model_name}/{trained.registered_version}",
    )


def in_process(model_uri: str, source: Path) -> Measured:
    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    frame = pd.read_parquet(source).drop(columns="customer_id")
    batches = [frame.iloc[start : start + BATCH] for start in range(0, len(frame), BATCH)]
    model.predict(None, batches[0], {})  # warm up
    started = time.perf_counter()
    for batch in batches:
        model.predict(None, batch, {})
    return Measured("(a) custom model's own predict, in process", len(frame), _since(started))


def engine(
    what: str, config_path: Path, source: Path, output: Path, rows: int, *extra: str
) -> Measured:
    """`python -m steps.batch_score` as a process of its own: the job's time from its run,
    the process's wall time and peak RSS."""
    command = [sys.executable, "-c", _PEAK_RSS_LAUNCHER, sys.executable, "-m", "steps.batch_score"]
    command += ["--config", str(config_path), "--input", str(source), "--output", str(output)]
    started = time.perf_counter()
    done = subprocess.run([*command, *extra], cwd=PROJECT_DIR, capture_output=True, text=True)
    wall = _since(started)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(done.stdout.split()[-1])
    (run,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.entry_point = 'batch_score'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    assert run.data.metrics["rows"] == rows, run.data.metrics
    return Measured(what, rows, run.data.metrics["seconds"], wall, peak_kb / 1024)


def spark_floor(pipeline_uri: str, source: Path, output: Path, rows: int) -> Measured:
    environment = os.environ | {
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": str(PROJECT_DIR / "custom_model" / "src"),
    }
    started = time.perf_counter()
    arguments = [pipeline_uri, str(source), str(output), SPARK_MASTER]
    done = subprocess.run(
        [sys.executable, "-c", _SPARK_FLOOR_SCRIPT, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Spark floor failed:\n{done.stderr[-3000:]}")
    seconds = float(done.stdout.split()[-1])
    what = "(d) bare Spark pandas_udf calling the booster"
    return Measured(what, rows, seconds, _since(started))


def _since(started: float) -> float:
    return time.perf_counter() - started


def report(measured: list[Measured], big: Measured) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "rows": f"{m.rows:,}",
            "job s": round(m.seconds, 2),
            "rows/s": round(m.rows_per_second),
            "process s": None if m.process_seconds is None else round(m.process_seconds, 2),
            "peak RSS MB": None if m.peak_rss_mb is None else round(m.peak_rss_mb),
        }
        for m in [*measured, big]
    )
    table.index = [m.what for m in [*measured, big]]
    return table


def targets(measured: list[Measured], big: Measured) -> pd.DataFrame:
    local, pandas_engine, spark_engine, floor = measured
    assert pandas_engine.peak_rss_mb is not None and big.peak_rss_mb is not None
    rss, big_rss = pandas_engine.peak_rss_mb, big.peak_rss_mb
    checks = [
        ("(b) / (a), rows/s", pandas_engine.rows_per_second / local.rows_per_second, ">=", 0.7),
        ("(c) / (d), rows/s", spark_engine.rows_per_second / floor.rows_per_second, ">=", 0.7),
        (f"(b) peak RSS at {pandas_engine.rows:,} rows, MB", rss, "<=", 1024),
        (f"peak RSS {big.rows:,} / {pandas_engine.rows:,} rows", big_rss / rss, "<=", 1.1),
    ]
    return target_table(checks)


def target_table(checks: list[tuple[str, float, str, float]]) -> pd.DataFrame:
    """(target, measured, ">=" or "<=", bound) rows as a table, whether each is met."""
    return pd.DataFrame(
        [
            {
                "target": name,
                "measured": round(value, 3),
                "bound": f"{op} {bound}",
                "met": value >= bound if op == ">=" else value <= bound,
            }
            for name, value, op, bound in checks
        ]
    ).set_index("target")


@page("Batch scoring: pandas and Spark engines")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=3_000_000)
    args = parser.parse_args(argv)
    configure_logging()
    started = time.monotonic()
    with temporary_store("bench-batch-") as directory:
        config = bench_config(directory)
        logger.info("building the model in %s", directory)
        model_uri, pipeline_uri = build_model(config)
        settings = config.model_dump(mode="json")
        settings["batch"] |= {"model_uri": model_uri, "spark": {"master": SPARK_MASTER}}
        config_path = directory / "bench.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        logger.info("writing %d and %d rows", args.rows, args.big_rows)
        source, big_source = directory / "rows.parquet", directory / "big.parquet"
        resampled(args.rows, seed=1).to_parquet(source, index=False)
        resampled(args.big_rows, seed=2).to_parquet(big_source, index=False)
        logger.info("(a) in process")
        local = in_process(model_uri, source)
        logger.info("(b) pandas engine")
        pandas_engine = engine(
            "(b) pandas engine, end to end", config_path, source, directory / "b", args.rows
        )
        logger.info("(c) Spark engine")
        spark_engine = engine(
            f"(c) Spark engine, {SPARK_MASTER}",
            config_path,
            source,
            directory / "c",
            args.rows,
            "--engine",
            "spark",
        )
        logger.info("(d) Spark floor")
        floor = spark_floor(pipeline_uri, source, directory / "d", args.rows)
        logger.info("pandas engine at %d rows", args.big_rows)
        big = engine(
            "(b) pandas engine, end to end",
            config_path,
            big_source,
            directory / "big",
            args.big_rows,
        )
    measured = [local, pandas_engine, spark_engine, floor]
    print("\n## batch scoring\n")
    print(report(measured, big).to_markdown())
    print("\n## targets\n")
    checks = targets(measured, big)
    print(checks.to_markdown())
    print(f"\n{int(checks['met'].sum())} of {len(checks)} targets met; bench took "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
