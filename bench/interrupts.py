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
SIGTERM from the kernel, see tabular_mlops.runtime.interrupts). The tests use `interrupt()`.
"""

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

import pandas as pd

from bench.pages import page
from tabular_mlops.core.names import Tag
from test_support.stopping import (
    END_WITHIN_SECONDS,
    ISOLATED_CHECK,
    Readiness,
    interrupt,
    run_is_running,
)

logger = logging.getLogger("bench.interrupts")


def _cases(candidate_run: str, scoring_input: Path) -> dict[str, tuple[str, list[str], Readiness]]:
    slow_training = ["n_estimators=200000", "learning_rate=0.0001"]
    scoring = [f"input={scoring_input}", "output=scored.parquet", "overwrite=true"]
    scoring_started = run_is_running("batch_score", Tag.OUTPUT_PATH)
    return {
        "train_basic": ("train_basic", slow_training, run_is_running("train_basic", Tag.PROCESS)),
        "track": ("track", ["n_trials=500"], run_is_running("track", Tag.TRIAL)),
        "register": ("register", [f"run_id={candidate_run}"], run_is_running("register", Tag.ROLE)),
        "custom_model": ("custom_model", [], ISOLATED_CHECK),
        "batch_score": ("batch_score", scoring, scoring_started),
        "batch_score (spark)": ("batch_score", [*scoring, "engine=spark"], scoring_started),
        "main": ("main", ["force=true", "n_trials=500"], run_is_running("track", Tag.TRIAL)),
    }


@page("Stopping every entry point with a signal")
def main(argv: list[str] | None = None) -> int:
    from bench.lifecycle import competing_load, fresh_clone
    from tabular_mlops.cli.commands import configure_logging

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
