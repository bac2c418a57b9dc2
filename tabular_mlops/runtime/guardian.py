"""Puts KILLED back on a run that `mlflow run` marked FAILED after its step was interrupted.

Workaround of MLflow's `mlflow.projects._maybe_set_run_terminated` (checked on 3.17.2): it
passes a status *name* to `RunStatus.is_terminated`, which expects a status *number*, so
the run is never seen as terminated and `mlflow run` (or `mlflow.run`) overwrites the
KILLED our step ended it with by FAILED, once the step has exited (on Ctrl-C, and when a
signal reached the step alone). The canary is tests/test_workarounds.py: when MLflow
stops overwriting, it fails, and this module can go.

The guardian is forked as the step starts (`run_as_process`), while the process has a
single thread and has opened no store: no lock is held by a thread the fork loses, no
connection is shared. It leaves the process group (a second Ctrl-C does not reach it) and
waits on a pipe. A step that ends normally closes the pipe: the guardian exits. An
interrupted step writes the run and store to restore before it exits: the guardian waits
for `mlflow run` to end, then ends the run KILLED again if it was marked FAILED over our
`interrupted by` error tag. A step killed outright (SIGKILL) closes the pipe too: its runs
stay RUNNING for `register -P action=reap`.
"""

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from tabular_mlops.core.names import Status, Tag
from tabular_mlops.runtime import processes

logger = logging.getLogger(__name__)

RESTORE_WAIT_SECONDS = 30.0
# The `error` tag of a run our step ended KILLED: this prefix and the signal's name.
INTERRUPTED_PREFIX = "interrupted by "


@dataclass(frozen=True)
class Guardian:
    pid: int
    _pipe: int  # its write end

    def restore_after_launcher(self, run_id: str, tracking_uri: str) -> None:
        """Ask the guardian to put KILLED back on `run_id` once the launcher has ended."""
        try:
            os.write(self._pipe, json.dumps({"run_id": run_id, "store": tracking_uri}).encode())
        finally:
            os.close(self._pipe)


def start(run_id: str | None) -> Guardian | None:
    """Fork the guardian of `run_id`, the run `mlflow run` opened for this process (None
    when it was not launched so: nothing to guard). Only from a single-threaded process."""
    launcher = os.getppid()
    if run_id is None or launcher == 1 or not processes.is_alive(launcher):
        return None
    if threading.active_count() > 1:  # a fork would lose threads that may hold locks
        logger.warning("no guardian: %d threads already run", threading.active_count())
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _guard(read_end, launcher)
    os.close(read_end)
    return Guardian(pid, write_end)


def _guard(pipe: int, launcher: int) -> NoReturn:
    os.setsid()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    code = 0
    try:
        with os.fdopen(pipe, "rb") as requests:
            request = requests.read()  # until the step writes and closes, or exits
        if request:
            asked = json.loads(request)
            _wait_for_exit(launcher)
            restore_killed(asked["run_id"], asked["store"])
    except Exception as error:
        logger.warning("could not mark the run KILLED again: %s", error)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + RESTORE_WAIT_SECONDS
    while processes.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def restore_killed(run_id: str, tracking_uri: str) -> None:
    """End `run_id` KILLED again if it is FAILED over its `interrupted by` error tag."""
    import mlflow  # imported already in the step this process was forked from

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    interrupted = run.data.tags.get(Tag.ERROR, "").startswith(INTERRUPTED_PREFIX)
    if run.info.status == Status.FAILED and interrupted:
        client.set_terminated(run_id, Status.KILLED, end_time=run.info.end_time)
