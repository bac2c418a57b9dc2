"""End to end: `mlflow run` stopped by Ctrl-C or by `kill` while its step works
ends within 5 s, every run it had open KILLED with the signal named, no process left."""

import signal
from pathlib import Path

import pytest

from tabular_mlops.core.names import Tag
from test_support.stopping import Interruption, interrupt, run_is_running
from tests.conftest import mlflow_run_environment, new_store

pytestmark = pytest.mark.system

END_WITHIN_SECONDS = 5.0
# Trials that train for minutes, so that the signal lands inside one: short ones (1 s,
# some pruned sooner) left it, now and then, between two trials or in a trial's logging.
SLOW_TRIALS = """\
extends: {base}
tuning:
  early_stopping_rounds: null
  search_space:
    n_estimators: {{type: int, low: 100000, high: 100001}}
"""


def slow_trials_config(project: Path, folder: Path) -> str:
    path = folder / "slow-trials.yaml"
    path.write_text(SLOW_TRIALS.format(base=project / "config" / "churn.yaml"))
    return f"config={path}"


def stop(
    project: Path,
    store: str,
    entry_point: str,
    signum: signal.Signals,
    group: bool,
    *parameters: str,
) -> Interruption:
    ready = run_is_running("track", Tag.TRIAL)  # a trial is training
    environment = mlflow_run_environment(project, store)
    return interrupt(project, environment, entry_point, list(parameters), signum, group, ready)


def assert_stopped_cleanly(result: Interruption, killed: int) -> None:
    assert result.seconds_to_end < END_WITHIN_SECONDS, result.output[-3000:]
    assert result.left_behind == []
    assert result.exit_code != 0
    assert result.statuses["KILLED"] == killed, (result.statuses, result.output[-3000:])
    assert set(result.statuses) <= {"KILLED", "FINISHED"}, result.statuses  # none RUNNING
    assert result.errors == {f"interrupted by {result.signal_name}"}


# Ctrl-C and a closed terminal signal the whole process group; `kill PID` only `mlflow run`
# (its step is then sent SIGTERM by the kernel). SIGHUP is handled as SIGINT and SIGTERM
# are (tests/test_interrupts.py).
def test_track_stopped_by_ctrl_c_during_a_trial(project: Path, tmp_path: Path) -> None:
    config = slow_trials_config(project, tmp_path)
    result = stop(project, new_store(tmp_path), "track", signal.SIGINT, True, config)
    assert_stopped_cleanly(result, killed=2)  # track's run and the trial's


def test_main_stopped_by_kill_in_its_track_step(project: Path, tmp_path: Path) -> None:
    config = slow_trials_config(project, tmp_path)
    result = stop(project, new_store(tmp_path), "main", signal.SIGTERM, False, config)
    # main's run, track's and the trial's; train_basic had finished.
    assert_stopped_cleanly(result, killed=3)
    assert result.statuses["FINISHED"] >= 1
