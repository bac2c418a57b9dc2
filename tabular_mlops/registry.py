"""Model registry: versions and aliases (stages are deprecated in MLflow 3)."""

import logging

import mlflow
from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)


def alias_uri(registered_model_name: str, alias: str) -> str:
    return f"models:/{registered_model_name}@{alias}"


def register(model_uri: str, registered_model_name: str, alias: str) -> ModelVersion:
    """Register `model_uri` as a new version and point `alias` at it."""
    version = mlflow.register_model(model_uri, registered_model_name)
    mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version.version)
    logger.info("registered %s version %s, alias %r", registered_model_name, version.version, alias)
    return version
