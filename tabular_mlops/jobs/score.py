"""The `batch_score` job: a table in, a Parquet folder of the custom model's answers out,
with pandas on this machine (jobs.pandas_engine) or with Spark (jobs.spark_engine).

What both engines share: the model resolved to a registered version, checked to be this
project's custom model (jobs.scoring_model) and safe to load (mlflow.model_trust), the
input checked and typed as the model declares its inputs, the output written under a
temporary name and renamed when complete (jobs.score_io), and the figures of the run."""

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.names import Tag
from tabular_mlops.jobs import score_io, scoring_model
from tabular_mlops.jobs.entry_points import BATCH_SCORE
from tabular_mlops.jobs.pandas_engine import score_with_pandas
from tabular_mlops.mlflow import datasets, runs
from tabular_mlops.mlflow.model_trust import LoadPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchScoreResult:
    run_id: str
    model_uri: str  # models:/<name>/<version> that answered
    output: Path
    metrics: dict[str, float]


def batch_score(config: ProjectConfig) -> BatchScoreResult:
    settings = config.batch
    if settings.input is None or settings.output is None:
        raise ConfigError("batch_score needs an input and an output: -P input=... -P output=...")
    uri = scoring_model.model_to_use(config, settings.model_uri)
    threads = config.compute.resolved_threads()
    with (
        runs.project_run(config, BATCH_SCORE.name, None, BATCH_SCORE.summary) as run,
        tempfile.TemporaryDirectory(prefix="scoring-model-") as scratch,
    ):
        runs.log_config(config)
        model = scoring_model.resolve_model(uri)
        mlflow.set_tag(Tag.SCORED_WITH, model.uri)
        checked = LoadPolicy.of(config).checked(model.uri, Path(scratch))
        source = score_io.open_input(settings.input, model.inputs, config.data.id_columns)
        datasets.log_file_input(source.path, source.digest, context="scoring")
        mlflow.set_tag(Tag.OUTPUT_PATH, str(settings.output.resolve()))
        started = time.perf_counter()
        with (
            score_io.staged_output(settings.output, settings.overwrite, run.info.run_id) as staging,
            checked.loading() as model_dir,  # Spark's JVM and workers inherit it
        ):
            if settings.engine == "spark":
                from tabular_mlops.jobs.spark_engine import score_with_spark  # starts a JVM

                summary = score_with_spark(model, model_dir, source, staging, settings, threads)
            else:
                summary = score_with_pandas(model, model_dir, source, staging, settings, threads)
        seconds = time.perf_counter() - started
        if not summary.rows:
            logger.warning("input %s has no rows: the output holds its schema only", source.path)
        metrics = scoring_model.log_summary(summary, seconds, model, settings)
    logger.info(
        "%s: %d rows scored by %s in %.1f s (%.0f rows/s), decision rate %.3f",
        settings.output,
        summary.rows,
        model.uri,
        seconds,
        metrics["rows_per_second"],
        metrics["decision_rate"],
    )
    return BatchScoreResult(run.info.run_id, model.uri, settings.output, metrics)
