"""Entry point `train_basic`: train, evaluate, log and register one LightGBM pipeline."""

import argparse
import logging
from dataclasses import dataclass

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tabular_mlops import chain, data, descriptions, interrupts, packaging, registry, tracking
from tabular_mlops.chain import env_manager_of
from tabular_mlops.cli import (
    boolean,
    config_parser,
    configure_logging,
    number,
    run_with_config,
    unset_or,
    whole_number,
)
from tabular_mlops.config import HEADLINE_METRICS, ProjectConfig
from tabular_mlops.redaction import redact

ENTRY_POINT = "train_basic"
logger = logging.getLogger(__name__)

# Parameter -> config key it overrides.
OVERRIDES = {
    "data_path": "data.path",
    "target": "data.target",
    "positive_label": "data.positive_label",
    "test_size": "split.test_size",
    "seed": "split.seed",
    "n_estimators": "model.n_estimators",
    "learning_rate": "model.learning_rate",
    "num_leaves": "model.num_leaves",
    "registered_model_name": "tracking.registered_model_name",
    "alias": "tracking.alias",
    "autolog": "tracking.autolog",
}


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: int
    metrics: dict[str, float]


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    text = unset_or(str)
    parser.add_argument("--data-path", type=text)
    parser.add_argument("--target", type=text)
    parser.add_argument("--positive-label", type=text)
    parser.add_argument("--test-size", type=unset_or(number))
    parser.add_argument("--seed", type=unset_or(whole_number))
    parser.add_argument("--n-estimators", type=unset_or(whole_number))
    parser.add_argument("--learning-rate", type=unset_or(number))
    parser.add_argument("--num-leaves", type=unset_or(whole_number))
    parser.add_argument("--registered-model-name", type=text)
    parser.add_argument("--alias", type=text)
    parser.add_argument("--autolog", type=unset_or(boolean))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def train_basic(config: ProjectConfig) -> TrainResult:
    # Heavy (sklearn, LightGBM): imported when the step runs, so that `main`, which imports
    # every step to check its parameters, finds cached steps without loading them (1.2 s).
    from tabular_mlops import evaluation, pipeline_flavor
    from tabular_mlops.pipeline import build_pipeline

    with tracking.project_run(config, ENTRY_POINT, summary=__doc__) as run:
        tracking.log_config(config)
        table = data.load_table(config.data)
        tracking.log_dataset(table)
        parts = data.split(table, config.split)
        logger.info("train %d rows, test %d rows", len(parts.y_train), len(parts.y_test))

        code = packaging.ShippedCode.build(config.model_code)
        threads = config.compute.resolved_threads()
        pipeline = build_pipeline(table.spec, config.model, config.split.seed, threads)
        with tracking.autologged(config.tracking.autolog):
            pipeline.fit(parts.X_train, parts.y_train)
        model_info = pipeline_flavor.log_pipeline(
            pipeline, parts.X_train, table.raw, config.tracking, code
        )

        metrics = evaluation.log_test_evaluation(
            pipeline, model_info.model_uri, parts.X_test, parts.y_test
        )
        metrics |= evaluation.log_f1_threshold_metrics(
            pipeline, parts.X_train, parts.y_train, parts.X_test, parts.y_test, config.split.seed
        )

        name, alias = config.tracking.registered_model_name, config.tracking.alias
        described = descriptions.pipeline_model(config, table.spec.numeric, table.spec.categorical)
        version = registry.register_run_model(
            run.info.run_id, model_info.model_uri, name, described
        )
        registry.move_alias(name, alias, version.version)
        # Run alone (scripts/train.sh), keyed as `main` would run it: `main` then reuses it.
        chain.key_run_alone(ENTRY_POINT, OVERRIDES, config, table.digest)
        rows = config.tracking.prediction_sample_rows
        evaluation.log_sample_predictions(
            registry.alias_uri(name, alias),
            parts.X_test.head(rows),
            parts.y_test.head(rows),
            parts.ids_test.head(rows),
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
            env_manager_of(run),
        ):
            logger.info("next: %s", line)
    return TrainResult(run.info.run_id, model_info.model_uri, version.version, metrics)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    return run_with_config(parse_args(argv), OVERRIDES, train_basic)


if __name__ == "__main__":
    interrupts.run_as_process(main)
