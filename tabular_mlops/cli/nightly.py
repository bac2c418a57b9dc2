"""A night of the loop: score the batch, judge it, and on `retrain` run the whole chain on
the night's labelled rows, where the gate (`register`) decides as usual.

    python -m tabular_mlops.cli.nightly --input night.csv [--labels outcomes.csv]
        [--output scores/night] [--config config/churn.yaml] [--experiment-name churn]
        [--env-manager local] [-P name=value ...]      (scripts/nightly.sh)

Each step is the entry point run as a user runs it (`mlflow run . -e ...`), so each leaves
its own run. Retraining needs outcomes: the rows of `--input` joined on the id columns with
`--labels` become the chain's table (`-P data_path=`); `-P` values go to the chain (main).
Exit codes: 0 the night is done (`ok`, `warn`, or `retrain` and the chain ran), 1 a step
failed, 3 `retrain` without labels to train on.
"""

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import mlflow

from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, load_config
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import Tag
from tabular_mlops.core.tables import read_table
from tabular_mlops.core.verdict import Verdict
from tabular_mlops.mlflow.runs import configure_tracking

logger = logging.getLogger(__name__)

NEEDS_LABELS = 3
_RUN_ID = re.compile(r"=== Run \(ID '([0-9a-f]+)'\) succeeded ===")


def mlflow_run(entry_point: str, parameters: dict[str, str], args: argparse.Namespace) -> str:
    """`mlflow run . -e ENTRY_POINT -P ...` in the project directory; the run's id."""
    command = [sys.executable, "-m", "mlflow", "run", ".", "-e", entry_point]
    command += ["--env-manager", args.env_manager, "--experiment-name", args.experiment_name]
    for name, value in {"config": str(args.config), **parameters}.items():
        command += ["-P", f"{name}={value}"]
    logger.info("%s", " ".join(command[2:]))
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    found = _RUN_ID.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise UserInputError(
            f"`mlflow run . -e {entry_point}` failed (exit code {done.returncode})"
        )
    return found[-1]


def training_table(args: argparse.Namespace, folder: Path) -> Path:
    """The night's rows with their outcomes, as a table the chain trains on."""
    config = load_config(args.config)
    ids, target = config.data.id_columns, config.data.target
    rows, outcomes = read_table(args.input), read_table(args.labels)
    if missing := [c for c in [*ids, target] if c not in outcomes.columns]:
        raise UserInputError(f"labels {args.labels} lack column(s): {', '.join(missing)}")
    joined = rows.merge(outcomes[[*ids, target]], on=ids, how="inner")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train-{Path(args.input).stem}.csv"
    joined.to_csv(path, index=False)
    logger.info("%d labelled rows to train on: %s", len(joined), path)
    return path


def night(args: argparse.Namespace) -> int:
    output = args.output or Path("scores") / Path(args.input).stem
    mlflow_run("batch_score", {"input": str(args.input), "output": str(output)}, args)
    judged = {"input": str(args.input)} | ({"labels": str(args.labels)} if args.labels else {})
    monitor_run = mlflow_run("monitor", judged, args)
    configure_tracking(load_config(args.config).tracking.profile)
    tags = mlflow.MlflowClient().get_run(monitor_run).data.tags
    verdict = Verdict(tags[Tag.VERDICT])
    logger.info("verdict: %s (%s)", verdict.value, tags.get(Tag.VERDICT_REASONS, ""))
    if verdict != Verdict.RETRAIN:
        return 0
    if not args.labels:
        logger.warning("retrain: the chain trains on outcomes; run again with --labels")
        return NEEDS_LABELS
    table = training_table(args, output.parent / "training")
    if bad := [item for item in args.parameter if "=" not in item]:
        raise UserInputError(f"-P takes NAME=VALUE, not {bad[0]!r}")
    extra = dict(item.split("=", 1) for item in args.parameter)
    main_run = mlflow_run("main", {"data_path": str(table), **extra}, args)
    logger.info("retrained: main run %s; the gate's verdict is on its register step", main_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tabular_mlops.cli.nightly", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--input", type=Path, required=True, help="the night's model inputs")
    parser.add_argument("--labels", type=Path, help="id columns and outcomes of those rows")
    parser.add_argument("--output", type=Path, help="batch_score's folder (default scores/<input>)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--experiment-name", default="churn")
    parser.add_argument("--env-manager", default="local", help="for every mlflow run")
    parser.add_argument(
        "-P", dest="parameter", action="append", default=[], help="NAME=VALUE for the chain"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return night(args)
    except UserInputError as error:
        logger.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
