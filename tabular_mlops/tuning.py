"""Hyperparameter search with Optuna: each trial a nested MLflow run, then a report.

Trials are scored by cross-validated ROC AUC on the training split. With
`tuning.storage` set, several processes add trials to one shared study; without it
the study lives in memory and a seeded sampler makes the search reproducible.
"""

import logging
import os
import random
import time
import warnings
from functools import partial
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import mlflow
import optuna
import pandas as pd
import sqlalchemy.exc
from mlflow.entities import Metric, Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.model_selection import StratifiedKFold, cross_validate

from tabular_mlops.config import ProjectConfig, SearchDimension, TuningConfig
from tabular_mlops.data import FeatureSpec
from tabular_mlops.pipeline import build_pipeline
from tabular_mlops.tracking import Tag

logger = logging.getLogger(__name__)

OBJECTIVE = "cv_roc_auc_mean"
# Cross-validated metric -> (scikit-learn scorer, sign that turns the score into the metric).
CV_SCORERS = {
    "roc_auc": ("roc_auc", 1.0),
    "pr_auc": ("average_precision", 1.0),
    "log_loss": ("neg_log_loss", -1.0),
}
STUDY_TAG = "optuna_study"
TRIAL_TAG = "optuna_trial"
TOP_TRIALS_SHOWN = 5
_STUDY_CREATION_RETRIES = 4
# Parent-run tags every trial run carries too.
_INHERITED_TAGS = (
    Tag.ENTRY_POINT,
    Tag.GIT_COMMIT,
    Tag.GIT_DIRTY,
    Tag.DATASET_DIGEST,
    Tag.MODEL_TYPE,
)

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


def cross_validated_metrics(
    pipeline: Any, X: pd.DataFrame, y: pd.Series, folds: int, seed: int
) -> dict[str, float]:
    """Mean and standard deviation over stratified folds of each CV_SCORERS metric."""
    scores = cross_validate(
        pipeline,
        X,
        y,
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        scoring={name: scorer for name, (scorer, _) in CV_SCORERS.items()},
    )
    metrics: dict[str, float] = {}
    for name, (_, sign) in CV_SCORERS.items():
        values = sign * scores[f"test_{name}"]
        metrics[f"cv_{name}_mean"] = float(values.mean())
        metrics[f"cv_{name}_std"] = float(values.std())
    return metrics


def study_name(tuning: TuningConfig, parent_run_id: str) -> str:
    # A shared study keeps its configured name so that every process finds it; an
    # in-memory one is this run's alone.
    return tuning.study_name if tuning.storage else f"{tuning.study_name}-{parent_run_id[:8]}"


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
    study = _create_or_load_study(study_name(tuning, parent_run_id), tuning.storage, sampler)
    model = config.model
    if tuning.n_jobs > 1 and "n_jobs" not in model.params:
        # Parallel trials share the cores: LightGBM's default of all cores per trial
        # oversubscribes them, and its spinning OpenMP threads then crawl.
        model = model.with_values({"n_jobs": max(1, (os.cpu_count() or 1) // tuning.n_jobs)})
    trial_tags = inherited | {MLFLOW_PARENT_RUN_ID: parent_run_id, STUDY_TAG: study.study_name}

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, tuning.search_space)
        run = client.create_run(
            parent.info.experiment_id,
            run_name=f"trial-{trial.number:03d}",
            tags=trial_tags | {TRIAL_TAG: str(trial.number)},
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        try:
            pipeline = build_pipeline(spec, model.with_values(params), config.split.seed)
            metrics = cross_validated_metrics(pipeline, X, y, tuning.cv_folds, config.split.seed)
        except BaseException:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(name, value, now, 0) for name, value in metrics.items()],
            params=[Param(name, str(value)) for name, value in params.items()],
        )
        client.set_terminated(run.info.run_id)
        for name, value in metrics.items():
            trial.set_user_attr(name, value)
        return metrics[OBJECTIVE]

    logger.info(
        "study %r: %d trials, %d-fold CV, %s",
        study.study_name,
        tuning.n_trials,
        tuning.cv_folds,
        f"shared storage {_redacted(tuning.storage)}" if tuning.storage else "in memory",
    )
    study.optimize(
        objective,
        n_trials=tuning.n_trials,
        timeout=tuning.timeout_seconds,
        n_jobs=tuning.n_jobs,
        callbacks=[_Progress(tuning.n_trials)],
    )
    return study


def _create_or_load_study(
    name: str, storage: str | None, sampler: optuna.samplers.BaseSampler
) -> optuna.Study:
    # Processes that start together on a fresh database race to create Optuna's tables
    # (a duplicate-table or duplicate-type error for the loser); once the tables exist,
    # `load_if_exists` makes the study itself safe to create from many processes.
    create = partial(
        optuna.create_study,
        study_name=name,
        storage=storage,
        sampler=sampler,
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
    """One log line per finished trial: its score, the best so far, time spent."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        if trial.state != optuna.trial.TrialState.COMPLETE:
            logger.warning("trial %d ended %s", trial.number, trial.state.name)
            return
        best = study.best_trial
        logger.info(
            "trial %d (%d/%d here): %s %.4f in %.1f s | best %.4f (trial %d) | %.0f s elapsed",
            trial.number,
            self.done,
            self.total,
            OBJECTIVE,
            trial.value,
            trial.duration.total_seconds(),
            best.value,
            best.number,
            time.monotonic() - self.start,
        )


def log_best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Best params as `best.<name>` params and its CV metrics as `best_<metric>` metrics."""
    best = study.best_trial
    mlflow.log_params({f"best.{name}": value for name, value in best.params.items()})
    mlflow.log_params(
        {"best.trial": best.number, "best.mlflow_run_id": best.user_attrs["mlflow_run_id"]}
    )
    mlflow.log_metrics(
        {f"best_{name}": best.user_attrs[name] for name in _cv_metric_names()}
        | {"trials_completed": len(_completed(study))}
    )
    return best


def leaderboard(experiment_id: str, study: str) -> pd.DataFrame:
    """Every finished trial run of the study, best first, ranked by MLflow's search."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.{STUDY_TAG} = '{study}' AND attributes.status = 'FINISHED'",
        order_by=[f"metrics.{OBJECTIVE} DESC"],
    )
    if runs.empty:
        return pd.DataFrame()
    params = sorted(column for column in runs.columns if column.startswith("params."))
    board = runs[
        [f"tags.{TRIAL_TAG}", "run_id", *(f"metrics.{m}" for m in _cv_metric_names()), *params]
    ]
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
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "tuning/optimization_history.png": optuna_plots.plot_optimization_history,
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
            axes.figure.tight_layout()
            mlflow.log_figure(axes.figure, path)
            plt.close(axes.figure)


def _cv_metric_names() -> list[str]:
    return [f"cv_{name}_{stat}" for name in CV_SCORERS for stat in ("mean", "std")]


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _redacted(url: str) -> str:
    """A storage URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say nothing of it
        return "(storage)"
