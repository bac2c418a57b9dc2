"""Runs left RUNNING by a process that can no longer end them (SIGKILL, a power cut, an
OOM kill): found, and ended KILLED on request (`register -P action=stale|reap`).

Each run this project opens carries a `process` tag, `<host> <pid> <start>`, where
`<start>` is the process's start time in clock ticks since boot (so a recycled pid is not
taken for the same process), or `-` where the system does not give it (macOS). A RUNNING
run is stale when its process, on this host, is gone; a run from another host, or without
the tag (a step killed while starting), when it started more than `stale_after_hours` ago:
from here we cannot tell if it still runs.
Caches and candidate searches only ever take FINISHED runs, stale or not.
"""

import logging
import os
import socket
import time
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.entities import Run, RunStatus

from tabular_mlops.core.names import MAX_TAG_LENGTH, Tag
from tabular_mlops.runtime import processes

logger = logging.getLogger(__name__)
MAX_RUNNING_RUNS = 10_000
UNKNOWN_START = "-"  # in Tag.PROCESS, where the system does not give start times


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    run_name: str
    experiment_id: str
    started_hours_ago: float
    reason: str  # why it is taken for stale


def this_process() -> str:
    """The value of Tag.PROCESS for runs this process opens."""
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {processes.start_time(pid) or UNKNOWN_START}"


def process_gone(identity: str) -> bool | None:
    """True if the process `identity` names has ended; None when it cannot be told
    from here (another host, a malformed value)."""
    try:
        host, pid, start = identity.split(" ")
        number = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if start == UNKNOWN_START:  # recorded where the start time is not known
        return not processes.is_alive(number)
    return processes.start_time(number) != start


def find_stale(experiment_ids: list[str], stale_after_hours: float) -> list[StaleRun]:
    """RUNNING runs of these experiments whose process has ended (see the module's doc),
    the active run excepted."""
    active = mlflow.active_run()
    running = mlflow.MlflowClient().search_runs(
        experiment_ids, "attributes.status = 'RUNNING'", max_results=MAX_RUNNING_RUNS
    )
    stale = []
    for run in running:
        if active is not None and run.info.run_id == active.info.run_id:
            continue
        hours = (time.time() * 1000 - run.info.start_time) / 3_600_000
        if (reason := _why_stale(run, hours, stale_after_hours)) is not None:
            stale.append(
                StaleRun(run.info.run_id, run.info.run_name, run.info.experiment_id, hours, reason)
            )
    return stale


def _why_stale(run: Run, hours: float, stale_after_hours: float) -> str | None:
    identity = run.data.tags.get(Tag.PROCESS)
    gone = process_gone(identity) if identity else None
    if gone and identity:
        host, pid, _ = identity.split(" ")
        return f"its process {pid} on {host} has ended"
    if gone is None and hours > stale_after_hours:
        where = f"process {identity}" if identity else "no process recorded"
        return f"RUNNING for {hours:.1f} h ({where}; stale after {stale_after_hours:g} h)"
    return None


def reap(stale: list[StaleRun]) -> None:
    """End each run KILLED, with an `error` tag saying why it was taken for stale."""
    client = mlflow.MlflowClient()
    killed = RunStatus.to_string(RunStatus.KILLED)
    for run in stale:
        client.set_tag(run.run_id, Tag.ERROR, f"reaped: {run.reason}"[:MAX_TAG_LENGTH])
        client.set_terminated(run.run_id, killed)
        logger.info("run %s (%s) ended KILLED: %s", run.run_id, run.run_name, run.reason)


def as_table(stale: list[StaleRun]) -> str:
    if not stale:
        return "none"
    rows = [
        {
            "run_id": run.run_id,
            "run_name": run.run_name,
            "experiment_id": run.experiment_id,
            "started (h ago)": round(run.started_hours_ago, 2),
            "why": run.reason,
        }
        for run in stale
    ]
    return pd.DataFrame(rows).to_markdown(index=False)
