"""End to end: `mlflow run` stopped by Ctrl-C or by `kill` while its step works
ends within 5 s, every run it had open KILLED with the signal named, no process left."""

import signal
from pathlib import Path

import pytest

from bench.interrupts import Interruption, interrupt, run_is_running
from tabular_mlops.tuning import TRIAL_TAG
from tests.conftest import mlflow_run_environment, new_store

pytestmark = pytest.mark.e2e

END_WITHIN_SECONDS = 5.0
# Enough trials that the signal always lands inside one.
MANY_TRIALS = "n_trials=500"


def stop(
    project: Path,
    store: str,
    entry_point: str,
    signum: signal.Signals,
    group: bool,
    *parameters: str,
) -> Interruption:
    ready = run_is_running("track", TRIAL_TAG)  # a trial is training
    environment = mlflow_run_environment(project, store)
    return interrupt(project, environment, entry_point, list(parameters), signum, group, ready)


def assert_stopped_cleanly(result: Interruption, killed_at_least: int) -> None:
    assert result.seconds_to_end < END_WITHIN_SECONDS, result.output[-3000:]
    assert result.left_behind == []
    assert result.exit_code != 0
    assert result.statuses["KILLED"] >= killed_at_least
    assert set(result.statuses) <= {"KILLED", "FINISHED"}, result.statuses  # none RUNNING
    assert result.errors == {f"interrupted by {result.signal_name}"}


# Ctrl-C and a closed terminal signal the whole process group; `kill PID` only `mlflow run`
# (its step is then sent SIGTERM by the kernel). SIGHUP is handled as SIGINT and SIGTERM
# are (tests/test_interrupts.py).
def test_track_stopped_by_ctrl_c_during_a_trial(project: Path, tmp_path: Path) -> None:
    result = stop(project, new_store(tmp_path), "track", signal.SIGINT, True, MANY_TRIALS)
    assert_stopped_cleanly(result, killed_at_least=2)  # track's run and the trial's


def test_main_stopped_by_kill_in_its_track_step(project: Path, tmp_path: Path) -> None:
    result = stop(project, new_store(tmp_path), "main", signal.SIGTERM, False, MANY_TRIALS)
    # main's run, track's and the trial's; train_basic had finished.
    assert_stopped_cleanly(result, killed_at_least=3)
    assert result.statuses["FINISHED"] >= 1
