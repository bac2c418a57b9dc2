"""The `custom_model` job: wrap the registered pipeline in the custom pyfunc model, check it
serves the same answers everywhere (jobs.checks), register it and point its alias at it."""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.models import Model

from tabular_mlops.core import data, thresholds
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import ModelType, Tag, Verdict
from tabular_mlops.jobs import checks, step_cache
from tabular_mlops.jobs.entry_points import CUSTOM_MODEL
from tabular_mlops.mlflow import (
    datasets,
    descriptions,
    evaluation,
    pipeline_model,
    registry,
    runs,
    service_model,
)
from tabular_mlops.mlflow.model_trust import LoadPolicy
from tabular_mlops.mlflow.shipped_code import ShippedCode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomModelResult:
    run_id: str
    model_uri: str  # the logged wrapper
    source_uri: str  # the pipeline it wraps, by version
    registered_version: int
    threshold: float
    metrics: dict[str, float]


def custom_model(config: ProjectConfig, model_uri: str | None = None) -> CustomModelResult:
    custom = config.require_custom_model()
    name = custom.registered_model_name
    with (
        runs.project_run(config, CUSTOM_MODEL.name, ModelType.WRAPPER, CUSTOM_MODEL.summary) as run,
        tempfile.TemporaryDirectory(prefix="custom-model-") as scratch,
    ):
        runs.log_config(config)
        source_uri = model_uri or registry.first_alias_version_uri(
            config.tracking.registered_model_name, custom.source_aliases
        )
        mlflow.set_tag(Tag.SOURCE_MODEL_URI, source_uri)
        policy = LoadPolicy.of(config)
        source = policy.checked(source_uri, Path(scratch) / pipeline_model.PIPELINE_ARTIFACT)
        with source.loading() as pipeline_dir:
            pipeline = mlflow.sklearn.load_model(str(pipeline_dir))

        table = data.load_table(config.data)
        datasets.log_dataset(table)
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

        code = ShippedCode.build(config.model_code)
        mlflow.set_tag(Tag.WHEEL, code.wheel.name)
        inputs = pipeline_model.declared_inputs(Model.load(source.local))
        settings = service_model.model_config(tuned.threshold, custom, inputs)
        info = service_model.log_wrapped_model(
            source.local, settings, code, config.tracking.model_name
        )
        mlflow.set_tag(Tag.MODEL_URI, info.model_uri)

        version = registry.register_run_model(
            run.info.run_id, info.model_uri, name, descriptions.service_model(config)
        )
        registered = policy.checked(version.uri, Path(scratch) / "registered")
        try:
            with registered.loading() as model_dir:  # in this process and the checks' own
                checks.check_answers(
                    model_dir, custom.check_env_manager, custom.check_timeout_seconds
                )
        except PromotionError:
            registry.set_review(name, version.version, Verdict.FAILED_CHECK)
            raise
        registry.set_review(name, version.version, Verdict.PASSED)
        registry.move_alias(name, custom.alias, version.version)
        registry.record_alias(name, custom.alias, version.version)
    serve = descriptions.serve_command(
        registry.alias_uri(name, custom.alias), step_cache.env_manager_of(run)
    )
    logger.info("serve it: %s", serve)
    return CustomModelResult(
        run.info.run_id, info.model_uri, source_uri, version.version, tuned.threshold, metrics
    )
