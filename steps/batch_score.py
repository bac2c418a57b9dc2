"""Entry point `batch_score`: score a CSV/Parquet table with the custom model into a
Parquet folder, with pandas on this machine or with Spark."""

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from tabular_mlops import interrupts, registry, scoring, tracking
from tabular_mlops.cli import (
    boolean,
    config_parser,
    configure_logging,
    number,
    run_with_config,
    unset_or,
)
from tabular_mlops.config import ProjectConfig
from tabular_mlops.errors import ConfigError
from tabular_mlops.tags import Tag

ENTRY_POINT = "batch_score"
logger = logging.getLogger(__name__)

# Parameter -> config key it overrides.
OVERRIDES = {
    "input": "batch.input",
    "output": "batch.output",
    "model_uri": "batch.model_uri",
    "engine": "batch.engine",
    "explain": "batch.explain",
    "threshold": "batch.threshold",
    "overwrite": "batch.overwrite",
}


@dataclass(frozen=True)
class BatchScoreResult:
    run_id: str
    model_uri: str  # models:/<name>/<version> that answered
    output: Path
    metrics: dict[str, float]


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    text = unset_or(str)
    parser.add_argument("--input", type=unset_or(Path))
    parser.add_argument("--output", type=unset_or(Path))
    parser.add_argument("--model-uri", type=text)
    parser.add_argument("--engine", type=text)  # the config checks it
    parser.add_argument("--explain", type=unset_or(boolean))
    parser.add_argument("--threshold", type=unset_or(number))
    parser.add_argument("--overwrite", type=unset_or(boolean))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def batch_score(config: ProjectConfig) -> BatchScoreResult:
    settings = config.batch
    if settings.input is None or settings.output is None:
        raise ConfigError("batch_score needs an input and an output: -P input=... -P output=...")
    custom = config.require_custom_model()
    uri = settings.model_uri or registry.alias_uri(custom.registered_model_name, custom.alias)
    threads = config.compute.resolved_threads()
    with tracking.project_run(config, ENTRY_POINT, None, __doc__) as run:
        tracking.log_config(config)
        model = scoring.resolve_model(uri)
        mlflow.set_tag(Tag.SCORED_WITH, model.uri)
        source = scoring.open_input(settings.input, model, config.data.id_columns)
        tracking.log_file_input(source.path, source.digest, context="scoring")
        mlflow.set_tag(Tag.OUTPUT_PATH, str(settings.output.resolve()))
        started = time.perf_counter()
        with scoring.staged_output(settings.output, settings.overwrite) as staging:
            if settings.engine == "spark":
                from tabular_mlops.spark_scoring import score_with_spark  # starts a JVM

                summary = score_with_spark(model, source, staging, settings, threads)
            else:
                summary = scoring.score_with_pandas(model, source, staging, settings, threads)
        seconds = time.perf_counter() - started
        if not summary.rows:
            logger.warning("input %s has no rows: the output holds its schema only", source.path)
        metrics = scoring.log_summary(summary, seconds, model, settings)
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


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return run_with_config(parse_args(argv), OVERRIDES, batch_score)


if __name__ == "__main__":
    interrupts.run_as_process(main)
