"""Entry point `custom_model`: wrap the registered pipeline in the custom pyfunc model,
check it serves the same answers everywhere, register it and point its alias at it."""

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.models import Model

from tabular_mlops import data, descriptions, interrupts, packaging, registry, tracking
from tabular_mlops.chain import env_manager_of
from tabular_mlops.cli import (
    boolean,
    config_parser,
    configure_logging,
    run_with_config,
    unset_or,
    whole_number,
)
from tabular_mlops.config import ProjectConfig
from tabular_mlops.errors import PromotionError
from tabular_mlops.tags import Tag

ENTRY_POINT = "custom_model"
logger = logging.getLogger(__name__)

# Parameter -> config key it overrides.
OVERRIDES = {
    "data_path": "data.path",
    "registered_model_name": "custom_model.registered_model_name",
    "alias": "custom_model.alias",
    "objective": "custom_model.decision.objective",
    "check_env_manager": "custom_model.check_env_manager",
    "max_rows": "custom_model.max_rows",
    "allow_pickle": "trust.allow_pickle",
}


@dataclass(frozen=True)
class CustomModelResult:
    run_id: str
    model_uri: str  # the logged wrapper
    source_uri: str  # the pipeline it wraps, by version
    registered_version: int
    threshold: float
    metrics: dict[str, float]


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    text = unset_or(str)
    parser.add_argument("--model-uri", type=text)
    parser.add_argument("--data-path", type=text)
    parser.add_argument("--registered-model-name", type=text)
    parser.add_argument("--alias", type=text)
    parser.add_argument("--objective", type=text)
    parser.add_argument("--check-env-manager", type=text)
    parser.add_argument("--max-rows", type=unset_or(whole_number))
    parser.add_argument("--allow-pickle", type=unset_or(boolean))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def custom_model(config: ProjectConfig, model_uri: str | None = None) -> CustomModelResult:
    # Heavy (sklearn, LightGBM): imported when the step runs (see train_basic).
    from tabular_mlops import evaluation, pipeline_flavor, thresholds, wrapper

    custom = config.require_custom_model()
    name = custom.registered_model_name
    with (
        tracking.project_run(config, ENTRY_POINT, tracking.WRAPPER_MODEL_TYPE, __doc__) as run,
        tempfile.TemporaryDirectory(prefix="custom-model-") as scratch,
    ):
        tracking.log_config(config)
        source_uri = model_uri or registry.first_alias_version_uri(
            config.tracking.registered_model_name, custom.source_aliases
        )
        mlflow.set_tag(Tag.SOURCE_MODEL_URI, source_uri)
        registry.refuse_pickled(source_uri, config.trust.allow_pickle)
        pipeline_dir = Path(scratch) / pipeline_flavor.PIPELINE_ARTIFACT
        pipeline_dir.mkdir()
        mlflow.artifacts.download_artifacts(source_uri, dst_path=str(pipeline_dir))
        pipeline = mlflow.sklearn.load_model(str(pipeline_dir))

        table = data.load_table(config.data)
        tracking.log_dataset(table)
        parts = data.split(table, config.split)
        tuned = thresholds.tune_threshold(
            pipeline, parts.X_train, parts.y_train, custom.decision, config.split.seed
        )
        probability = pipeline.predict_proba(parts.X_test)[:, 1]
        metrics = evaluation.probability_metrics(parts.y_test, probability)
        metrics |= thresholds.decision_metrics(
            parts.y_test, probability, tuned.threshold, custom.decision.costs
        )
        mlflow.log_metrics(metrics | {"threshold": tuned.threshold, "cv_objective": tuned.cv_score})
        logger.info(
            "threshold %.3f (%s, CV %.4f); test split: %s",
            tuned.threshold,
            tuned.objective,
            tuned.cv_score,
            ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()),
        )

        code = packaging.ShippedCode.build(config.model_code)
        mlflow.set_tag(Tag.WHEEL, code.wheel.name)
        inputs = pipeline_flavor.declared_inputs(Model.load(pipeline_dir))
        settings = wrapper.model_config(tuned.threshold, custom, inputs)
        info = wrapper.log_wrapped_model(pipeline_dir, settings, code, config.tracking.model_name)
        mlflow.set_tag(Tag.MODEL_URI, info.model_uri)

        version = registry.register_run_model(
            run.info.run_id, info.model_uri, name, descriptions.service_model(config)
        )
        model_dir = Path(
            mlflow.artifacts.download_artifacts(version.uri, dst_path=f"{scratch}/registered")
        )
        try:
            wrapper.check_answers(model_dir, custom.check_env_manager, custom.check_timeout_seconds)
        except PromotionError:
            registry.set_review(name, version.version, "failed_check")
            raise
        registry.set_review(name, version.version, "passed")
        registry.move_alias(name, custom.alias, version.version)
        registry.record_alias(name, custom.alias, version.version)
    serve = descriptions.serve_command(registry.alias_uri(name, custom.alias), env_manager_of(run))
    logger.info("serve it: %s", serve)
    return CustomModelResult(
        run.info.run_id, info.model_uri, source_uri, version.version, tuned.threshold, metrics
    )


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    return run_with_config(args, OVERRIDES, lambda config: custom_model(config, args.model_uri))


if __name__ == "__main__":
    interrupts.run_as_process(main)
