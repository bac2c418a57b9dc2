"""The decision threshold of the custom model: tuned on out-of-fold predictions of the
training split with scikit-learn's `TunedThresholdClassifierCV`, for F1 or an expected cost."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score
from sklearn.model_selection import (
    StratifiedKFold,
    TunedThresholdClassifierCV,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline

from tabular_mlops.core.model_sections import CostMatrix, DecisionConfig

# Candidate thresholds: every half percent.
CANDIDATES = np.round(np.arange(0.005, 1.0, 0.005), 3)


@dataclass(frozen=True)
class TunedThreshold:
    threshold: float
    objective: str
    cv_score: float  # F1, or expected cost per row, at the threshold, across the folds


def expected_cost(y_true: np.ndarray, y_pred: np.ndarray, costs: CostMatrix) -> float:
    """Mean cost per row of the decisions `y_pred`. Plain counts, not sklearn's
    confusion_matrix: threshold tuning calls this once per candidate per fold (1000 calls),
    where sklearn's input checks took 3 s."""
    actual = np.asarray(y_true).astype(bool)
    decided = np.asarray(y_pred).astype(bool)
    tp = np.count_nonzero(actual & decided)
    fp = np.count_nonzero(~actual & decided)
    fn = np.count_nonzero(actual & ~decided)
    tn = len(actual) - tp - fp - fn
    total = (
        tn * costs.true_negative
        + fp * costs.false_positive
        + fn * costs.false_negative
        + tp * costs.true_positive
    )
    return float(total / len(actual))


def tune_threshold(
    pipeline: Pipeline, X: pd.DataFrame, y: pd.Series, decision: DecisionConfig, seed: int
) -> TunedThreshold:
    """The threshold on P(positive) that scores best for `decision.objective`, judged on
    predictions of models that did not see the rows they predict (`pipeline`'s settings,
    refit per fold)."""
    if decision.objective == "f1":
        scoring = "f1"
    else:
        scoring = make_scorer(expected_cost, greater_is_better=False, costs=decision.costs)
    tuner = TunedThresholdClassifierCV(
        clone(pipeline),
        scoring=scoring,
        response_method="predict_proba",
        thresholds=CANDIDATES,
        cv=StratifiedKFold(decision.cv_folds, shuffle=True, random_state=seed),
        refit=True,  # required with several folds; the refit model is not used
    )
    tuner.fit(X, y)
    score = float(tuner.best_score_)
    # make_scorer negates a cost; report it as a cost.
    return TunedThreshold(
        threshold=float(tuner.best_threshold_),
        objective=decision.objective,
        cv_score=-score if decision.objective == "cost" else score,
    )


def f1_threshold(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series, folds: int, seed: int) -> float:
    """The candidate threshold with the best F1 on out-of-fold probabilities of `X`
    (`pipeline`'s settings, refit per fold), all candidates scored at once: under half
    `tune_threshold`'s time, whose scorer checks its inputs per candidate and fold."""
    probability = cross_val_predict(
        clone(pipeline),
        X,
        y,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )[:, 1]
    actual = y.to_numpy().astype(bool)
    decided = probability[np.newaxis, :] >= CANDIDATES[:, np.newaxis]
    tp = (decided & actual).sum(axis=1)
    wrong = (decided != actual).sum(axis=1)  # false positives and false negatives
    return float(CANDIDATES[np.argmax(2 * tp / np.maximum(2 * tp + wrong, 1))])


def decision_metrics(
    y: pd.Series, probability: np.ndarray, threshold: float, costs: CostMatrix
) -> dict[str, float]:
    """How decisions at `threshold` fare on labelled rows."""
    decided = (probability >= threshold).astype(int)
    return {
        "f1_score": float(f1_score(y, decided, zero_division=0)),
        "precision_score": float(precision_score(y, decided, zero_division=0)),
        "recall_score": float(recall_score(y, decided, zero_division=0)),
        "expected_cost": expected_cost(y.to_numpy(), decided, costs),
        "positive_rate": float(decided.mean()),
    }
