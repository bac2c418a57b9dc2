"""The cross-validated search over LightGBM parameters that `track` runs with Optuna.

Trials are scored by cross-validated ROC AUC on the training split:

- Each fold's rows are encoded once, by the pipeline's own preprocessing fitted on that
  fold's training rows. The encoding does not depend on LightGBM's parameters, so every
  trial reuses it; a trial fits only LightGBM.
- Within a fold, LightGBM stops adding trees once its log loss on a held-back part of the
  fold's training rows stops improving (`tuning.early_stopping_rounds`); `n_estimators` is
  the ceiling. The model refit after the search gets the number of trees the best trial's
  folds stopped at, on average.
- After each fold the trial reports its running CV ROC AUC to Optuna, whose pruner stops
  the trial when it cannot win (`tuning.pruner`).
- Folds run in parallel, one LightGBM thread each (see tabular_mlops.core.resources).
  Results do not depend on how many run at once.

The study, its trial runs and its report are the `track` job's (tabular_mlops.jobs.tune).
"""

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np
import optuna
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.base import clone
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.data import FeatureSpec
from tabular_mlops.core.pipeline import build_preprocessing, configured_threads
from tabular_mlops.core.resources import TuningThreads, plan_tuning_threads
from tabular_mlops.core.sections import SearchDimension, TuningConfig

OBJECTIVE = "cv_roc_auc_mean"
# Cross-validated metric -> how it scores a fold's held-out rows from P(positive).
CV_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": roc_auc_score,
    "pr_auc": average_precision_score,
    "log_loss": log_loss,
}
# Per trial: the mean over folds of the number of trees early stopping kept.
BEST_ITERATION = "best_iteration"
FOLDS_COMPLETED = "folds_completed"
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def sample(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, dimension in space.items():
        if dimension.type == "categorical":
            values[name] = trial.suggest_categorical(name, dimension.options())
        elif dimension.type == "int":
            low, high = dimension.bounds()
            values[name] = trial.suggest_int(name, int(low), int(high), log=dimension.log)
        else:
            low, high = dimension.bounds()
            values[name] = trial.suggest_float(name, low, high, log=dimension.log)
    return values


def make_pruner(tuning: TuningConfig) -> optuna.pruners.BasePruner:
    startup = tuning.pruner_startup_trials
    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup)
    if tuning.pruner == "top_quartile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=startup)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Fold:
    """One CV fold, encoded: LightGBM grows trees on `train`, watches `stop` for early
    stopping (None: off) and is scored on `test`."""

    train_X: np.ndarray
    train_y: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray
    stop_X: np.ndarray | None = None
    stop_y: np.ndarray | None = None


def encode_folds(
    spec: FeatureSpec, X: pd.DataFrame, y: pd.Series, tuning: TuningConfig, seed: int
) -> list[Fold]:
    """The stratified CV folds of (X, y), each encoded by the preprocessing fitted on its
    training rows, with a stratified part of those held back for early stopping."""
    labels = y.to_numpy()
    folds = []
    splitter = StratifiedKFold(n_splits=tuning.cv_folds, shuffle=True, random_state=seed)
    for train_rows, test_rows in splitter.split(X, labels):
        preprocess = build_preprocessing(spec).fit(X.iloc[train_rows], labels[train_rows])
        train_X, train_y = preprocess.transform(X.iloc[train_rows]), labels[train_rows]
        test_X, test_y = preprocess.transform(X.iloc[test_rows]), labels[test_rows]
        if tuning.early_stopping_rounds is None:
            folds.append(Fold(train_X, train_y, test_X, test_y))
            continue
        grow, stop = train_test_split(
            np.arange(len(train_y)),
            test_size=tuning.early_stopping_fraction,
            stratify=train_y,
            random_state=seed,
        )
        folds.append(
            Fold(train_X[grow], train_y[grow], test_X, test_y, train_X[stop], train_y[stop])
        )
    return folds


@dataclass(frozen=True)
class FoldScore:
    metrics: dict[str, float]
    best_iteration: int


def score_fold(classifier: LGBMClassifier, fold: Fold, stopping_rounds: int | None) -> FoldScore:
    """Fit `classifier` (a fresh clone) on the fold and score its held-out rows."""
    if fold.stop_X is None or stopping_rounds is None:
        classifier.fit(fold.train_X, fold.train_y)
        trees = classifier.n_estimators_
    else:
        classifier.fit(
            fold.train_X,
            fold.train_y,
            eval_X=(fold.stop_X,),
            eval_y=(fold.stop_y,),
            callbacks=[
                lightgbm.early_stopping(stopping_rounds, first_metric_only=True, verbose=False)
            ],
        )
        trees = classifier.best_iteration_  # predictions below use this many trees
    probability = np.asarray(classifier.predict_proba(fold.test_X))[:, 1]
    metrics = {name: float(metric(fold.test_y, probability)) for name, metric in CV_METRICS.items()}
    return FoldScore(metrics, int(trees))


@dataclass(frozen=True)
class TrialScore:
    metrics: dict[str, float]  # cv_<metric>_mean / _std, best_iteration, folds_completed
    pruned: bool


class CrossValidation:
    """Scores trials on shared encoded folds, `threads.parallel_folds` folds at a time,
    reporting the running CV ROC AUC to Optuna after each fold in fold order (so that
    pruning decisions do not depend on which fold finishes first)."""

    def __init__(self, folds: list[Fold], stopping_rounds: int | None, threads: TuningThreads):
        self.folds = folds
        self.stopping_rounds = stopping_rounds
        self.threads = threads
        workers = threads.parallel_trials * threads.parallel_folds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cv-fold")

    def close(self) -> None:
        # Without waiting: interrupted, a fold may still be training (its thread is left
        # to the process's exit); otherwise every fold has finished.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def score(self, trial: optuna.Trial, classifier: LGBMClassifier) -> TrialScore:
        upcoming = iter(self.folds)
        running: deque[Future[FoldScore]] = deque()

        def submit_next() -> None:
            if (fold := next(upcoming, None)) is not None:
                running.append(
                    self._pool.submit(score_fold, clone(classifier), fold, self.stopping_rounds)
                )

        for _ in range(self.threads.parallel_folds):
            submit_next()
        scores: list[FoldScore] = []
        try:
            for step in range(len(self.folds)):
                scores.append(running.popleft().result())
                submit_next()
                trial.report(float(np.mean([s.metrics["roc_auc"] for s in scores])), step)
                if step < len(self.folds) - 1 and trial.should_prune():
                    return TrialScore(summarize(scores), pruned=True)
            return TrialScore(summarize(scores), pruned=False)
        finally:
            # A fold already fitting goes on in the pool: the next trial's folds queue
            # behind it, so the cores stay busy and no more than `workers` fits run at once.
            for future in running:
                future.cancel()


def summarize(scores: list[FoldScore]) -> dict[str, float]:
    """Mean and standard deviation over folds of each CV metric, the mean number of trees
    early stopping kept, and how many folds ran."""
    metrics: dict[str, float] = {}
    for name in CV_METRICS:
        values = np.array([score.metrics[name] for score in scores])
        metrics[f"cv_{name}_mean"] = float(values.mean())
        metrics[f"cv_{name}_std"] = float(values.std())
    metrics[BEST_ITERATION] = float(np.mean([score.best_iteration for score in scores]))
    metrics[FOLDS_COMPLETED] = float(len(scores))
    return metrics


def thread_plan(config: ProjectConfig) -> TuningThreads:
    tuning = config.require_tuning()
    return plan_tuning_threads(
        config.compute.resolved_threads(),
        tuning.n_jobs,
        tuning.cv_folds,
        configured_threads(config.model),
    )


def refit_trees(trial: optuna.trial.FrozenTrial) -> int:
    """Trees for the model refit on the whole training split: as many as early stopping
    kept, on average, in the trial's folds."""
    return max(1, round(trial.user_attrs[BEST_ITERATION]))


def cv_metric_names() -> list[str]:
    return [f"cv_{name}_{stat}" for name in CV_METRICS for stat in ("mean", "std")]


def trials_in(
    study: optuna.Study, state: optuna.trial.TrialState
) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))
