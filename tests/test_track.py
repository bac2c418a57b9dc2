"""The `track` step in-process on a sample of the churn table, and a shared study."""

import logging
import sqlite3
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import psycopg
import pytest
import sqlalchemy.exc

from steps import track as track_step
from tabular_mlops.core.config import load_config
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.search import BEST_ITERATION, FOLDS_COMPLETED, OBJECTIVE
from tabular_mlops.jobs import studies
from tabular_mlops.mlflow.tuning_report import REFIT_TREES_PARAM
from tests.conftest import CHURN_CONFIG, churn_frame, churn_settings, write_config

SMALL_SPACE = {
    "n_estimators": {"type": "int", "low": 20, "high": 80},
    "learning_rate": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
    "num_leaves": {"type": "int", "low": 4, "high": 31},
    "min_child_samples": {"type": "categorical", "choices": [10, 20, 40]},
}

# Trains, logs and registers for real, in process: not in the fast tier.
TRAINS = pytest.mark.integration


CV_METRICS = {f"cv_{m}_{s}" for m in ("roc_auc", "pr_auc", "log_loss") for s in ("mean", "std")}


def small_config(tmp_path: Path, compute: dict[str, Any] | None = None, **tuning: Any) -> Path:
    churn_frame().sample(1500, random_state=0).to_csv(tmp_path / "churn.csv", index=False)
    return write_config(
        tmp_path / "track.yaml",
        churn_settings(),
        data={"path": str(tmp_path / "churn.csv")},
        tuning={"n_trials": 4, "cv_folds": 3, "search_space": SMALL_SPACE} | tuning,
        compute=compute or {},
    )


def parent_and_trials() -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    runs = mlflow.search_runs(experiment_names=["churn"], output_format="list")
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    trials = [run for run in runs if run is not parent]
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in trials)
    return parent, trials


@TRAINS
def test_track_logs_nested_trials_the_best_model_and_a_report(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert track_step.main(["--config", str(small_config(tmp_path)), "--autolog", "true"]) == 0
    parent, trials = parent_and_trials()
    # Autologging covers the refit only: no run of its own, nothing on the trials (their
    # params are the sampled ones alone, checked below).
    assert parent.info.status == "FINISHED" and len(trials) == 4
    assert {"training_roc_auc", "training_log_loss"} <= set(parent.data.metrics)
    assert parent.data.params["classifier__n_estimators"] == parent.data.params[REFIT_TREES_PARAM]
    profile = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/{Artifact.PROFILE}")
    assert profile["metrics"]["roc_auc"] == pytest.approx(parent.data.metrics["roc_auc"])

    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert trial.data.tags[Tag.TRIAL_STATE] == "COMPLETE"  # 4 trials: none pruned yet
        assert set(trial.data.params) == set(SMALL_SPACE)
        assert set(trial.data.metrics) == CV_METRICS | {BEST_ITERATION, FOLDS_COMPLETED}
        assert trial.data.metrics[FOLDS_COMPLETED] == 3
        assert trial.data.metrics["cv_log_loss_mean"] > 0
        # Early stopping: n_estimators is the ceiling of every fold.
        assert 1 <= trial.data.metrics[BEST_ITERATION] <= int(trial.data.params["n_estimators"])
        for tag in (Tag.ENTRY_POINT, Tag.GIT_DIRTY, Tag.DATASET_DIGEST):
            assert trial.data.tags.get(tag) == parent.data.tags.get(tag)
        assert trial.data.tags[Tag.STUDY].startswith("churn-lightgbm-")

    best = max(trials, key=lambda run: run.data.metrics[OBJECTIVE])
    params = parent.data.params
    assert params["best.mlflow_run_id"] == best.info.run_id
    assert params["best.trial"] == best.data.tags[Tag.TRIAL]
    assert {name: params[f"best.{name}"] for name in SMALL_SPACE} == best.data.params
    metrics = parent.data.metrics
    assert metrics[f"best_{OBJECTIVE}"] == best.data.metrics[OBJECTIVE]
    assert metrics["trials_completed"] == 4 and metrics["trials_pruned"] == 0
    assert {"roc_auc", "log_loss", "brier_score_loss"} <= set(metrics)  # test split, refit

    # The refit model has the trees the best trial's folds kept, on average.
    trees = int(params[REFIT_TREES_PARAM])
    assert trees == max(1, round(best.data.metrics[BEST_ITERATION]))
    history = mlflow.MlflowClient().get_metric_history(
        parent.info.run_id, "learning_curve_test_auc"
    )
    assert [point.step for point in history] == list(range(1, trees + 1))

    board = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="tuning/leaderboard.csv"
        )
    )
    assert board["rank"].tolist() == [1, 2, 3, 4]
    assert board[OBJECTIVE].is_monotonic_decreasing
    assert board["run_id"].iloc[0] == best.info.run_id
    artifacts = {
        item.path for item in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "tuning")
    }
    assert {"tuning/leaderboard.md", "tuning/optimization_history.png"} <= artifacts
    assert {"tuning/param_importances.png", "tuning/intermediate_values.png"} <= artifacts

    out = capsys.readouterr().out
    assert "Top 4 trials of churn-lightgbm-" in out
    assert out.count(best.info.run_id) == 1
    model = mlflow.sklearn.load_model(parent.data.tags[Tag.MODEL_URI])
    assert model.named_steps["classifier"].n_estimators == trees
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.note.content"].startswith("Customer-churn classifier")
    assert experiment.tags["project"] == "tabular-mlops"


@TRAINS
def test_same_config_picks_the_same_best_params(tracking_uri: str, tmp_path: Path) -> None:
    config = str(small_config(tmp_path))
    assert track_step.main(["--config", config]) == 0
    assert track_step.main(["--config", config]) == 0
    parents = mlflow.search_runs(
        experiment_names=["churn"],
        filter_string="tags.mlflow.parentRunId IS NULL",
        output_format="list",
    )
    bests = [
        {k: v for k, v in run.data.params.items() if k.startswith("best.") and "run_id" not in k}
        for run in parents
    ]
    assert len(bests) == 2 and bests[0] == bests[1]
    assert parents[0].data.metrics["roc_auc"] == parents[1].data.metrics["roc_auc"]


@TRAINS
def test_trials_that_cannot_win_are_pruned_and_left_off_the_leaderboard(
    tracking_uri: str, tmp_path: Path
) -> None:
    # A wide learning-rate range makes some trials clearly worse after their first fold.
    space = SMALL_SPACE | {
        "learning_rate": {"type": "float", "low": 0.001, "high": 0.5, "log": True}
    }
    config = small_config(
        tmp_path, n_trials=12, cv_folds=4, pruner_startup_trials=2, search_space=space
    )
    assert track_step.main(["--config", str(config)]) == 0
    parent, trials = parent_and_trials()
    assert len(trials) == 12 and {run.info.status for run in trials} == {"FINISHED"}
    pruned = [run for run in trials if run.data.tags[Tag.TRIAL_STATE] == "PRUNED"]
    complete = [run for run in trials if run.data.tags[Tag.TRIAL_STATE] == "COMPLETE"]
    assert pruned and len(pruned) + len(complete) == 12
    assert all(run.data.metrics[FOLDS_COMPLETED] < 4 for run in pruned)
    assert all(run.data.metrics[FOLDS_COMPLETED] == 4 for run in complete)
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    assert parent.data.metrics["trials_completed"] == len(complete)
    board = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="tuning/leaderboard.csv"
        )
    )
    assert set(board["run_id"]) == {run.info.run_id for run in complete}
    assert parent.data.params["best.mlflow_run_id"] in set(board["run_id"])


@TRAINS
def test_without_early_stopping_every_fold_grows_n_estimators_trees(
    tracking_uri: str, tmp_path: Path
) -> None:
    config = small_config(tmp_path, early_stopping_rounds=None, pruner="none")
    assert track_step.main(["--config", str(config)]) == 0
    parent, trials = parent_and_trials()
    for trial in trials:
        assert trial.data.metrics[BEST_ITERATION] == int(trial.data.params["n_estimators"])
    assert parent.data.params[REFIT_TREES_PARAM] == parent.data.params["best.n_estimators"]


@TRAINS
def test_folds_in_parallel_give_the_results_of_folds_one_by_one(
    tracking_uri: str, tmp_path: Path
) -> None:
    results = []
    for threads in (1, 2):
        config = small_config(tmp_path, compute={"threads": threads}, n_trials=6)
        config = config.rename(tmp_path / f"threads-{threads}.yaml")
        assert track_step.main(["--config", str(config)]) == 0
        parents = mlflow.search_runs(
            experiment_names=["churn"],
            filter_string="tags.mlflow.parentRunId IS NULL",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        parent = parents[0]
        assert parent.data.params["compute.threads"] == str(threads)
        results.append(
            (
                {
                    k: v
                    for k, v in parent.data.params.items()
                    if k.startswith(("best.", "refit.")) and not k.endswith("run_id")
                },
                {k: v for k, v in parent.data.metrics.items() if k.startswith("best_")},
            )
        )
    assert results[0] == results[1]


@pytest.mark.parametrize(
    ("tuning", "argv", "message"),
    [
        ({"search_space": {}}, [], "tuning.search_space: Dictionary should have at least 1 item"),
        ({}, ["--n-trials", "0"], "tuning.n_trials: Input should be greater than or equal to 1"),
        (
            {"search_space": {"max_dpeth": {"type": "int", "low": 2, "high": 8}}},
            [],
            "unknown LightGBM parameter(s): max_dpeth",
        ),
        (
            {"search_space": {"num_leaves": {"type": "int", "low": 1, "high": 8}}},
            [],
            "tuning.search_space.num_leaves reaches 1: num_leaves: Input should be greater",
        ),
        (None, [], "this entry point needs a `tuning` section in the config"),
    ],
)
def test_bad_tuning_input_stops_before_any_run(
    tracking_uri: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tuning: dict[str, Any] | None,
    argv: list[str],
    message: str,
) -> None:
    config = small_config(tmp_path, **(tuning or {}))
    if tuning is None:
        write_config(config, {k: v for k, v in churn_settings().items() if k != "tuning"})
    with caplog.at_level(logging.ERROR):
        assert track_step.main(["--config", str(config), *argv]) == 1
    assert message in caplog.text
    assert mlflow.search_runs(search_all_experiments=True).empty  # no parent, no trial


@TRAINS
def test_parallel_trials_each_get_their_own_finished_run(tracking_uri: str, tmp_path: Path) -> None:
    assert track_step.main(["--config", str(small_config(tmp_path)), "--n-jobs", "2"]) == 0
    parent, trials = parent_and_trials()
    assert len(trials) == 4 and {run.info.status for run in trials} == {"FINISHED"}
    assert sorted(int(run.data.tags[Tag.TRIAL]) for run in trials) == [0, 1, 2, 3]
    assert parent.data.params["tuning.n_jobs"] == "2"


@TRAINS
def test_timeout_stops_starting_trials(tracking_uri: str, tmp_path: Path) -> None:
    config = str(small_config(tmp_path, n_trials=500))
    assert track_step.main(["--config", config, "--timeout", "2"]) == 0
    parent, trials = parent_and_trials()
    assert 1 <= len(trials) < 500
    metrics = parent.data.metrics
    assert metrics["trials_completed"] + metrics["trials_pruned"] == len(trials)


@pytest.mark.unit
@pytest.mark.parametrize(
    "failures, finished, cleanup_failures", [(2, 4, 0), (2, 4, 1), (5, None, 0)]
)
def test_a_shared_study_resumes_after_its_database_fails_a_bounded_number_of_times(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    finished: int | None,
    cleanup_failures: int,
) -> None:
    """Trials that meet a failing database (here: raising as Optuna's RDBStorage does when
    its connection is gone) end FAILED; the search goes on until `n_trials` finished, or the
    failure stands after STORAGE_PAUSES retries. The database may still be down when the
    search comes back to end the caught trials (seen on a busy machine): whatever of that
    fails (reading the trials, telling one FAILED) waits again."""
    monkeypatch.setattr(studies, "STORAGE_PAUSES", (0, 0, 0, 0))
    still_down = [cleanup_failures]
    ending = studies._fail_unfinished

    def fail_unfinished(study: optuna.Study, created: set[int]) -> None:
        if still_down[0]:
            still_down[0] -= 1
            raise optuna.exceptions.StorageInternalError("connection to server lost")
        ending(study, created)

    monkeypatch.setattr(studies, "_fail_unfinished", fail_unfinished)
    tuning = load_config(CHURN_CONFIG).require_tuning()
    tuning = tuning.model_copy(update={"n_trials": 4, "storage": f"sqlite:///{tmp_path}/o.db"})
    created: set[int] = set()
    storage = studies.SharedStorage(tuning.storage, created)
    study = optuna.create_study(storage=storage, direction="maximize")
    left = [failures]

    def objective(trial: optuna.Trial) -> float:
        # Every other trial until `failures` happened; every trial when they are too many.
        if left[0] and (trial.number % 2 or finished is None):
            left[0] -= 1
            raise optuna.exceptions.StorageInternalError("connection to server lost")
        trial.set_user_attr(BEST_ITERATION, 10)  # as a real trial records it
        return trial.suggest_float("x", 0, 1)

    if finished is None:
        with pytest.raises(optuna.exceptions.StorageInternalError):
            studies.optimize(study, objective, tuning, created)
        return
    studies.optimize(study, objective, tuning, created)
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == finished
    assert states.count(optuna.trial.TrialState.FAIL) == failures
    assert optuna.trial.TrialState.RUNNING not in states
    assert still_down == [0]


@pytest.mark.unit
def test_a_trial_the_database_lost_while_it_was_created_ends_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna creates a trial, then reads it back before the objective sees it: a database
    that fails in between (seen in a whole-suite run: a PostgreSQL restart right after a
    trial finished) must not leave that trial RUNNING."""
    monkeypatch.setattr(studies, "STORAGE_PAUSES", (0,))
    lost = [1]

    class LosingOneRead(studies.SharedStorage):
        def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
            if lost[0]:
                lost[0] -= 1
                raise optuna.exceptions.StorageInternalError("connection to server lost")
            return super().get_trial(trial_id)

    tuning = load_config(CHURN_CONFIG).require_tuning()
    tuning = tuning.model_copy(update={"n_trials": 2, "storage": f"sqlite:///{tmp_path}/o.db"})
    created: set[int] = set()
    study = optuna.create_study(storage=LosingOneRead(tuning.storage, created))
    seen: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(trial.number)
        trial.set_user_attr(BEST_ITERATION, 10)  # as a real trial records it
        return trial.suggest_float("x", 0, 1)

    studies.optimize(study, objective, tuning, created)
    states = [trial.state for trial in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert seen == [1, 2] and created == {0, 1, 2}  # trial 0 never reached the objective


@pytest.mark.unit
def test_a_result_recorded_before_its_answer_was_lost_counts_as_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that commits a trial's result and then drops the connection before
    answering (seen in a whole-suite run: a PostgreSQL restart) leaves that trial finished:
    the search counts it, and runs `n_trials` in all, not one more."""
    monkeypatch.setattr(studies, "STORAGE_PAUSES", (0,))
    lost = [1]

    class LosingOneAnswer(studies.SharedStorage):
        def set_trial_state_values(self, *args: Any, **kwargs: Any) -> bool:
            recorded = super().set_trial_state_values(*args, **kwargs)
            if lost[0]:
                lost[0] -= 1
                raise optuna.exceptions.StorageInternalError("server closed the connection")
            return recorded

    tuning = load_config(CHURN_CONFIG).require_tuning()
    tuning = tuning.model_copy(update={"n_trials": 3, "storage": f"sqlite:///{tmp_path}/o.db"})
    created: set[int] = set()
    study = optuna.create_study(storage=LosingOneAnswer(tuning.storage, created))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(BEST_ITERATION, 10)  # as a real trial records it
        return trial.suggest_float("x", 0, 1)

    studies.optimize(study, objective, tuning, created)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def _sqlalchemy_error(driver_error: Exception) -> sqlalchemy.exc.OperationalError:
    """What SQLAlchemy raises for `driver_error` (psycopg's), as Optuna meets it."""
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, driver_error)


def _open_study(storage: str) -> optuna.Study:
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    return studies.open_study("shared", storage, sampler, pruner, set())


@pytest.mark.unit
def test_a_worker_started_while_the_database_restarts_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen in a whole-suite run: the second of two workers sharing a study opened it while
    PostgreSQL restarted, and failed on its first connection; it now waits, as the search
    does once it runs."""
    monkeypatch.setattr(studies, "STORAGE_PAUSES", (0, 0))
    refused = _sqlalchemy_error(psycopg.OperationalError("connection refused"))  # no SQLSTATE
    shutting_down = optuna.exceptions.StorageInternalError("commit failed")
    shutting_down.__cause__ = _sqlalchemy_error(psycopg.errors.lookup("57P01")("terminating"))
    failures = [refused, shutting_down]
    create_study = optuna.create_study

    def flaky(**kwargs: Any) -> optuna.Study:
        if failures:
            raise failures.pop(0)
        return create_study(**kwargs)

    monkeypatch.setattr(optuna, "create_study", flaky)
    with caplog.at_level(logging.WARNING, logger=studies.__name__):
        study = _open_study("sqlite://")
    assert study.study_name == "shared" and failures == []
    assert [record.message.split(" (")[0] for record in caplog.records] == [
        "Optuna's storage cannot be reached"
    ] * 2


@pytest.mark.unit
def test_a_database_that_refuses_or_stays_away_is_one_line() -> None:
    """A wrong password is said at once, without waiting; a database that never answers
    after every pause (here: a closed port, the real driver) too; neither shows a password."""
    wrong_password = _sqlalchemy_error(psycopg.errors.lookup("28P01")("password failed"))
    assert not studies._unreachable(wrong_password)
    assert not studies._unreachable(_sqlalchemy_error(sqlite3.OperationalError("locked")))
    closed = "postgresql+psycopg://optuna:s3cret@127.0.0.1:9/optuna"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(studies, "STORAGE_PAUSES", (0,))
        with pytest.raises(UserInputError) as refused:
            _open_study(closed)
    message = str(refused.value)
    assert message.startswith("Optuna's storage postgresql+psycopg://optuna:***@127.0.0.1:9")
    assert "Connection refused" in message and "s3cret" not in message and "\n" not in message


@pytest.mark.unit
def test_a_storage_failure_is_recognised_behind_what_optuna_raises_instead() -> None:
    try:
        try:
            raise optuna.exceptions.StorageInternalError("connection lost")
        except optuna.exceptions.StorageInternalError:
            raise UnboundLocalError("updated_state") from None
    except UnboundLocalError as hidden:
        hidden.__context__ = optuna.exceptions.StorageInternalError("connection lost")
        assert studies._storage_failed(hidden)
    assert not studies._storage_failed(UnboundLocalError("a bug of ours"))
