"""The team stack's figures, from a fresh clone, as a user types it.

    python -m bench.stack [--concurrent 8] [--repeat 1]

On a `git clone` of HEAD (commit first) in a temporary directory:
- `python -m team_stack.stack up` on a new folder and free ports: seconds until every
  service answers (PostgreSQL, SeaweedFS with its bucket, `mlflow server` with basic auth);
- a trainer made by `team_stack.access`, as the README does it;
- `mlflow run .` (main, `--env-manager local`, the shipped config) on a new sqlite store
  and on the stack as the trainer, back to back, `--repeat` times (the first sqlite run
  also builds the custom model's isolated environment: it runs once more, unmeasured,
  before the pairs);
- `--concurrent` `mlflow run . -e train_basic` at once on the stack: wall time, failures,
  distinct versions;
- the leak scan of tests/test_e2e_stack.py over everything the stack holds (params, tags,
  descriptions, every object in the bucket, the stack's logs, the runs' output).

It prints one table. The stack is stopped and removed at the end. The helpers it shares
with the end-to-end tests (scanning the stack for secrets) are in test_support.stack.
"""

import argparse
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd

from bench.lifecycle import EXPERIMENT, Clone, fresh_clone
from bench.pages import page
from tabular_mlops.cli.commands import configure_logging
from team_stack.settings import ADMIN, ADMIN_PASSWORD_VARIABLE, OPTUNA_DATABASE, StackSettings
from team_stack.stack import LocalStack
from test_support.stack import scan_stack, stack_environment

logger = logging.getLogger("bench.stack")
TRAINER = "trainer"


class StackBench:
    """A fresh clone, a stack beside it, and the output of every run (for the leak scan)."""

    def __init__(self, clone: Clone, scratch: Path) -> None:
        self.clone = clone
        scratch.chmod(0o755)  # as root, PostgreSQL runs as `postgres`: it must reach its folder
        root = scratch / "stack"
        root.mkdir(mode=0o755)
        self.environment = stack_environment(root)
        self.stack = LocalStack(StackSettings.from_environment(self.environment), self.environment)
        self.sqlite_uri = f"sqlite:///{scratch / 'bench.db'}"
        self.outputs: list[str] = []
        self.trainer_password = secrets.token_urlsafe(16)

    def credentials(self, user: str) -> dict[str, str]:
        password = (
            self.environment[ADMIN_PASSWORD_VARIABLE] if user == ADMIN else self.trainer_password
        )
        return {
            "MLFLOW_TRACKING_URI": self.stack.settings.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
        }

    def command(self, module: str, *arguments: str, user: str | None = None, **env: str) -> float:
        """`python -m module arguments` in the clone (as `user` on the stack): its seconds."""
        environment = self.clone.environment | self.environment | env
        environment |= self.credentials(user) if user else {"MLFLOW_TRACKING_URI": self.sqlite_uri}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", module, *arguments],
            cwd=self.clone.directory,
            env=environment,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        self.outputs.append(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
        return seconds

    def mlflow_run(self, *arguments: str, user: str | None = None) -> float:
        run = ["run", ".", "--env-manager", "local", "--experiment-name", EXPERIMENT]
        return self.command("mlflow", *run, *arguments, user=user)


def row(what: str, value: float, unit: str = "s") -> dict[str, object]:
    return {"what": what, "value": round(value, 1), "unit": unit}


@page("The team stack: concurrent clients")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    configure_logging()
    rows: list[dict[str, object]] = []
    with fresh_clone() as clone, tempfile.TemporaryDirectory(prefix="bench-stack-") as scratch:
        bench = StackBench(clone, Path(scratch))
        try:
            rows.append(
                row(
                    "stack up on a new folder, until healthy",
                    bench.command("team_stack.stack", "up"),
                )
            )
            trainer_password = {"USER_PASSWORD": bench.trainer_password}
            bench.command("team_stack.access", TRAINER, "trainer", user=ADMIN, **trainer_password)

            logger.info("chain: a first `mlflow run .` on sqlite builds the isolated environment")
            bench.mlflow_run()
            for attempt in range(1, args.repeat + 1):
                # force=true: every step runs (a second chain would otherwise reuse them all).
                on_sqlite = bench.mlflow_run("-P", "force=true")
                on_stack = bench.mlflow_run("-P", "force=true", user=TRAINER)
                rows.append(row(f"`mlflow run .` on sqlite ({attempt})", on_sqlite))
                rows.append(
                    row(f"`mlflow run .` on the stack as the trainer ({attempt})", on_stack)
                )
                rows.append(row("  stack / sqlite", on_stack / on_sqlite, "x"))

            logger.info("%d train_basic at once on the stack", args.concurrent)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                attempts = [
                    pool.submit(bench.mlflow_run, "-e", "train_basic", user=TRAINER)
                    for _ in range(args.concurrent)
                ]
                failures = sum(1 for attempt in attempts if attempt.exception() is not None)
            rows.append(
                row(
                    f"{args.concurrent} train_basic at once on the stack",
                    time.perf_counter() - started,
                )
            )
            rows.append(row("  failed", failures, ""))

            for name, value in bench.credentials(ADMIN).items():
                os.environ[name] = value
            mlflow.set_tracking_uri(bench.stack.settings.tracking_uri)
            secrets_by_name = {
                "admin password": bench.environment[ADMIN_PASSWORD_VARIABLE],
                "trainer password": bench.trainer_password,
                "optuna database password": bench.stack.secrets[OPTUNA_DATABASE],
                "postgres password": bench.stack.secrets["postgres"],
                "s3 secret key": bench.stack.secrets["s3_secret_key"],
            }
            output = "\n".join(bench.outputs)
            texts, objects, found = scan_stack(
                bench.stack, mlflow.MlflowClient(), secrets_by_name, output
            )
            rows.append(
                row(
                    f"leak scan over {len(texts)} texts and {len(objects)} bucket objects: hits",
                    len(found),
                    "",
                )
            )
            for name, where in found:
                logger.error("leak: %s in %s", name, where)
        finally:
            bench.stack.down()
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
