"""Serve a registered model the way the jobs load one: checked first.

    python -m tabular_mlops.cli.serve models:/churn-service@champion --env-manager local -p 5001

`mlflow models serve -m models:/...` loads whatever the registry holds, and a model anyone
with EDIT logged may run any code as it loads. This command downloads the model, checks the
copy as every job does (tabular_mlops.mlflow.model_trust: only the code this project ships,
only the skops types it lists), then runs `mlflow models serve -m <that copy>` with every
other option passed through; the copy is removed when the server stops. `--config` names
the config whose `trust` and `model_code` settings apply (default: the shipped one).
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, load_config
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.mlflow import deserialization
from tabular_mlops.mlflow.model_trust import LoadPolicy
from tabular_mlops.mlflow.runs import configure_tracking

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tabular_mlops.cli.serve",
        description=__doc__.split("\n\n")[0],
        epilog="Any other option is passed to `mlflow models serve`.",
        add_help=False,  # -h is `mlflow models serve`'s --host
    )
    parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument("model_uri", help="e.g. models:/churn-service@champion")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    return parser


def serve_command(model_dir: Path, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), *options]


def start(command: list[str], env: dict[str, str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(command, env=env)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args, options = build_parser().parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="served-model-") as scratch:
        try:
            config = load_config(args.config)
            configure_tracking(config.tracking.profile)
            policy = LoadPolicy.of(config)
            checked = policy.checked(args.model_uri, Path(scratch))
        except UserInputError as error:
            logger.error("%s", error)
            return 2
        logger.info("serving %s, checked, from %s", args.model_uri, checked.local)
        # `--env-manager local` starts uvicorn from PATH: this interpreter's first.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        # The server loads this checked copy, with MLflow's pickle switch off: the project's
        # models load their pipeline with the shipped list of skops types, and need it not.
        with deserialization.forbidden(policy.allow_pickle):
            server = start(serve_command(checked.local, options), os.environ | {"PATH": path})

            def stop(signum: int, _frame: FrameType | None) -> None:
                server.send_signal(signum)

            signal.signal(signal.SIGTERM, stop)
            try:
                return server.wait()
            except KeyboardInterrupt:  # the server, in the same process group, got it too
                return server.wait()


if __name__ == "__main__":
    sys.exit(main())
