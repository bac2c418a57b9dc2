"""The Spark engine of `batch_score` and `monitor`: the same model, as a Spark UDF, on a
local session or a cluster. Imported only when an engine is spark (PySpark starts a JVM)."""

import functools
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pyarrow as pa
from pyspark import StorageLevel, cloudpickle
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_type
from pyspark.sql.types import DoubleType, StructField, StructType

from tabular_mlops.core import monitoring
from tabular_mlops.core.batch_sections import BatchConfig, SparkConfig
from tabular_mlops.jobs.score_io import ScoringInput, output_schema
from tabular_mlops.jobs.scoring_model import (
    DECISION,
    HISTOGRAM_BINS,
    PROBABILITY,
    REASONS,
    RISK_BAND,
    ScoreSummary,
    ScoringModel,
    batch_rows,
    request_params,
)

logger = logging.getLogger(__name__)
# PySpark 4.2 warns on every pandas UDF that pandas 3 is not fully supported; the answers
# are tested identical to the pandas engine's.
warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)

# pandas' default spellings of a missing value (pd.read_csv), which the pandas engine's
# CSV reader (pyarrow) shares: a CSV means the same under both engines.
NA_SPELLINGS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
_LOCAL_DEFAULTS = {
    # Safe by default: the driver listens on loopback only, and no web UI is started.
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",  # its bar garbles the log; stages are logged
}


def spark_session(config: SparkConfig, threads: int) -> SparkSession:
    """A session on `config.master`, or a local one on `threads` cores."""
    # Spark's Python workers must run this interpreter (this environment's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = config.master or f"local[{threads}]"
    builder = SparkSession.builder.master(master).appName("batch_score")
    settings = (_LOCAL_DEFAULTS if master.startswith("local") else {}) | config.conf
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


@contextmanager
def _session(settings: BatchConfig, threads: int) -> Iterator[SparkSession]:
    logger.info("spark: starting a session (%s)", settings.spark.master or f"local[{threads}]")
    spark = spark_session(settings.spark, threads)
    try:
        yield spark
    finally:
        try:
            spark.stop()
        except Exception as error:  # its JVM killed already, after an interrupt
            logger.warning("spark: could not stop the session: %s", error)


def score_with_spark(
    model: ScoringModel,
    model_dir: Path,
    source: ScoringInput,
    staging: Path,
    settings: BatchConfig,
    threads: int,
) -> ScoreSummary:
    """Score with `mlflow.pyfunc.spark_udf` and write the answers with Spark; the summary
    comes from one aggregation over the written output."""
    with _session(settings, threads) as spark:
        # Each Arrow batch a Python worker gets is one call to the model: within max_rows.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", batch_rows(settings, model))
        schema = output_schema(model.outputs, source)
        answers = StructType(
            [
                StructField(field.name, from_arrow_type(field.type))
                for field in schema
                if field.name not in source.id_columns
                # A null array<struct> breaks MLflow's conversion of the UDF's result:
                # without explain, `reasons` is added as a typed null column instead.
                and (field.name != REASONS or settings.explain)
            ]
        )
        udf = mlflow.pyfunc.spark_udf(
            spark,
            str(model_dir),  # the checked copy; MLflow ships it to the executors
            result_type=answers,
            env_manager="local",
            params=request_params(settings),
        )
        logger.info("spark: reading %s (%s)", source.path, source.format)
        rows = _read(spark, source)
        answer = udf(*[F.col(name) for name in source.features])
        scored = rows.select(*source.id_columns, answer.alias("answer")).select(
            *source.id_columns, *(F.col(f"answer.{f.name}").alias(f.name) for f in answers)
        )
        if not settings.explain:
            reasons_type = from_arrow_type(schema.field(REASONS).type)
            scored = scored.withColumn(REASONS, F.lit(None).cast(reasons_type))
        logger.info("spark: scoring and writing %s", staging)
        scored.select(*schema.names).write.mode("overwrite").parquet(str(staging))
        logger.info("spark: summing up the answers")
        return _summary(spark.read.parquet(str(staging)))


def count_with_spark(
    reference: monitoring.Profile,
    model: ScoringModel,
    model_dir: Path,
    source: ScoringInput,
    labels: ScoringInput | None,
    settings: BatchConfig,
    threads: int,
) -> monitoring.Tally:
    """`monitor` on Spark: the scores from `mlflow.pyfunc.spark_udf`, the counts made in
    each partition by the pandas engine's own code (core.monitoring.count_frames) and
    summed by a groupBy: only the sums reach the driver, and they equal the pandas
    engine's. With `labels`, the matched rows' ids, scores and outcomes are collected."""
    # The counting code travels by value: executors need the model's packages only.
    cloudpickle.register_pickle_by_value(monitoring)
    with _session(settings, threads) as spark:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", batch_rows(settings, model))
        udf = mlflow.pyfunc.spark_udf(
            spark,
            str(model_dir),
            result_type=StructType([StructField(PROBABILITY, DoubleType())]),
            env_manager="local",
        )
        logger.info("spark: reading %s (%s)", source.path, source.format)
        answer = udf(*[F.col(name) for name in source.features])
        scored = _read(spark, source).withColumn(
            monitoring.SCORE_COLUMN, answer.getField(PROBABILITY)
        )
        if labels is not None:  # scored once, for the counts and the join
            scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
        logger.info("spark: scoring and counting against the reference")
        profiled = scored.select(
            *[F.col(f"`{name}`") for name in reference.columns], monitoring.SCORE_COLUMN
        )
        sums = (
            profiled.mapInPandas(
                functools.partial(monitoring.count_frames, reference),
                "feature string, slot int, count long",
            )
            .groupBy("feature", "slot")
            .agg(F.sum("count").alias("count"))
            .collect()
        )
        counts = monitoring.from_counted_rows(reference, sums)
        if labels is None:
            return monitoring.Tally(counts, None)
        ids = list(labels.id_columns)
        logger.info("spark: joining the outcomes %s", labels.path)
        joined = (
            scored.select(*ids, monitoring.SCORE_COLUMN)
            .join(_read(spark, labels), on=ids, how="inner")
            .orderBy(*ids, monitoring.SCORE_COLUMN)
            .toPandas()
        )
        scored.unpersist()
        return monitoring.Tally(counts, joined)


def _read(spark: SparkSession, source: ScoringInput) -> DataFrame:
    """The input typed as `source.schema` says, as the pandas engine reads it."""
    path = str(source.path)
    if source.format == "csv":
        # As text first: a missing value may be spelt NA, null, ... (NA_SPELLINGS).
        frame = spark.read.option("header", True).csv(path)
        columns = [_typed(_null_if_na(F.col(f"`{f.name}`")), f) for f in source.schema]
    else:
        frame = spark.read.parquet(path)
        columns = [_typed(F.col(f"`{f.name}`"), f) for f in source.schema]
    return frame.select(*columns)


def _null_if_na(column: Column) -> Column:
    return F.when(column.isin(list(NA_SPELLINGS)), F.lit(None)).otherwise(column)


def _typed(column: Column, field: pa.Field) -> Column:
    return column.cast(from_arrow_type(field.type)).alias(field.name)


def _summary(answers: DataFrame) -> ScoreSummary:
    """Rows, decisions, risk bands and the probability histogram in one aggregation."""
    bin_of = F.least(F.floor(F.col(PROBABILITY) * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1))
    groups = answers.groupBy(
        F.col(RISK_BAND), F.col(DECISION), bin_of.cast("int").alias("bin")
    ).count()
    summary = ScoreSummary()
    for band, decision, bin_number, count in groups.collect():
        summary.rows += count
        summary.decisions += count if decision else 0
        summary.bands[band] += count
        summary.histogram[bin_number] += count
    return summary
