"""SIGTERM, SIGINT and SIGHUP end a process of ours within seconds, its runs KILLED with the
signal named; a process whose parent dies is stopped too. Real processes, real signals."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tabular_mlops.core.names import Tag
from tabular_mlops.runtime import interrupts, processes
from tests.conftest import new_store, users_environment

pytestmark = pytest.mark.system  # starts processes

END_WITHIN_SECONDS = 5.0

# Opens a run, a nested run and a run made with the client (as a trial is), then waits in
# `wait` mode: `sleep` (interruptible), `swallow_once` (a library eats the first
# KeyboardInterrupt: it is raised again) or `swallow` (it eats them all, so that only the
# watchdog can end the process). With `twice`, a second signal comes while the first one's
# handler is at work (as `mlflow run`'s SIGTERM follows a Ctrl-C). Prints the run ids when
# ready.
_PROCESS = """
import os, signal, sys, time
from tabular_mlops.runtime import interrupts
from tabular_mlops.runtime import processes
interrupts.install()
import mlflow

if "twice" in sys.argv[2:]:
    signal_children = interrupts._signal_children

    def signalled_again(signum):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the second handler runs here, nested
        signal_children(signum)

    interrupts._signal_children = signalled_again

def main():
    mode = sys.argv[1]
    with mlflow.start_run() as run, interrupts.run_ends_killed(run.info.run_id):
        nested = mlflow.start_run(nested=True)
        with nested, interrupts.run_ends_killed(nested.info.run_id):
            made = mlflow.MlflowClient().create_run(run.info.experiment_id)
            with interrupts.run_ends_killed(made.info.run_id):
                ids = f"{run.info.run_id} {nested.info.run_id} {made.info.run_id}"
                while True:
                    try:  # ready only once inside: a signal can come as soon as it prints
                        if ids:
                            print(ids, flush=True)
                            ids = ""
                        time.sleep(0.05)
                    except KeyboardInterrupt:
                        if mode == "sleep":
                            raise
                        if mode == "swallow_once":
                            mode = "sleep"
    return 0

interrupts.run_as_process(main)
"""

# Starts _PROCESS as its child and prints the child's pid, then waits to be killed (or for
# a child that could not start, so that the test reads the end of the pipe, not a hang).
_PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], "sleep"])
print(child.pid, flush=True)
child.wait()
"""


def _start(tmp_path: Path, *command: str) -> subprocess.Popen[str]:
    environment = users_environment() | {"MLFLOW_TRACKING_URI": new_store(tmp_path)}
    environment.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", *command],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _runs(tmp_path: Path, run_ids: list[str]) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [client.get_run(run_id) for run_id in run_ids]


def _gone(pid: int) -> bool:
    return not processes.is_alive(pid)


@pytest.mark.parametrize(
    ("signum", "mode"),
    [
        (signal.SIGTERM, "sleep"),
        (signal.SIGINT, "sleep"),
        (signal.SIGHUP, "swallow_once"),
        (signal.SIGTERM, "swallow"),
        (signal.SIGINT, "swallow twice"),
    ],
)
def test_a_signal_ends_every_open_run_killed_and_the_process(
    tmp_path: Path, signum: signal.Signals, mode: str
) -> None:
    process = _start(tmp_path, _PROCESS, *mode.split())
    run_ids = process.stdout.readline().split()
    assert len(run_ids) == 3, "the process did not start its runs"

    sent = time.monotonic()
    process.send_signal(signum)
    code = process.wait(timeout=30)
    seconds = time.monotonic() - sent

    assert code == 128 + signum
    assert seconds < END_WITHIN_SECONDS
    if mode.split()[0] == "swallow":  # only the watchdog could end it, after its grace
        assert seconds >= interrupts.GRACE_SECONDS
    else:  # raised again if swallowed, it unwound: no watchdog
        assert seconds < interrupts.GRACE_SECONDS
    for run in _runs(tmp_path, run_ids):
        assert run.info.status == "KILLED"
        assert run.data.tags[Tag.ERROR] == f"interrupted by {signum.name}"


def test_a_process_whose_parent_dies_is_stopped_with_its_runs(tmp_path: Path) -> None:
    parent = _start(tmp_path, _PARENT, _PROCESS)
    child = int(parent.stdout.readline())
    run_ids = parent.stdout.readline().split()  # the child's, through the same pipe
    assert len(run_ids) == 3, "the child did not start its runs"

    parent.kill()  # as `mlflow run` dies on a SIGTERM sent to it alone
    parent.wait()
    deadline = time.monotonic() + END_WITHIN_SECONDS
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert _gone(child), "the orphaned child kept running"
    for run in _runs(tmp_path, run_ids):
        assert run.info.status == "KILLED"
        assert run.data.tags[Tag.ERROR] == "interrupted by SIGTERM"


def test_importing_steps_leaves_signal_handling_alone() -> None:
    # Only `python -m steps.<name>` installs the handlers; a test or a notebook does not.
    import steps  # noqa: F401

    assert signal.getsignal(signal.SIGTERM) is not interrupts._on_signal
