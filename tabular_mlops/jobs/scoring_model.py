"""The model `batch_score` scores with: resolved to a registered version, checked to be this
project's custom model, its request parameters, and what its answers add up to."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.model import MODEL_CONFIG
from mlflow.pyfunc import FLAVOR_NAME
from mlflow.types import Schema

from tabular_mlops.core.batch_sections import BatchConfig
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import Artifact
from tabular_mlops.core.plots import pyplot
from tabular_mlops.mlflow import registry
from tabular_mlops.mlflow.pipeline_model import declared_inputs

# Keys of the custom model's model_config and request params this module relies on
# (tabular_custom_model.Setting and Param).
MAX_ROWS_SETTING = "max_rows"
THRESHOLD_SETTING = "threshold"
BAND_LABELS_SETTING = "risk_band_labels"
EXPLAIN_PARAM = "explain"
THRESHOLD_PARAM = "threshold"
# Output fields of the custom model (tabular_custom_model.Output) that the run sums up.
PROBABILITY, DECISION, RISK_BAND, REASONS = "probability", "decision", "risk_band", "reasons"
_SUMMED_UP = (PROBABILITY, DECISION, RISK_BAND, REASONS)
HISTOGRAM_BINS = 50


class ModelError(UserInputError):
    """The model to score with cannot be found, or is not this project's custom model."""


@dataclass(frozen=True)
class ScoringModel:
    """The model a job scores with, pinned: an alias that moves mid-job changes nothing."""

    uri: str  # models:/<name>/<version> when registered, else the URI given
    inputs: Schema
    outputs: Schema
    max_rows: int
    threshold: float  # the model's own decision threshold
    band_labels: tuple[str, ...]

    def required_inputs(self) -> list[str]:
        return [str(name) for name in self.inputs.required_input_names()]


def model_to_use(config: ProjectConfig, given: str | None) -> str:
    """`given`, or the custom model's alias: what a job that scores uses by default."""
    custom = config.require_custom_model()
    return given or registry.alias_uri(custom.registered_model_name, custom.alias)


def resolve_model(uri: str) -> ScoringModel:
    """`uri` pinned to its registered version (an alias or a version URI), with what its
    MLmodel says; anything but this project's custom model is a ModelError."""
    pinned = uri
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        try:
            version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
        except MlflowException as error:
            raise ModelError(f"model {uri} not found: {error.message}") from None
        pinned = f"models:/{name}/{version}"
    try:
        info = mlflow.models.get_model_info(pinned)
    except (MlflowException, OSError) as error:
        reason = error.message if isinstance(error, MlflowException) else str(error)
        raise ModelError(f"model {uri} cannot be read: {' '.join(reason.split())}") from None
    settings = info.flavors.get(FLAVOR_NAME, {}).get(MODEL_CONFIG) or {}
    signature = info.signature
    outputs = signature.outputs.input_names() if signature and signature.outputs else []
    params = {param.name for param in signature.params} if signature and signature.params else set()
    if (
        MAX_ROWS_SETTING not in settings
        or not set(_SUMMED_UP) <= set(outputs)
        or not {EXPLAIN_PARAM, THRESHOLD_PARAM} <= params
    ):
        raise ModelError(
            f"model {uri} is not this project's custom model (outputs: "
            f"{', '.join(map(str, outputs)) or 'none'}): score with the `custom_model` "
            "entry point's model"
        )
    return ScoringModel(
        uri=pinned,
        inputs=declared_inputs(info),
        outputs=signature.outputs,
        max_rows=int(settings[MAX_ROWS_SETTING]),
        threshold=float(settings[THRESHOLD_SETTING]),
        band_labels=tuple(settings[BAND_LABELS_SETTING]),
    )


@dataclass
class ScoreSummary:
    """What the answers add up to, gathered batch by batch (or from Spark's aggregates)."""

    rows: int = 0
    decisions: int = 0
    bands: Counter[str] = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=int))

    def add(self, probability: np.ndarray, decision: np.ndarray, band: list[str]) -> None:
        self.rows += len(probability)
        self.decisions += int(np.count_nonzero(decision))
        self.bands.update(band)
        self.histogram += histogram_bins(probability)

    def metrics(self, seconds: float, band_labels: list[str]) -> dict[str, float]:
        figures = {
            "rows": self.rows,
            "seconds": seconds,
            "rows_per_second": self.rows / seconds if seconds > 0 else 0.0,
            "decision_rate": self.decisions / self.rows if self.rows else 0.0,
        }
        return figures | {f"risk_band.{label}": self.bands[label] for label in band_labels}


def histogram_bins(probability: np.ndarray) -> np.ndarray:
    return np.histogram(probability, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]


def request_params(settings: BatchConfig) -> dict[str, Any]:
    """The model's request parameters for this job."""
    params: dict[str, Any] = {EXPLAIN_PARAM: settings.explain}
    if settings.threshold is not None:
        params[THRESHOLD_PARAM] = settings.threshold
    return params


def batch_rows(settings: BatchConfig, model: ScoringModel) -> int:
    """Rows per call to the model: the configured batch, at most what the model takes."""
    return min(settings.batch_rows, model.max_rows)


def log_summary(
    summary: ScoreSummary, seconds: float, model: ScoringModel, settings: BatchConfig
) -> dict[str, float]:
    """The job's figures as run metrics, and the score distribution as a plot."""
    metrics = summary.metrics(seconds, list(model.band_labels))
    mlflow.log_metrics(metrics)
    threshold = model.threshold if settings.threshold is None else settings.threshold
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    axes.bar(edges[:-1], summary.histogram, width=np.diff(edges), align="edge")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(xlabel="probability", ylabel="rows", title=f"Scores of {summary.rows:,} rows")
    axes.legend()
    mlflow.log_figure(figure, Artifact.SCORE_PLOT)
    plt.close(figure)
    return metrics
