"""Held-out evaluation, logged to the active run.

MLflow's default classifier evaluator gives the metrics (ROC AUC, PR AUC, log loss, F1,
precision, recall, accuracy) and the plots (ROC, PR, confusion matrix, calibration, lift);
this module adds what it lacks: the Brier score and a feature-importance chart; and the
reference profile monitoring compares batches with (core.monitoring).
"""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.models import EvaluationResult
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from tabular_mlops.core import monitoring, thresholds
from tabular_mlops.core.data import LabeledTable, Split
from tabular_mlops.core.model_sections import CostMatrix
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.pipeline import feature_importance
from tabular_mlops.core.plots import pyplot
from tabular_mlops.core.sections import (
    AT_F1_THRESHOLD,
    F1_THRESHOLD,
    HEADLINE_METRICS,
)
from tabular_mlops.mlflow.model_trust import CheckedModel, LoadPolicy
from tabular_mlops.mlflow.pipeline_model import stock_face
from tabular_mlops.mlflow.runs import quiet_integer_schema_hint

LABEL_COLUMN = "__label__"
_TOP_FEATURES_PLOTTED = 20


def log_test_evaluation(
    pipeline: Pipeline,
    model_uri: str,
    X_test: pd.DataFrame,
    y_test: pd.Series,
    policy: LoadPolicy,
) -> dict[str, float]:
    """Everything this project logs about a model on the test split (the model as logged
    at `model_uri`, loaded back as `policy` says); returns the metrics."""
    with tempfile.TemporaryDirectory(prefix="evaluated-") as scratch:
        logged = policy.checked(model_uri, Path(scratch))
        metrics = dict(evaluate_model(logged, X_test, y_test).metrics)
    metrics |= log_probability_metrics(y_test, pipeline.predict_proba(X_test)[:, 1])
    log_feature_importance(pipeline)
    return metrics


def log_baseline_comparison(metrics: dict[str, float], baseline: Run) -> dict[str, float]:
    """Log the baseline run's test metrics beside this run's as `baseline.<metric>`, and
    return the differences (this run minus the baseline)."""
    shared = [
        name for name in HEADLINE_METRICS if name in metrics and name in baseline.data.metrics
    ]
    mlflow.log_metrics({f"baseline.{name}": baseline.data.metrics[name] for name in shared})
    mlflow.set_tag(Tag.BASELINE_RUN_ID, baseline.info.run_id)
    return {name: metrics[name] - baseline.data.metrics[name] for name in shared}


def evaluate_model(model: CheckedModel, X: pd.DataFrame, y: pd.Series) -> EvaluationResult:
    """MLflow's default classifier evaluation of a checked model on labelled rows, logged
    to the active run and linked to the model. MLflow's evaluator reads probabilities only
    from a stock flavor's model: it is given the pipeline's stock sklearn face."""
    pyplot()  # MLflow draws its plots with pyplot: on this project's backend
    with model.loading() as local, quiet_integer_schema_hint():
        return mlflow.models.evaluate(
            model=str(stock_face(local)),
            model_id=model.model_id,
            # True/False rather than 1/0: MLflow reads integer labels as neither classes nor
            # values, and warns on every run that the model type "looks like None".
            data=X.assign(**{LABEL_COLUMN: y.to_numpy().astype(bool)}),
            targets=LABEL_COLUMN,
            model_type="classifier",
            evaluators="default",
            # SHAP needs the shap package and minutes of compute; per-row reasons come
            # from LightGBM's own contributions in the custom model instead.
            evaluator_config={"pos_label": True, "log_model_explainability": False},
        )


def log_f1_threshold_metrics(
    pipeline: Pipeline, parts: Split, seed: int, folds: int
) -> dict[str, float]:
    """F1, precision and recall on the test split at the threshold that maximises F1 on
    `folds`-fold out-of-fold predictions of the training split (`f1_threshold`; the folds
    the custom model tunes its decision threshold with). At 0.5 they say little on
    imbalanced data: on a table with 5% positives nothing may cross 0.5, and F1 reads 0 for
    a model that ranks well."""
    threshold = thresholds.f1_threshold(pipeline, parts.X_train, parts.y_train, folds, seed)
    probability = pipeline.predict_proba(parts.X_test)[:, 1]
    at = thresholds.decision_metrics(parts.y_test, probability, threshold, CostMatrix())
    metrics = {F1_THRESHOLD: threshold} | {
        f"{name}{AT_F1_THRESHOLD}": at[name]
        for name in ("f1_score", "precision_score", "recall_score")
    }
    mlflow.log_metrics(metrics)
    return metrics


def log_probability_metrics(y_test: pd.Series, probabilities: pd.Series) -> dict[str, float]:
    metrics = {"brier_score_loss": float(brier_score_loss(y_test, probabilities))}
    mlflow.log_metrics(metrics)
    return metrics


def probability_metrics(y: pd.Series, probabilities: np.ndarray) -> dict[str, float]:
    """How well probabilities rank and are calibrated, under MLflow's evaluator's names."""
    return {
        "roc_auc": float(roc_auc_score(y, probabilities)),
        "log_loss": float(log_loss(y, probabilities)),
        "brier_score_loss": float(brier_score_loss(y, probabilities)),
    }


def log_feature_importance(pipeline: Pipeline) -> pd.DataFrame:
    plt = pyplot()
    importance = feature_importance(pipeline)
    mlflow.log_text(importance.to_csv(index=False), Artifact.IMPORTANCE_TABLE)
    top = importance.head(_TOP_FEATURES_PLOTTED).iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(top) + 1.2))
    axis.barh(top["feature"], top["gain_share"])
    axis.set_xlabel("share of total split gain")
    axis.set_title("Feature importance (gain; one-hot columns summed)")
    figure.tight_layout()
    mlflow.log_figure(figure, Artifact.IMPORTANCE_PLOT)
    plt.close(figure)
    return importance


def log_sample_predictions(
    model_uri: str, X: pd.DataFrame, y: pd.Series, ids: pd.DataFrame, policy: LoadPolicy
) -> pd.DataFrame:
    """Load the pipeline back from `model_uri` (its registered version, say) as `policy`
    says, and log its predictions."""
    with (
        tempfile.TemporaryDirectory(prefix="sampled-") as scratch,
        policy.checked(model_uri, Path(scratch)).loading() as local,
    ):
        model = mlflow.sklearn.load_model(str(local))
    sample = ids.reset_index(drop=True).assign(
        actual=y.to_numpy(),
        predicted=model.predict(X),
        probability=model.predict_proba(X)[:, 1],
    )
    mlflow.log_text(sample.to_csv(index=False), Artifact.SAMPLE_PREDICTIONS)
    return sample


def log_reference_profile(
    pipeline: Pipeline,
    table: LabeledTable,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    metrics: dict[str, float],
) -> monitoring.Profile:
    """The training split's profile and the model's scores on the test split, with its
    headline metrics and what its target counts positive: what `monitor` judges batches
    against (Artifact.PROFILE)."""
    scores = pipeline.predict_proba(X_test)[:, 1]
    headline = {name: float(metrics[name]) for name in HEADLINE_METRICS if name in metrics}
    label = table.positive_label
    profile = monitoring.profile(
        X_train,
        list(table.spec.numeric),
        list(table.spec.categorical),
        scores,
        headline,
        str(table.target.name),
        label if isinstance(label, list) else [label],
    )
    mlflow.log_text(profile.to_json(), Artifact.PROFILE)
    return profile
