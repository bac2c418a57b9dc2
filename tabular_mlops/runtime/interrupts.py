"""Stopping cleanly on SIGTERM, SIGINT and SIGHUP.

An entry point's process turns these signals into `Interrupted`, a KeyboardInterrupt, so
that MLflow and Optuna unwind as they do for Ctrl-C (MLflow's `mlflow.run` then stops a
child step). Each run the process opened ends KILLED with an `error` tag naming the
signal, and the process exits with 128 + the signal's number. If the main thread cannot
unwind within GRACE_SECONDS (native code that does not return, a library that swallows
KeyboardInterrupt), a watchdog thread ends the runs and the process itself.

`mlflow run` does not catch SIGTERM or SIGHUP: sent to it alone, it dies at once and its
step would go on as an orphan. So a step also asks the kernel for SIGTERM when its parent
dies (Linux), and reports that as SIGTERM. On SIGINT, `mlflow run` outlives its step and
then marks the step's run FAILED over our KILLED: the step's guardian (runtime.guardian)
puts KILLED back.

Import-light on purpose (no MLflow at import): `steps` installs it before importing
anything else.
"""

import _thread
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from tabular_mlops.runtime import guardian, processes

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Unwinding, then ending the runs, must fit in the 5 s a stopped step is given.
GRACE_SECONDS = 3.0
RAISE_AGAIN_SECONDS = 0.25  # a swallowed interrupt is raised again this often
MARKING_SECONDS = 1.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ERROR_PREFIX = guardian.INTERRUPTED_PREFIX  # + the signal's name: a stopped run's `error` tag

logger = logging.getLogger(__name__)
_open_runs: list[str] = []  # runs this process opened and has not ended, innermost last
_open_runs_lock = threading.Lock()
_launched_by: str | None = None  # the run `mlflow run` opened for this process
_first: "Interrupted | None" = None  # the first signal, as raised
_caught = threading.Event()  # set once our code caught it: the unwinding is under way
_handling_first = threading.Event()  # the first signal's handler is at work
_guardian: guardian.Guardian | None = None  # puts KILLED back after `mlflow run` (see there)


class Interrupted(KeyboardInterrupt):
    """The process received SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(ERROR_PREFIX + self.signal_name)


def install() -> None:
    """Make SIGTERM, SIGINT and SIGHUP raise Interrupted in the main thread, and ask for
    SIGTERM when the parent process dies."""
    global _launched_by
    _launched_by = os.environ.get("MLFLOW_RUN_ID")  # fluent end_run() unsets it
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)
    if sys.platform == "linux":
        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request
            os.kill(os.getpid(), signal.SIGTERM)


def _on_signal(signum: int, frame: object) -> None:
    global _first
    if _first is None:
        _first = Interrupted(signum)
        # The watchdog first: a second signal (Ctrl-C reaches us, then `mlflow run`'s
        # SIGTERM) runs this handler again, nested, while this one is still at work.
        threading.Thread(target=_watch_the_unwinding, args=(signum,), daemon=True).start()
        _handling_first.set()
        try:
            # At once: our group's signal misses a child that leads its own group (the
            # isolated check) or ignores it (Spark's JVM ignores SIGINT), and a thread
            # waiting on one would hold the unwinding. SIGTERM, so that a step `main`
            # launched can end its runs too.
            _signal_children(signal.SIGTERM)
        finally:
            _handling_first.clear()
        raise _first
    if not _caught.is_set() and not _handling_first.is_set():
        # The first one was swallowed (raised where a library catches everything, or in a
        # destructor): again, as the first. Once our code caught it, signals are ignored:
        # they must not cut the ending of runs short.
        raise Interrupted(_first.signum)


def _signal_children(signum: signal.Signals) -> None:
    """Send `signum` to each child process of ours (to its group, if it leads one), the
    guardian excepted."""
    spared = {_guardian.pid} if _guardian else set()
    for pid in set(processes.children(os.getpid())) - spared:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)


@contextlib.contextmanager
def run_ends_killed(run_id: str) -> Iterator[None]:
    """While inside, the run `run_id` ends KILLED, tagged with the signal, if the process
    is interrupted (or takes a KeyboardInterrupt)."""
    with _open_runs_lock:
        _open_runs.append(run_id)
    try:
        yield
    except KeyboardInterrupt as stop:
        _caught.set()
        end_runs_killed([run_id], _signal_name(stop))
        raise
    finally:
        with _open_runs_lock:
            if run_id in _open_runs:
                _open_runs.remove(run_id)


def end_runs_killed(run_ids: list[str], signal_name: str) -> None:
    """End each run still RUNNING as KILLED with an `error` tag; the active run (in the
    fluent API's sense) is ended as such, so that leaving its `with` does not end it again."""
    import mlflow

    from tabular_mlops.core.names import Status, Tag

    client = mlflow.MlflowClient()
    killed = Status.KILLED
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.status != Status.RUNNING:
                continue
            client.set_tag(run_id, Tag.ERROR, ERROR_PREFIX + signal_name)
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(killed)
            else:
                client.set_terminated(run_id, killed)
        except Exception as error:  # the store may be what hangs; the others still go
            logger.warning("could not end run %s as KILLED: %s", run_id, error)


def run_as_process(main: Callable[[], int]) -> NoReturn:
    """Run an entry point's `main` as the process: exit with its code; interrupted, end the
    runs left open (with the one `mlflow run` opened, MLFLOW_RUN_ID) and exit 128 + signal
    without waiting for worker threads (a cross-validation fold, say)."""
    global _guardian
    # What was imported stays for the whole process: out of the collector's sight, and the
    # collector back on (steps/__init__.py turned it off while a step imports).
    gc.freeze()
    gc.enable()
    _guardian = guardian.start(_launched_by)  # now: one thread, no store opened yet
    try:
        code = main()
    except KeyboardInterrupt as stop:
        _caught.set()
        name = _signal_name(stop)
        end_runs_killed(_runs_to_end(), name)
        logger.error("interrupted by %s: the runs this process opened ended KILLED", name)
        _signal_children(signal.SIGKILL)  # what is left, or was started while unwinding
        _exit_now(stop.exit_code if isinstance(stop, Interrupted) else 128 + signal.SIGINT)
    sys.exit(code)


def _runs_to_end() -> list[str]:
    with _open_runs_lock:
        runs = list(reversed(_open_runs))
    launched_by = _launched_by or os.environ.get("MLFLOW_RUN_ID")
    return runs + ([launched_by] if launched_by and launched_by not in runs else [])


def _watch_the_unwinding(signum: int) -> None:
    """Raise the interrupt again in the main thread until our code catches it; after
    GRACE_SECONDS, end the runs and the process from here."""
    deadline = time.monotonic() + GRACE_SECONDS
    while not _caught.wait(RAISE_AGAIN_SECONDS) and time.monotonic() < deadline:
        _thread.interrupt_main(signal.Signals(signum))  # as if it came again: see _on_signal
    threading.Event().wait(max(0.0, deadline - time.monotonic()))
    name = signal.Signals(signum).name
    logger.error(
        "still running %.0f s after %s: ending the process (main thread at %s)",
        GRACE_SECONDS,
        name,
        _where_main_thread_is(),
    )
    # In a thread of its own: a store that hangs must not hold the exit.
    marking = threading.Thread(target=end_runs_killed, args=(_runs_to_end(), name), daemon=True)
    marking.start()
    marking.join(MARKING_SECONDS)
    _signal_children(signal.SIGKILL)
    _exit_now(128 + signum)


def _where_main_thread_is() -> str:
    main = threading.main_thread().ident
    frame = sys._current_frames().get(main) if main is not None else None
    stack = traceback.extract_stack(frame)[-3:] if frame else []
    return " < ".join(
        f"{Path(entry.filename).name}:{entry.lineno} {entry.name}" for entry in reversed(stack)
    )


def _exit_now(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if _guardian is not None and _launched_by is not None:
        try:
            import mlflow  # imported already by the step

            _guardian.restore_after_launcher(_launched_by, mlflow.get_tracking_uri())
        except OSError as error:  # the guardian is gone: exit all the same
            logger.warning("could not ask for the run to be marked KILLED again: %s", error)
    logging.shutdown()
    os._exit(code)


def _signal_name(stop: KeyboardInterrupt) -> str:
    return stop.signal_name if isinstance(stop, Interrupted) else signal.SIGINT.name
