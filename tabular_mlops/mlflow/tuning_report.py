"""What `track` reports about its study, in its parent run: the best trial, a leaderboard
of completed trials ranked by MLflow's search, and Optuna's plots."""

import logging
import warnings
from typing import cast

import mlflow
import optuna
import pandas as pd
from matplotlib.figure import Figure

from tabular_mlops.core.names import Artifact, Status, Tag
from tabular_mlops.core.plots import pyplot
from tabular_mlops.core.search import (
    BEST_ITERATION,
    COMPLETE,
    OBJECTIVE,
    PRUNED,
    cv_metric_names,
    refit_trees,
    trials_in,
)

logger = logging.getLogger(__name__)

REFIT_TREES_PARAM = "refit.n_estimators"
TOP_TRIALS_SHOWN = 5


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
        {f"best_{name}": best.user_attrs[name] for name in cv_metric_names()}
        | {"trials_completed": len(trials_in(study, COMPLETE))}
        | {"trials_pruned": len(trials_in(study, PRUNED))}
    )
    return best


def leaderboard(experiment_id: str, study: str) -> pd.DataFrame:
    """Every completed trial run of the study (pruned ones are left out: their scores
    cover some folds only), best first, ranked by MLflow's search."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.{Tag.STUDY} = '{study}' AND tags.{Tag.TRIAL_STATE} = '{COMPLETE.name}' "
            f"AND attributes.status = '{Status.FINISHED}'"
        ),
        order_by=[f"metrics.{OBJECTIVE} DESC"],
    )
    if runs.empty:
        return pd.DataFrame()
    params = sorted(column for column in runs.columns if column.startswith("params."))
    columns = [*cv_metric_names(), BEST_ITERATION]
    board = runs[[f"tags.{Tag.TRIAL}", "run_id", *(f"metrics.{m}" for m in columns), *params]]
    board.columns = [column.split(".", 1)[-1] for column in board.columns]
    board = board.rename(columns={Tag.TRIAL: "trial"})
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def log_report(study: optuna.Study, board: pd.DataFrame) -> str:
    """Log the leaderboard (CSV and Markdown) and the study's plots; returns the top rows."""
    mlflow.log_text(board.to_csv(index=False), Artifact.LEADERBOARD_CSV)
    mlflow.log_text(board.to_markdown(index=False, floatfmt=".4f"), Artifact.LEADERBOARD_MD)
    _log_study_plots(study)
    return board.head(TOP_TRIALS_SHOWN).to_markdown(index=False, floatfmt=".4f")


def _log_study_plots(study: optuna.Study) -> None:
    plt = pyplot()
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        f"{Artifact.TUNING_PLOTS}/optimization_history.png": optuna_plots.plot_optimization_history,
        # Each trial's running CV ROC AUC fold by fold: where pruned trials stopped.
        f"{Artifact.TUNING_PLOTS}/intermediate_values.png": optuna_plots.plot_intermediate_values,
        f"{Artifact.TUNING_PLOTS}/param_importances.png": optuna_plots.plot_param_importances,
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
            figure = cast(Figure, axes.figure)
            figure.tight_layout()
            mlflow.log_figure(figure, path)
            plt.close(figure)
