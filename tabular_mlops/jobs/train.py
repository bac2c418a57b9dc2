"""The `train_basic` job: train, evaluate, log and register one LightGBM pipeline."""

import logging
from dataclasses import dataclass

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tabular_mlops.core import data
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.pipeline import build_pipeline, check_lightgbm_names
from tabular_mlops.core.redaction import redact
from tabular_mlops.core.sections import HEADLINE_METRICS
from tabular_mlops.jobs import step_cache
from tabular_mlops.jobs.entry_points import TRAIN_BASIC
from tabular_mlops.mlflow import datasets, descriptions, evaluation, pipeline_model, registry, runs
from tabular_mlops.mlflow.model_trust import LoadPolicy
from tabular_mlops.mlflow.shipped_code import ShippedCode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: int
    metrics: dict[str, float]


def train_basic(config: ProjectConfig) -> TrainResult:
    check_lightgbm_names(config.model, None)
    with runs.project_run(config, TRAIN_BASIC.name, summary=TRAIN_BASIC.summary) as run:
        runs.log_config(config)
        table = data.load_table(config.data)
        datasets.log_dataset(table)
        parts = data.split(table, config.split)
        logger.info("train %d rows, test %d rows", len(parts.y_train), len(parts.y_test))

        code = ShippedCode.build(config.model_code)
        threads = config.compute.model_threads(len(parts.y_train))
        pipeline = build_pipeline(table.spec, config.model, config.split.seed, threads)
        with runs.autologged(config.tracking.autolog):
            pipeline.fit(parts.X_train, parts.y_train)
        model_info = pipeline_model.log_pipeline(
            pipeline, parts.X_train, table.raw, config.tracking, code
        )

        metrics = evaluation.log_test_evaluation(
            pipeline, model_info.model_uri, parts.X_test, parts.y_test, LoadPolicy.of(config)
        )
        metrics |= evaluation.log_f1_threshold_metrics(
            pipeline, parts, config.split.seed, config.decision.cv_folds
        )
        evaluation.log_reference_profile(pipeline, table, parts.X_train, parts.X_test, metrics)

        name, alias = config.tracking.registered_model_name, config.tracking.alias
        described = descriptions.pipeline_model(config, table.spec.numeric, table.spec.categorical)
        version = registry.register_run_model(
            run.info.run_id, model_info.model_uri, name, described
        )
        registry.move_alias(name, alias, version.version)
        # Run alone (scripts/train.sh), keyed as `main` would run it: `main` then reuses it.
        step_cache.key_run_alone(TRAIN_BASIC, config, table.digest)
        rows = config.tracking.prediction_sample_rows
        evaluation.log_sample_predictions(
            registry.alias_uri(name, alias),
            parts.X_test.head(rows),
            parts.y_test.head(rows),
            parts.ids_test.head(rows),
            LoadPolicy.of(config),
        )
    for metric in HEADLINE_METRICS:
        logger.info("test %s = %.4f", metric, metrics[metric])
    if MLFLOW_PARENT_RUN_ID not in run.data.tags:  # run alone, not as a step of `main`
        experiment = mlflow.get_experiment(run.info.experiment_id)
        for line in descriptions.next_steps(
            redact(mlflow.get_tracking_uri()),
            experiment.name,
            experiment.experiment_id,
            registry.alias_uri(name, alias),
            step_cache.env_manager_of(run),
        ):
            logger.info("next: %s", line)
    return TrainResult(run.info.run_id, model_info.model_uri, version.version, metrics)
