"""Runs left RUNNING by a process that is gone are listed by `register -P action=stale` and
ended KILLED by `action=reap`; runs whose process lives, or that are too young to judge,
are left alone."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tabular_mlops.core.config import load_config
from tabular_mlops.core.names import Tag
from tabular_mlops.jobs.register import register
from tabular_mlops.runtime import processes, stale_runs
from tests.conftest import CHURN_CONFIG

HOST = socket.gethostname()
HOUR_MS = 3_600_000


def open_run(name: str, process: str | None, hours_ago: float = 0.0) -> str:
    """A RUNNING run in the config's experiment, as a process that never ended it left it."""
    experiment = mlflow.set_experiment("churn").experiment_id
    started = int(time.time() * 1000 - hours_ago * HOUR_MS)
    tags = {Tag.PROCESS: process} if process else {}
    return mlflow.MlflowClient().create_run(experiment, started, tags, name).info.run_id


def test_stale_and_live_runs_are_told_apart_and_only_stale_ones_reaped(tracking_uri: str) -> None:
    me = stale_runs.this_process()
    pid = os.getpid()
    expected_stale = {
        open_run("pid gone", f"{HOST} 999999999 12345"): "its process 999999999",
        open_run("pid recycled", f"{HOST} {pid} 1"): f"its process {pid}",  # another start
        open_run("other host, old", "elsewhere 1 1", hours_ago=25): "RUNNING for 25.0 h",
        open_run("no tag, old", None, hours_ago=30): "no process recorded",
    }
    alive = [
        open_run("this process", me, hours_ago=100),  # alive: never stale, however old
        open_run("other host, young", "elsewhere 1 1", hours_ago=2),
        open_run("no tag, young", None),
        open_run("malformed, young", "not a process"),
    ]
    finished = open_run("finished", f"{HOST} 999999999 1")
    mlflow.MlflowClient().set_terminated(finished)

    config = load_config(CHURN_CONFIG)
    listed = register(config, "stale")
    assert {run.run_id for run in listed.stale} == set(expected_stale)
    for run in listed.stale:
        assert expected_stale[run.run_id] in run.reason
    client = mlflow.MlflowClient()
    assert {client.get_run(r).info.status for r in expected_stale} == {"RUNNING"}  # listed only
    assert client.get_run(listed.run_id).data.metrics["stale_runs"] == 4

    reaped = register(config, "reap")
    assert {run.run_id for run in reaped.stale} == set(expected_stale)
    for run_id, reason in expected_stale.items():
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags[Tag.ERROR].startswith("reaped: ")
        assert reason in run.data.tags[Tag.ERROR]
    assert {client.get_run(run_id).info.status for run_id in alive} == {"RUNNING"}
    assert client.get_run(finished).info.status == "FINISHED"
    # The register runs themselves finished, and nothing is left to reap.
    assert client.get_run(reaped.run_id).info.status == "FINISHED"
    assert register(config, "stale").stale == []


def test_stale_after_hours_is_a_parameter(tracking_uri: str) -> None:
    old = open_run("other host", "elsewhere 1 1", hours_ago=3)
    config = load_config(CHURN_CONFIG, {"tracking.stale_after_hours": 2})
    assert [run.run_id for run in register(config, "stale").stale] == [old]
    with pytest.raises(Exception, match="greater than 0"):
        load_config(CHURN_CONFIG, {"tracking.stale_after_hours": 0})


def test_runs_of_this_project_record_their_process(tracking_uri: str) -> None:
    config = load_config(CHURN_CONFIG)
    run_id = register(config, "stale").run_id
    assert mlflow.get_run(run_id).data.tags[Tag.PROCESS] == stale_runs.this_process()


def test_without_proc_liveness_comes_from_the_process_table(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on macOS: no /proc, so no start times; `os.kill(pid, 0)` and `ps` instead.
    monkeypatch.setattr(processes, "PROC", Path("/no/such/proc"))
    assert stale_runs.this_process() == f"{HOST} {os.getpid()} -"
    gone = open_run("gone", f"{HOST} 999999999 -")
    open_run("alive", stale_runs.this_process())
    config = load_config(CHURN_CONFIG)
    assert [run.run_id for run in register(config, "stale").stale] == [gone]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in processes.children(os.getpid())
    finally:
        child.kill()
        child.wait()
