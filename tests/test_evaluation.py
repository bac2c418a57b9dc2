"""Test metrics that make sense on imbalanced data."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tabular_mlops.core.data import FeatureSpec, Split
from tabular_mlops.core.pipeline import build_pipeline
from tabular_mlops.core.sections import ModelConfig
from tabular_mlops.mlflow.evaluation import log_f1_threshold_metrics


def rare_positives(rows: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """About 5% positives, which a weak signal never lifts above 0.5."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    X = pd.DataFrame({"signal": signal, "noise": rng.normal(size=rows)})
    y = pd.Series((signal + rng.normal(scale=1.2, size=rows) > 2.6).astype(int))
    return X, y


@pytest.mark.usefixtures("tracking_uri")
def test_f1_at_the_tuned_threshold_where_nothing_crosses_one_half() -> None:
    (X_train, y_train), (X_test, y_test) = rare_positives(3000, 0), rare_positives(1000, 1)
    assert 0.02 < y_train.mean() < 0.08
    model = ModelConfig(n_estimators=40, num_leaves=4)
    pipeline = build_pipeline(FeatureSpec(("signal", "noise"), ()), model, seed=0, threads=1)
    pipeline.fit(X_train, y_train)
    assert f1_score(y_test, pipeline.predict(X_test), zero_division=0) < 0.1  # reads "broken"
    with mlflow.start_run() as run:
        parts = Split(X_train, X_test, y_train, y_test, ids_test=pd.DataFrame())
        metrics = log_f1_threshold_metrics(pipeline, parts, seed=0, folds=5)
    assert 0 < metrics["f1_threshold"] < 0.5
    assert metrics["f1_score_at_f1_threshold"] > 0.25
    decided = pipeline.predict_proba(X_test)[:, 1] >= metrics["f1_threshold"]
    assert metrics["f1_score_at_f1_threshold"] == pytest.approx(f1_score(y_test, decided))
    assert mlflow.get_run(run.info.run_id).data.metrics == metrics
