"""The `monitor` job: a batch of model inputs (a night's table, say), and later its outcomes,
judged against the profile logged with the model at training time (core.monitoring).

The model is the custom model's alias unless told otherwise, pinned to its version; its
profile is the one its pipeline's training run logged. The batch is scored by the checked
model (the probabilities it serves), each profiled column and the scores are compared with
the reference, realized metrics are computed when labels are given, and a `monitor` run
records it all: per-feature metrics (charted night after night in MLflow's UI), the tags
`verdict` (ok, warn, retrain) and `verdict_reasons`, the run's description, a table, plots
of the most drifted features and an HTML report.
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.pyfunc import PyFuncModel
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from tabular_mlops.core import monitoring
from tabular_mlops.core.batch_sections import MonitoringConfig
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import ConfigError, DataError, UserInputError
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.tables import read_table
from tabular_mlops.jobs import scoring_model
from tabular_mlops.jobs.entry_points import MONITOR
from tabular_mlops.mlflow import datasets, monitoring_report, registry, runs
from tabular_mlops.mlflow.model_trust import LoadPolicy

logger = logging.getLogger(__name__)

# Realized metrics judged against the test split's: (name, function, higher is better).
REALIZED = (
    ("roc_auc", roc_auc_score),
    ("precision_recall_auc", average_precision_score),
)


@dataclass(frozen=True)
class MonitorResult:
    run_id: str
    model_uri: str  # models:/<name>/<version> judged
    verdict: monitoring.Verdict
    reasons: list[str]


def monitor(config: ProjectConfig) -> MonitorResult:
    settings = config.monitoring
    if settings.input is None:
        raise ConfigError("monitor needs a batch: -P input=... (a CSV or Parquet table)")
    uri = scoring_model.model_to_use(config, settings.model_uri)
    with (
        runs.project_run(config, MONITOR.name, None, MONITOR.summary) as run,
        tempfile.TemporaryDirectory(prefix="monitored-model-") as scratch,
    ):
        runs.log_config(config)
        model = scoring_model.resolve_model(uri)
        mlflow.set_tag(Tag.MONITORED_MODEL, model.uri)
        reference = reference_profile(model.uri)
        batch = read_table(settings.input)
        datasets.log_file_input(settings.input, compute_pandas_digest(batch), "monitoring")
        if missing := [column for column in reference.columns if column not in batch.columns]:
            raise DataError(
                f"{settings.input} lacks column(s) the model was trained on: {', '.join(missing)}"
            )
        if batch.empty:
            logger.warning("%s has no rows: nothing to judge", settings.input)
            judgement = monitoring.Judgement(monitoring.Verdict.OK, ["ok: the batch is empty"])
            _record(judgement, model.uri, len(batch))
            return MonitorResult(run.info.run_id, model.uri, judgement.verdict, judgement.reasons)
        checked = LoadPolicy.of(config).checked(model.uri, Path(scratch))
        with checked.loading() as model_dir:
            served = mlflow.pyfunc.load_model(str(model_dir))
            scores = _scores(served, batch, model.max_rows)
        drifts = monitoring.drift(reference, batch, scores)
        realized = _realized(config, settings, reference, batch, scores) if settings.labels else []
        judgement = monitoring.judge(drifts, realized, _thresholds(settings))
        _record(judgement, model.uri, len(batch))
        monitoring_report.log(
            reference, batch, scores, drifts, realized, judgement, model.uri, settings
        )
    logger.info(
        "%s, %d rows judged against %s's profile: %s%s",
        settings.input,
        len(batch),
        model.uri,
        judgement.verdict.value,
        "".join(f"\n  {reason}" for reason in judgement.reasons),
    )
    return MonitorResult(run.info.run_id, model.uri, judgement.verdict, judgement.reasons)


def reference_profile(model_uri: str) -> monitoring.Profile:
    """The profile logged by the training run of the pipeline `model_uri` wraps (or of
    `model_uri` itself, a pipeline)."""
    client = mlflow.MlflowClient()
    name, version = registry.parse_version_uri(model_uri)
    run_id = client.get_model_version(name, str(version)).run_id
    source = client.get_run(run_id).data.tags.get(Tag.SOURCE_MODEL_URI) if run_id else None
    if source:  # the custom model: its pipeline's training run
        pipeline_name, pipeline_version = registry.parse_version_uri(source)
        run_id = client.get_model_version(pipeline_name, str(pipeline_version)).run_id
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{Artifact.PROFILE}")
    except Exception:  # no such artifact: a model trained before profiles were logged
        raise UserInputError(
            f"{model_uri}: its training run {run_id} logged no {Artifact.PROFILE} (trained "
            "before monitoring existed): retrain it (mlflow run .) to monitor it"
        ) from None
    return monitoring.Profile.from_dict(logged)


def _scores(model: PyFuncModel, batch: pd.DataFrame, max_rows: int) -> np.ndarray:
    """The probabilities the model serves for each row, `max_rows` rows at a time."""
    parts = []
    for start in range(0, len(batch), max_rows):
        answer: Any = model.predict(batch.iloc[start : start + max_rows])
        parts.append(np.asarray(answer["probability"], dtype=np.float64))
    return np.concatenate(parts)


def _realized(
    config: ProjectConfig,
    settings: MonitoringConfig,
    reference: monitoring.Profile,
    batch: pd.DataFrame,
    scores: np.ndarray,
) -> list[monitoring.Realized]:
    """The model's metrics on the batch's rows the labels table names, with intervals."""
    assert settings.labels is not None
    labels = read_table(settings.labels)
    ids = config.data.id_columns
    target = reference.target or config.data.target
    if missing := [c for c in [*ids, target] if c not in labels.columns]:
        raise DataError(f"labels {settings.labels} lack column(s): {', '.join(missing)}")
    if missing := [c for c in ids if c not in batch.columns]:
        raise DataError(
            f"{settings.input} lacks the id column(s) labels join on: {', '.join(missing)}"
        )
    scored = batch[ids].assign(__score__=scores)
    joined = scored.merge(labels[[*ids, target]].dropna(subset=[target]), on=ids, how="inner")
    if joined.empty:
        raise DataError(
            f"labels {settings.labels}: no row's {', '.join(ids)} matches a row of {settings.input}"
        )
    truth = joined[target].astype(str).isin(reference.positive).to_numpy().astype(int)
    if truth.min() == truth.max():
        raise DataError(f"labels {settings.labels}: the matched rows hold one class only")
    found = []
    for name, metric in REALIZED:
        value, low, high = monitoring.bootstrap(
            metric, truth, joined["__score__"].to_numpy(), settings.bootstrap_rounds
        )
        found.append(
            monitoring.Realized(name, value, low, high, reference.metrics.get(name, value))
        )
    probabilities = np.clip(joined["__score__"].to_numpy(), 1e-7, 1 - 1e-7)
    mlflow.log_metrics(
        {
            "realized_log_loss": float(log_loss(truth, probabilities, labels=[0, 1])),
            "realized_calibration_gap": float(probabilities.mean() - truth.mean()),
            "labelled_rows": float(len(joined)),
        }
    )
    return found


def _thresholds(settings: MonitoringConfig) -> monitoring.Thresholds:
    return monitoring.Thresholds(
        psi=settings.psi,
        distance=settings.distance,
        missing_change=settings.missing_change,
        unseen_share=settings.unseen_share,
        metric_drop=settings.metric_drop,
    )


def _record(judgement: monitoring.Judgement, model_uri: str, rows: int) -> None:
    reasons = "; ".join(judgement.reasons) or "every figure within its thresholds"
    mlflow.set_tags(
        {
            Tag.VERDICT: judgement.verdict.value,
            Tag.VERDICT_REASONS: reasons[:4000],
            Tag.DESCRIPTION: f"**{judgement.verdict.value}** for {model_uri} on {rows} rows: "
            + reasons,
        }
    )
    mlflow.log_metric("rows", float(rows))
