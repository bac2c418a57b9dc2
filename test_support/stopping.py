"""Stop `mlflow run` with a signal once its step is at work, and watch it end: how long until
no process of it is left, how its runs ended (the end-to-end interrupt tests and
`python -m bench.interrupts`).

SIGINT and SIGHUP go to the process group, as Ctrl-C and a closed terminal send them;
SIGTERM goes to the `mlflow run` process alone, as `kill PID` does (its step then gets
SIGTERM from the kernel, see tabular_mlops.runtime.interrupts).
"""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

logger = logging.getLogger(__name__)
MARK_ENV = "TABULAR_MLOPS_PROCESS_MARK"  # every process of one interrupted run inherits it
READY_TIMEOUT_SECONDS = 120.0
END_TIMEOUT_SECONDS = 30.0
END_WITHIN_SECONDS = 5.0  # the target
POLL_SECONDS = 0.05

# Is the step at work? Given a client, the run's experiment id and its processes' mark.
Readiness = Callable[[mlflow.MlflowClient, str, str], bool]


@dataclass
class Interruption:
    entry_point: str
    signal_name: str
    to_group: bool
    seconds_to_end: float  # signal -> no process of the run left
    exit_code: int | None  # of `mlflow run`
    statuses: Counter[str] = field(default_factory=Counter)
    errors: set[str] = field(default_factory=set)  # the `error` tags of the runs
    left_behind: list[int] = field(default_factory=list)  # pids alive after END_TIMEOUT
    output: str = ""

    def row(self) -> dict[str, object]:
        return {
            "entry point": self.entry_point,
            "signal": self.signal_name + (" (group)" if self.to_group else " (mlflow run)"),
            "s to end": round(self.seconds_to_end, 2),
            "runs": ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())),
            "error tags": "; ".join(sorted(self.errors)),
            "left behind": len(self.left_behind),
        }


def run_is_running(entry_point: str, tag: str | None = None) -> Readiness:
    """Ready when a run of `entry_point` (with `tag` set, if given) is RUNNING."""
    condition = f"tags.entry_point = '{entry_point}' and attributes.status = 'RUNNING'"
    if tag:
        condition += f" and tags.`{tag}` != ''"

    def ready(client: mlflow.MlflowClient, experiment_id: str, mark: str) -> bool:
        return bool(client.search_runs([experiment_id], condition, max_results=1))

    return ready


def process_is_running(text: str) -> Readiness:
    """Ready when a process of the run has `text` in its command line."""

    def ready(client: mlflow.MlflowClient, experiment_id: str, mark: str) -> bool:
        for pid in marked_processes(mark):
            try:
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
        return False

    return ready


# A process of the custom model's isolated check (tabular_mlops.jobs.wrap) is running.
ISOLATED_CHECK = process_is_running("get_flavor_backend")


def marked_processes(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds MARK_ENV=mark."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def interrupt(
    project: Path,
    environment: dict[str, str],
    entry_point: str,
    parameters: list[str],
    signum: signal.Signals,
    to_group: bool,
    ready: Readiness,
    settle_seconds: float = 0.5,
    experiment: str | None = None,
) -> Interruption:
    """Start `mlflow run` (in the store environment's MLFLOW_TRACKING_URI), signal it once
    `ready` and `settle_seconds` more, and watch it end."""
    experiment = experiment or f"interrupt-{entry_point}-{uuid.uuid4().hex[:8]}"
    mark = uuid.uuid4().hex
    command = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry_point]
    command += ["--env-manager", "local", "--experiment-name", experiment]
    for parameter in parameters:
        command += ["-P", parameter]
    client = mlflow.MlflowClient(environment["MLFLOW_TRACKING_URI"])
    log = Path(tempfile.gettempdir()) / f"interrupt-{mark}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=environment | {MARK_ENV: mark},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_ready(process, client, experiment, lambda c, e: ready(c, e, mark))
        time.sleep(settle_seconds)
        if process.poll() is not None:
            raise RuntimeError(f"{entry_point} ended before the signal")
        sent = time.monotonic()
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        left = marked_processes(mark)
        while left and time.monotonic() - sent < END_TIMEOUT_SECONDS:
            process.poll()  # reap `mlflow run` itself
            time.sleep(POLL_SECONDS)
            left = marked_processes(mark)
        seconds = time.monotonic() - sent
    finally:
        for pid in marked_processes(mark):
            os.kill(pid, signal.SIGKILL)
        process.wait()
        printed = log.read_text()
        log.unlink()
    result = Interruption(entry_point, signum.name, to_group, seconds, process.returncode)
    result.left_behind = left
    result.output = printed
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"experiment {experiment} was never created")
    experiment_id = found.experiment_id
    for run in client.search_runs([experiment_id], max_results=1000):
        result.statuses[run.info.status] += 1
        if "error" in run.data.tags:
            result.errors.add(run.data.tags["error"])
    return result


def _wait_until_ready(
    process: subprocess.Popen[bytes],
    client: mlflow.MlflowClient,
    experiment: str,
    ready: Callable[[mlflow.MlflowClient, str], bool],
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow run ended (exit {process.returncode}) before it was ready")
        found = client.get_experiment_by_name(experiment)
        if found is not None and ready(client, found.experiment_id):
            return
        time.sleep(0.2)
    raise RuntimeError(f"not ready within {READY_TIMEOUT_SECONDS:g} s")


# What each entry point is given, and when it is at work, for the bench: label ->
# (entry point, parameters, readiness).
