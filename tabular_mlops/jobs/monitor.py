"""The `monitor` job: a batch of model inputs (a night's table, say), and later its outcomes,
judged against the profile logged with the model at training time (core.monitoring).

The model is the custom model's alias unless told otherwise, pinned to its version; its
profile is the one its pipeline's training run logged. The batch is read and typed as
`batch_score` reads it and scored by the checked model (the probabilities it serves), with
pandas in batches or with Spark by partition (jobs.pandas_engine, jobs.spark_engine); each
profiled column and the scores are counted against the reference and compared with it,
realized metrics are computed when labels are given, and a `monitor` run
records it all: per-feature metrics (charted night after night in MLflow's UI), the tags
`verdict` (ok, warn, retrain) and `verdict_reasons`, the run's description, a table, plots
of the most drifted features and an HTML report.
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from tabular_mlops.core import monitoring
from tabular_mlops.core.batch_sections import MonitoringConfig
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import ConfigError, DataError, UserInputError
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.verdict import Judgement, Realized, Verdict, bootstrap, judge
from tabular_mlops.jobs import score_io, scoring_model
from tabular_mlops.jobs.entry_points import MONITOR
from tabular_mlops.jobs.pandas_engine import count_with_pandas
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
    verdict: Verdict
    reasons: list[str]


def monitor(config: ProjectConfig) -> MonitorResult:
    settings = config.monitoring
    if settings.input is None:
        raise ConfigError("monitor needs a batch: -P input=... (a CSV or Parquet table)")
    uri = scoring_model.model_to_use(config, settings.model_uri)
    threads = config.compute.resolved_threads()
    with (
        runs.project_run(config, MONITOR.name, None, MONITOR.summary) as run,
        tempfile.TemporaryDirectory(prefix="monitored-model-") as scratch,
    ):
        runs.log_config(config)
        model = scoring_model.resolve_model(uri)
        mlflow.set_tag(Tag.MONITORED_MODEL, model.uri)
        reference = reference_profile(model.uri)
        target = reference.target or config.data.target
        ids = config.data.id_columns if settings.labels else []
        source = score_io.open_input(settings.input, model.inputs, ids)
        labels = score_io.open_labels(settings.labels, ids, target) if settings.labels else None
        datasets.log_file_input(source.path, source.digest, "monitoring")
        if missing := [c for c in reference.columns if c not in source.schema.names]:
            raise DataError(
                f"{settings.input} lacks column(s) the model was trained on: {', '.join(missing)}"
            )
        checked = LoadPolicy.of(config).checked(model.uri, Path(scratch))
        with checked.loading() as model_dir:
            if settings.engine == "spark":
                from tabular_mlops.jobs.spark_engine import count_with_spark  # starts a JVM

                count = count_with_spark
            else:
                count = count_with_pandas
            tally = count(reference, model, model_dir, source, labels, config.batch, threads)
        rows = tally.counts.rows
        if not rows:
            logger.warning("%s has no rows: nothing to judge", settings.input)
            judgement = Judgement(Verdict.OK, ["ok: the batch is empty"])
            _record(judgement, model.uri, rows)
            return MonitorResult(run.info.run_id, model.uri, judgement.verdict, judgement.reasons)
        drifts = monitoring.drift(reference, tally.counts)
        realized = []
        if labels is not None:
            realized = _realized(settings, reference, tally.labelled, ids, target)
        judgement = judge(drifts, realized, settings)
        _record(judgement, model.uri, rows)
        monitoring_report.log(
            reference, tally.counts, drifts, realized, judgement, model.uri, settings
        )
    logger.info(
        "%s, %d rows judged against %s's profile: %s%s",
        settings.input,
        rows,
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


def _realized(
    settings: MonitoringConfig,
    reference: monitoring.Profile,
    labelled: pd.DataFrame | None,
    ids: list[str],
    target: str,
) -> list[Realized]:
    """The model's metrics on the batch's rows the labels matched, with intervals."""
    if labelled is None or labelled.empty:
        raise DataError(
            f"labels {settings.labels}: no row's {', '.join(ids)} matches a row of {settings.input}"
        )
    labelled = labelled.dropna(subset=[target])
    truth = labelled[target].astype(str).isin(reference.positive).to_numpy().astype(int)
    if truth.min() == truth.max():
        raise DataError(f"labels {settings.labels}: the matched rows hold one class only")
    scores = labelled[monitoring.SCORE_COLUMN].to_numpy(dtype=np.float64)
    found = []
    for name, metric in REALIZED:
        value, low, high = bootstrap(metric, truth, scores, settings.bootstrap_rounds)
        found.append(Realized(name, value, low, high, reference.metrics.get(name, value)))
    probabilities = np.clip(scores, 1e-7, 1 - 1e-7)
    mlflow.log_metrics(
        {
            "realized_log_loss": float(log_loss(truth, probabilities, labels=[0, 1])),
            "realized_calibration_gap": float(probabilities.mean() - truth.mean()),
            "labelled_rows": float(len(labelled)),
        }
    )
    return found


def _record(judgement: Judgement, model_uri: str, rows: int) -> None:
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
