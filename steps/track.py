"""Entry point `track`: tune the pipeline with nested trial runs, refit the best, report."""

import argparse
import logging
from dataclasses import dataclass
from typing import Any

from tabular_mlops import data, interrupts, packaging, tracking
from tabular_mlops.cli import (
    boolean,
    config_parser,
    configure_logging,
    number,
    run_with_config,
    unset_or,
    whole_number,
)
from tabular_mlops.config import ProjectConfig

ENTRY_POINT = "track"
logger = logging.getLogger(__name__)

# Parameter -> config key it overrides.
OVERRIDES = {
    "data_path": "data.path",
    "n_trials": "tuning.n_trials",
    "timeout": "tuning.timeout_seconds",
    "n_jobs": "tuning.n_jobs",
    "cv_folds": "tuning.cv_folds",
    "storage": "tuning.storage",
    "study_name": "tuning.study_name",
    "autolog": "tracking.autolog",
}


@dataclass(frozen=True)
class TrackResult:
    run_id: str
    model_uri: str
    best_params: dict[str, Any]
    metrics: dict[str, float]


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    parser.add_argument("--baseline-run-id", type=unset_or(str))
    parser.add_argument("--data-path", type=unset_or(str))
    parser.add_argument("--n-trials", type=unset_or(whole_number))
    parser.add_argument("--timeout", type=unset_or(number))
    parser.add_argument("--n-jobs", type=unset_or(whole_number))
    parser.add_argument("--cv-folds", type=unset_or(whole_number))
    parser.add_argument("--storage", type=unset_or(str))
    parser.add_argument("--study-name", type=unset_or(str))
    parser.add_argument("--autolog", type=unset_or(boolean))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def track(config: ProjectConfig, baseline_run_id: str | None = None) -> TrackResult:
    """Tune; with `baseline_run_id` (an untuned run, say), log its test metrics beside."""
    # Heavy (sklearn, LightGBM, Optuna): imported when the step runs (see train_basic).
    from tabular_mlops import evaluation, pipeline_flavor, tuning
    from tabular_mlops.pipeline import build_pipeline, fit_with_learning_curve

    config.require_tuning()  # before any run: a config without it is a user error
    baseline = tracking.finished_run(baseline_run_id) if baseline_run_id else None
    with tracking.project_run(config, ENTRY_POINT, summary=__doc__) as run:
        tracking.log_config(config)
        table = data.load_table(config.data)
        tracking.log_dataset(table)
        parts = data.split(table, config.split)

        study = tuning.tune(config, table.spec, parts.X_train, parts.y_train, run.info.run_id)
        best = tuning.log_best_trial(study)

        # The best trial's settings, with the trees its folds kept, refit on the whole
        # training split and watched on the test split iteration by iteration.
        best_model = config.model.with_values(
            best.params | {"n_estimators": tuning.refit_trees(best)}
        )
        code = packaging.ShippedCode.build(config.model_code)
        threads = config.compute.resolved_threads()
        pipeline = build_pipeline(table.spec, best_model, config.split.seed, threads)
        with tracking.autologged(config.tracking.autolog):
            curves = fit_with_learning_curve(
                pipeline, parts.X_train, parts.y_train, parts.X_test, parts.y_test
            )
        tracking.log_stepped_metrics(curves, prefix="learning_curve_test")
        model_info = pipeline_flavor.log_pipeline(
            pipeline, parts.X_train, table.raw, config.tracking, code
        )
        metrics = evaluation.log_test_evaluation(
            pipeline, model_info.model_uri, parts.X_test, parts.y_test
        )
        metrics |= evaluation.log_f1_threshold_metrics(
            pipeline, parts.X_train, parts.y_train, parts.X_test, parts.y_test, config.split.seed
        )

        board = tuning.leaderboard(run.info.experiment_id, study.study_name)
        top = tuning.log_report(study, board)
        gains = evaluation.log_baseline_comparison(metrics, baseline) if baseline else {}
    print(f"Top {min(len(board), tuning.TOP_TRIALS_SHOWN)} trials of {study.study_name}:\n{top}")
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


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    return run_with_config(args, OVERRIDES, lambda config: track(config, args.baseline_run_id))


if __name__ == "__main__":
    interrupts.run_as_process(main)
