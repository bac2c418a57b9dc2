"""Hyperparameter search with Optuna: each trial a nested MLflow run, then a report.

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
- Folds run in parallel, one LightGBM thread each (see tabular_mlops.resources). Results
  do not depend on how many run at once.

With `tuning.storage` set, several processes add trials to one shared study; without it
the study lives in memory and a seeded sampler makes the search reproducible.
"""

import importlib
import logging
import random
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightgbm
import mlflow
import numpy as np
import optuna
import pandas as pd
import sqlalchemy.exc
from lightgbm import LGBMClassifier
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.base import clone
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from tabular_mlops import interrupts
from tabular_mlops.config import ProjectConfig, SearchDimension, TuningConfig
from tabular_mlops.data import FeatureSpec
from tabular_mlops.pipeline import build_classifier, build_preprocessing, configured_threads
from tabular_mlops.plots import pyplot
from tabular_mlops.redaction import redact
from tabular_mlops.resources import TuningThreads, plan_tuning_threads
from tabular_mlops.tags import Tag

logger = logging.getLogger(__name__)

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
STUDY_TAG = "optuna_study"
TRIAL_TAG = "optuna_trial"
TRIAL_STATE_TAG = "optuna_trial_state"  # COMPLETE or PRUNED, as Optuna names them
REFIT_TREES_PARAM = "refit.n_estimators"
TOP_TRIALS_SHOWN = 5
_STUDY_CREATION_RETRIES = 4
# Parent-run tags every trial run carries too.
_INHERITED_TAGS = (
    Tag.ENTRY_POINT,
    Tag.PROCESS,
    Tag.GIT_COMMIT,
    Tag.GIT_DIRTY,
    Tag.DATASET_DIGEST,
    Tag.MODEL_TYPE,
)
_COMPLETE = optuna.trial.TrialState.COMPLETE
_PRUNED = optuna.trial.TrialState.PRUNED

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours


def sample(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, dimension in space.items():
        if dimension.type == "categorical":
            values[name] = trial.suggest_categorical(name, dimension.choices)
        elif dimension.type == "int":
            low, high = int(dimension.low), int(dimension.high)
            values[name] = trial.suggest_int(name, low, high, log=dimension.log)
        else:
            values[name] = trial.suggest_float(
                name, dimension.low, dimension.high, log=dimension.log
            )
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
    probability = classifier.predict_proba(fold.test_X)[:, 1]
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


def study_name(tuning: TuningConfig, parent_run_id: str) -> str:
    # A shared study keeps its configured name so that every process finds it; an
    # in-memory one is this run's alone.
    return tuning.study_name if tuning.storage else f"{tuning.study_name}-{parent_run_id[:8]}"


def thread_plan(config: ProjectConfig) -> TuningThreads:
    tuning = config.require_tuning()
    return plan_tuning_threads(
        config.compute.resolved_threads(),
        tuning.n_jobs,
        tuning.cv_folds,
        configured_threads(config.model),
    )


def tune(
    config: ProjectConfig, spec: FeatureSpec, X: pd.DataFrame, y: pd.Series, parent_run_id: str
) -> optuna.Study:
    """Run the configured trials; each logs params and CV metrics to a child run."""
    tuning = config.require_tuning()
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    inherited = {key: parent.data.tags[key] for key in _INHERITED_TAGS if key in parent.data.tags}
    # Seeded only in memory: processes sharing a study must not propose the same trials.
    sampler = optuna.samplers.TPESampler(seed=None if tuning.storage else config.split.seed)
    study = _create_or_load_study(
        study_name(tuning, parent_run_id), tuning.storage, sampler, make_pruner(tuning)
    )
    threads = thread_plan(config)
    trial_tags = inherited | {MLFLOW_PARENT_RUN_ID: parent_run_id, STUDY_TAG: study.study_name}
    started = time.monotonic()
    cv = CrossValidation(
        encode_folds(spec, X, y, tuning, config.split.seed), tuning.early_stopping_rounds, threads
    )
    logger.info(
        "%d folds encoded in %.1f s; %d fold(s) at a time, %d LightGBM thread(s) each",
        tuning.cv_folds,
        time.monotonic() - started,
        threads.parallel_folds,
        threads.model_threads,
    )

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, tuning.search_space)
        run = client.create_run(
            parent.info.experiment_id,
            run_name=f"trial-{trial.number:03d}",
            tags=trial_tags | {TRIAL_TAG: str(trial.number)},
        )
        # Until it is ended, an interrupt (even during the logging) ends the run KILLED.
        with interrupts.run_ends_killed(run.info.run_id):
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                classifier = build_classifier(
                    config.model.with_values(params), config.split.seed, threads.model_threads
                )
                result = cv.score(trial, classifier)
            except Exception:
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
                raise
            now = int(time.time() * 1000)
            state = _PRUNED if result.pruned else _COMPLETE
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(name, value, now, 0) for name, value in result.metrics.items()],
                params=[Param(name, str(value)) for name, value in params.items()],
                tags=[RunTag(TRIAL_STATE_TAG, state.name)],
            )
            client.set_terminated(run.info.run_id)
        for name, value in result.metrics.items():
            trial.set_user_attr(name, value)
        if result.pruned:
            raise optuna.TrialPruned(
                f"running {OBJECTIVE} {result.metrics[OBJECTIVE]:.4f} after "
                f"{int(result.metrics[FOLDS_COMPLETED])} folds"
            )
        return result.metrics[OBJECTIVE]

    logger.info(
        "study %r: %d trials, %d-fold CV, early stopping %s, pruner %s, %s",
        study.study_name,
        tuning.n_trials,
        tuning.cv_folds,
        f"after {tuning.early_stopping_rounds} rounds" if tuning.early_stopping_rounds else "off",
        tuning.pruner,
        f"shared storage {redact(tuning.storage)}" if tuning.storage else "in memory",
    )
    threading.Thread(target=_import_what_follows, name="import-ahead", daemon=True).start()
    try:
        study.optimize(
            objective,
            n_trials=tuning.n_trials,
            timeout=tuning.timeout_seconds,
            n_jobs=tuning.n_jobs,
            callbacks=[_Progress(tuning.n_trials)],
        )
    finally:
        cv.close()
    return study


def _import_what_follows() -> None:
    """Import what the run needs after the search: skops, to save the model (1.3 s), and
    pyplot, to draw (0.5 s). Nothing else is imported while trials run, and their fits
    release the GIL, so doing it in a thread meanwhile takes that time off the run."""
    try:
        pyplot()
        for module in ("skops.io", "optuna.visualization.matplotlib"):
            importlib.import_module(module)
    except Exception as error:  # the real import, later, will say what is wrong
        logger.debug("importing ahead failed: %r", error)


def refit_trees(trial: optuna.trial.FrozenTrial) -> int:
    """Trees for the model refit on the whole training split: as many as early stopping
    kept, on average, in the trial's folds."""
    return max(1, round(trial.user_attrs[BEST_ITERATION]))


def _create_or_load_study(
    name: str,
    storage: str | None,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    # Processes that start together on a fresh database race to create Optuna's tables
    # (a duplicate-table or duplicate-type error for the loser); once the tables exist,
    # `load_if_exists` makes the study itself safe to create from many processes.
    create = partial(
        optuna.create_study,
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    for _ in range(_STUDY_CREATION_RETRIES):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            logger.info(
                "another process is creating the study storage (%s); retrying",
                type(error.orig).__name__,
            )
            time.sleep(random.uniform(0.5, 1.5))
    return create()


class _Progress:
    """One log line per finished trial: its score (or where it was pruned), the best so
    far, time spent."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        if trial.state == _PRUNED:
            logger.info(
                "trial %d (%d/%d here): pruned after %d folds (running %s %.4f) | %.0f s elapsed",
                trial.number,
                self.done,
                self.total,
                trial.user_attrs.get(FOLDS_COMPLETED, 0),
                OBJECTIVE,
                trial.user_attrs.get(OBJECTIVE, float("nan")),
                elapsed,
            )
            return
        if trial.state != _COMPLETE:
            logger.warning("trial %d ended %s", trial.number, trial.state.name)
            return
        best = study.best_trial
        logger.info(
            "trial %d (%d/%d here): %s %.4f, %d trees, in %.1f s | best %.4f (trial %d) | "
            "%.0f s elapsed",
            trial.number,
            self.done,
            self.total,
            OBJECTIVE,
            trial.value,
            refit_trees(trial),
            trial.duration.total_seconds(),
            best.value,
            best.number,
            elapsed,
        )


def log_best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Best params as `best.<name>` params, its CV metrics as `best_<metric>` metrics, the
    number of trees of the refit model, and how many trials completed or were pruned."""
    best = study.best_trial
    mlflow.log_params({f"best.{name}": value for name, value in best.params.items()})
    mlflow.log_params(
        {
            "best.trial": best.number,
            "best.mlflow_run_id": best.user_attrs["mlflow_run_id"],
            REFIT_TREES_PARAM: refit_trees(best),
        }
    )
    mlflow.log_metrics(
        {f"best_{name}": best.user_attrs[name] for name in _cv_metric_names()}
        | {"trials_completed": len(_trials(study, _COMPLETE))}
        | {"trials_pruned": len(_trials(study, _PRUNED))}
    )
    return best


def leaderboard(experiment_id: str, study: str) -> pd.DataFrame:
    """Every completed trial run of the study (pruned ones are left out: their scores
    cover some folds only), best first, ranked by MLflow's search."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.{STUDY_TAG} = '{study}' AND tags.{TRIAL_STATE_TAG} = '{_COMPLETE.name}' "
            "AND attributes.status = 'FINISHED'"
        ),
        order_by=[f"metrics.{OBJECTIVE} DESC"],
    )
    if runs.empty:
        return pd.DataFrame()
    params = sorted(column for column in runs.columns if column.startswith("params."))
    columns = [*_cv_metric_names(), BEST_ITERATION]
    board = runs[[f"tags.{TRIAL_TAG}", "run_id", *(f"metrics.{m}" for m in columns), *params]]
    board.columns = [column.split(".", 1)[-1] for column in board.columns]
    board = board.rename(columns={TRIAL_TAG: "trial"})
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def log_report(study: optuna.Study, board: pd.DataFrame) -> str:
    """Log the leaderboard (CSV and Markdown) and the study's plots; returns the top rows."""
    mlflow.log_text(board.to_csv(index=False), "tuning/leaderboard.csv")
    mlflow.log_text(board.to_markdown(index=False, floatfmt=".4f"), "tuning/leaderboard.md")
    _log_study_plots(study)
    return board.head(TOP_TRIALS_SHOWN).to_markdown(index=False, floatfmt=".4f")


def _log_study_plots(study: optuna.Study) -> None:
    plt = pyplot()
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "tuning/optimization_history.png": optuna_plots.plot_optimization_history,
        # Each trial's running CV ROC AUC fold by fold: where pruned trials stopped.
        "tuning/intermediate_values.png": optuna_plots.plot_intermediate_values,
        "tuning/param_importances.png": optuna_plots.plot_param_importances,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for path, plot in plots.items():
            try:
                axes = plot(study)
            except (RuntimeError, ValueError) as error:  # e.g. importances of one trial
                logger.warning("no %s: %s", path, error)
                continue
            if (legend := axes.get_legend()) is not None and path.endswith("values.png"):
                legend.remove()  # one entry per trial: it would hide the curves
            axes.figure.tight_layout()
            mlflow.log_figure(axes.figure, path)
            plt.close(axes.figure)


def _cv_metric_names() -> list[str]:
    return [f"cv_{name}_{stat}" for name in CV_METRICS for stat in ("mean", "std")]


def _trials(study: optuna.Study, state: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))
