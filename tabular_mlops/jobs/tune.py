"""The `track` job: an Optuna search over LightGBM parameters (tabular_mlops.core.search),
each trial a nested MLflow run; the best trial refit on the training split, logged and
evaluated like `train_basic`'s model; a report of the study (mlflow.tuning_report).

With `tuning.storage` set, several processes add trials to one shared study, which
survives its database's failures (jobs.studies); without it the study lives in memory and a
seeded sampler makes the search reproducible.
"""

import importlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tabular_mlops.core import data
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.data import FeatureSpec
from tabular_mlops.core.names import Status, Tag
from tabular_mlops.core.pipeline import (
    build_classifier,
    build_pipeline,
    check_lightgbm_names,
    fit_preprocessing,
    fit_with_learning_curve,
)
from tabular_mlops.core.plots import pyplot
from tabular_mlops.core.redaction import redact
from tabular_mlops.core.search import (
    COMPLETE,
    FOLDS_COMPLETED,
    OBJECTIVE,
    PRUNED,
    CrossValidation,
    encode_folds,
    make_pruner,
    refit_trees,
    sample,
    thread_plan,
)
from tabular_mlops.core.sections import TuningConfig
from tabular_mlops.jobs import studies
from tabular_mlops.jobs.entry_points import TRACK
from tabular_mlops.mlflow import datasets, evaluation, pipeline_model, runs, tuning_report
from tabular_mlops.mlflow.model_trust import LoadPolicy
from tabular_mlops.mlflow.shipped_code import ShippedCode
from tabular_mlops.runtime import interrupts

logger = logging.getLogger(__name__)

# Parent-run tags every trial run carries too.
_INHERITED_TAGS = (
    Tag.ENTRY_POINT,
    Tag.PROCESS,
    Tag.GIT_COMMIT,
    Tag.GIT_DIRTY,
    Tag.DATASET_DIGEST,
    Tag.MODEL_TYPE,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours


@dataclass(frozen=True)
class TrackResult:
    run_id: str
    model_uri: str
    best_params: dict[str, Any]
    metrics: dict[str, float]


def track(config: ProjectConfig, baseline_run_id: str | None = None) -> TrackResult:
    """Tune; with `baseline_run_id` (an untuned run, say), log its test metrics beside."""
    tuning = config.require_tuning()  # before any run: a config without it is a user error
    check_lightgbm_names(config.model, tuning)
    baseline = runs.finished_run(baseline_run_id) if baseline_run_id else None
    with runs.project_run(config, TRACK.name, summary=TRACK.summary) as run:
        runs.log_config(config)
        table = data.load_table(config.data)
        datasets.log_dataset(table)
        parts = data.split(table, config.split)

        study = tune(config, table.spec, parts.X_train, parts.y_train, run.info.run_id)
        best = tuning_report.log_best_trial(study)

        # The best trial's settings, with the trees its folds kept, refit on the whole
        # training split and watched on the test split iteration by iteration.
        best_model = config.model.with_values(best.params | {"n_estimators": refit_trees(best)})
        code = ShippedCode.build(config.model_code)
        threads = config.compute.model_threads(len(parts.y_train))
        pipeline = build_pipeline(table.spec, best_model, config.split.seed, threads)
        with runs.not_autologged():  # a helper fit: not the model's
            encoded_test = fit_preprocessing(pipeline, parts.X_train, parts.y_train).transform(
                parts.X_test
            )
        with runs.autologged(config.tracking.autolog):
            curves = fit_with_learning_curve(
                pipeline, parts.X_train, parts.y_train, encoded_test, parts.y_test
            )
        runs.log_stepped_metrics(curves, prefix="learning_curve_test")
        model_info = pipeline_model.log_pipeline(
            pipeline, parts.X_train, table.raw, config.tracking, code
        )
        metrics = evaluation.log_test_evaluation(
            pipeline, model_info.model_uri, parts.X_test, parts.y_test, LoadPolicy.of(config)
        )
        metrics |= evaluation.log_f1_threshold_metrics(
            pipeline, parts, config.split.seed, config.decision.cv_folds
        )
        evaluation.log_reference_profile(pipeline, table, parts.X_train, parts.X_test, metrics)

        board = tuning_report.leaderboard(run.info.experiment_id, study.study_name)
        top = tuning_report.log_report(study, board)
        gains = evaluation.log_baseline_comparison(metrics, baseline) if baseline else {}
    shown = min(len(board), tuning_report.TOP_TRIALS_SHOWN)
    print(f"Top {shown} trials of {study.study_name}:\n{top}")
    logger.info(
        "best trial %d: CV ROC AUC %.4f; refit on the training split: test ROC AUC %.4f",
        best.number,
        best.value,
        metrics["roc_auc"],
    )
    if "roc_auc" in gains:
        logger.info(
            "against baseline run %s: test ROC AUC %+.4f", baseline_run_id, gains["roc_auc"]
        )
    return TrackResult(run.info.run_id, model_info.model_uri, best.params, metrics)


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
    created: set[int] = set()  # the numbers of the trials this process created
    study = studies.open_study(
        study_name(tuning, parent_run_id), tuning.storage, sampler, make_pruner(tuning), created
    )
    threads = thread_plan(config)
    trial_tags = inherited | {MLFLOW_PARENT_RUN_ID: parent_run_id, Tag.STUDY: study.study_name}
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
            tags=trial_tags | {Tag.TRIAL: str(trial.number)},
        )
        # Until it is ended, an interrupt (even during the logging) ends the run KILLED.
        with interrupts.run_ends_killed(run.info.run_id):
            try:
                trial.set_user_attr(studies.RUN_ID_ATTR, run.info.run_id)
                classifier = build_classifier(
                    config.model.with_values(params), config.split.seed, threads.model_threads
                )
                result = cv.score(trial, classifier)
            except Exception:
                client.set_terminated(run.info.run_id, Status.FAILED)
                raise
            now = int(time.time() * 1000)
            state = PRUNED if result.pruned else COMPLETE
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(name, value, now, 0) for name, value in result.metrics.items()],
                params=[Param(name, str(value)) for name, value in params.items()],
                tags=[RunTag(Tag.TRIAL_STATE, state.name)],
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
        studies.optimize(study, objective, tuning, created, _Progress(tuning.n_trials))
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
        if trial.state == PRUNED:
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
        if trial.state != COMPLETE:
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
            trial.duration.total_seconds() if trial.duration else float("nan"),
            best.value,
            best.number,
            elapsed,
        )
