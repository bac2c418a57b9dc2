"""How each entry point ends when `mlflow run` is stopped by a signal.

    python -m bench.interrupts [--signals SIGTERM,SIGINT,SIGHUP] [--cases track,main,...]
                               [--repeat N] [--under-load]

In a clone of HEAD with a temporary store: a chain runs once (so that `register`,
`custom_model` and `batch_score` have something to work on), then for each entry point
and signal, `mlflow run . -e <step> --env-manager local` is started in a process group of
its own, signalled once the step is at work (a trial running, a model training, the
isolated check running, ...), and watched: the seconds from the signal until no process
it started is left, the final status of every run in its experiment, their `error` tags.

SIGINT and SIGHUP go to the process group, as Ctrl-C and a closed terminal send them;
SIGTERM goes to the `mlflow run` process alone, as `kill PID` does (its step then gets
SIGTERM from the kernel, see tabular_mlops.interrupts). The tests use `interrupt()`.
"""

import argparse
import contextlib
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
import pandas as pd

from tabular_mlops.tags import Tag
from tabular_mlops.tuning import TRIAL_TAG

logger = logging.getLogger("bench.interrupts")
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


# A process of the custom model's isolated check (tabular_mlops.wrapper) is running.
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
        output = log.read_text()
        log.unlink()
    result = Interruption(entry_point, signum.name, to_group, seconds, process.returncode)
    result.left_behind = left
    result.output = output
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
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
def _cases(candidate_run: str, scoring_input: Path) -> dict[str, tuple[str, list[str], Readiness]]:
    slow_training = ["n_estimators=200000", "learning_rate=0.0001"]
    scoring = [f"input={scoring_input}", "output=scored.parquet", "overwrite=true"]
    scoring_started = run_is_running("batch_score", Tag.OUTPUT_PATH)
    return {
        "train_basic": ("train_basic", slow_training, run_is_running("train_basic", Tag.PROCESS)),
        "track": ("track", ["n_trials=500"], run_is_running("track", TRIAL_TAG)),
        "register": ("register", [f"run_id={candidate_run}"], run_is_running("register", Tag.ROLE)),
        "custom_model": ("custom_model", [], ISOLATED_CHECK),
        "batch_score": ("batch_score", scoring, scoring_started),
        "batch_score (spark)": ("batch_score", [*scoring, "engine=spark"], scoring_started),
        "main": ("main", ["force=true", "n_trials=500"], run_is_running("track", TRIAL_TAG)),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.lifecycle import competing_load, fresh_clone
    from tabular_mlops.cli import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", default="SIGTERM,SIGINT,SIGHUP")
    parser.add_argument("--repeat", type=int, default=1, help="each case and signal")
    parser.add_argument(
        "--under-load", action="store_true", help="beside another job using every core"
    )
    parser.add_argument(
        "--cases",
        default="train_basic,track,register,custom_model,batch_score,batch_score (spark),main",
    )
    args = parser.parse_args(argv)
    configure_logging()
    with contextlib.ExitStack() as stack:
        clone = stack.enter_context(fresh_clone())
        clone.mlflow_run("-P", "n_trials=5")  # a chain: a champion, a custom model
        clone.mlflow_run("-e", "track", "-P", "n_trials=5")  # a candidate for register
        candidate = clone.newest_run("track").info.run_id
        table = pd.read_csv(clone.directory / "data" / "wa_churn.csv")
        scoring_input = clone.directory / "to-score.parquet"
        pd.concat([table] * 200).to_parquet(scoring_input)
        cases = _cases(candidate, scoring_input)
        rows = []
        load = competing_load() if args.under_load else contextlib.nullcontext()
        stack.enter_context(load)
        for label in args.cases.split(","):
            step, parameters, ready = cases[label]
            for name in args.signals.split(",") * args.repeat:
                signum = signal.Signals[name]
                result = interrupt(
                    clone.directory,
                    clone.environment,
                    step,
                    parameters,
                    signum,
                    to_group=signum != signal.SIGTERM,
                    ready=ready,
                )
                row = result.row() | {"entry point": label}
                logger.info("%s", row)
                slow = result.seconds_to_end > END_WITHIN_SECONDS
                if slow or result.left_behind or set(result.statuses) - {"KILLED", "FINISHED"}:
                    logger.warning(
                        "%s, %s: the run's output ends:\n%s", label, name, result.output[-4000:]
                    )
                rows.append(row)
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
