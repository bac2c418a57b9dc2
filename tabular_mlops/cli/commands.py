"""What every entry point's command shares: its parameters parsed from their declaration
(tabular_mlops.jobs.entry_points), logging, one error line and an exit code."""

import argparse
import io
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import mlflow
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED, ErrorCode

from tabular_mlops.core.config import ProjectConfig, load_config
from tabular_mlops.core.errors import ConfigError, UserInputError
from tabular_mlops.core.names import MAX_TAG_LENGTH, Tag
from tabular_mlops.core.redaction import holds_credentials, redact
from tabular_mlops.jobs.entry_points import EntryPoint, Kind, Parameter
from tabular_mlops.mlflow import deserialization
from tabular_mlops.mlflow.runs import configure_tracking

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad parameter in one line (no usage dump) and exits 2.

    Abbreviations are refused: MLflow appends `-P n_tri=5` as `--n_tri 5`, which must be
    an error, not a silent `--n_trials`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        """`--n-estimators` is also `--n_estimators`: how MLflow passes a parameter that
        MLproject does not declare (`-P n_estimators=5`)."""
        aliases = ["--" + name[2:].replace("-", "_") for name in names if name.startswith("--")]
        return super().add_argument(*names, *(a for a in aliases if a not in names), **kwargs)

    def error(self, message: str) -> NoReturn:
        # "argument --n-estimators/--n_estimators: ..." -> "parameter n_estimators: ..."
        message = re.sub(
            r"argument --([\w-]+)(?:/--[\w-]+)?:",
            lambda match: f"parameter {match.group(1).replace('-', '_')}:",
            message,
        )
        line = f"{self.prog}: error: {message}"
        record_failure(line)
        self.exit(2, line + "\n")


def whole_number(text: str) -> int:
    """An int; `5.0` is accepted because MLflow's parameter type for numbers is float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "")


def boolean(text: str) -> bool:
    """true/false (also yes/no, 1/0; any case); "" is false, an unset MLproject flag."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def unset_or(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """MLproject parameters default to "", meaning: keep the config's value."""

    def parse_or_none(text: str) -> T | None:
        return None if text == "" else parse(text)

    return parse_or_none


# Loggers MLflow gives handlers of their own (mlflow.utils.logging_utils), which do not
# pass through the root logger's.
_MLFLOW_LOGGERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey")


def configure_logging() -> None:
    """Log lines on stderr, and everything a step prints, with secrets masked
    (core.redaction): ours, MLflow's, SQLAlchemy's, Optuna's, and MLflow's "View run at"
    line on stdout."""
    if not sys.stderr.isatty():  # MLflow's download bars would flood logs, one per update
        os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for name in ("", *_MLFLOW_LOGGERS):
        for each in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in each.filters):
                each.addFilter(RedactingFilter())
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)


class RedactingFilter(logging.Filter):
    """On a handler: the record's message with secrets masked, whoever logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (masked := redact(message)) != message:
            record.msg, record.args = masked, None
        return True


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets in what is written to it (MLflow writes its "View
    run at" link, made from the tracking URI, straight to stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


_READERS: dict[Kind, Callable[[str], Any]] = {
    Kind.TEXT: str,
    Kind.NUMBER: number,
    Kind.WHOLE: whole_number,
    Kind.BOOLEAN: boolean,
}


def parser_for(entry: EntryPoint) -> ArgumentParser:
    """A parser of the entry point's declared parameters, each read as its kind says; an
    unset one ("" or absent) is None, except those MLproject declares with a default."""
    parser = ArgumentParser(prog=entry.name, description=entry.summary)
    for parameter in entry.parameters:
        _add(parser, parameter)
    return parser


def _add(parser: ArgumentParser, parameter: Parameter) -> None:
    read = _READERS[parameter.kind]
    if parameter.name == "config":
        parser.add_argument(parameter.flag, type=Path, default=Path(parameter.default or ""))
    elif parameter.choices:
        parser.add_argument(parameter.flag, choices=parameter.choices, default=parameter.default)
    elif parameter.default is not None:
        parser.add_argument(parameter.flag, type=read, default=read(parameter.default))
    else:
        parser.add_argument(parameter.flag, type=unset_or(read))


def run_with_config(
    args: argparse.Namespace, entry: EntryPoint, step: Callable[[ProjectConfig], object]
) -> int:
    """Load `--config` with the parameters that override settings on top and run `step` on
    it; a UserInputError becomes one error line and exit code 1."""
    values = {key: getattr(args, parameter) for parameter, key in entry.overrides().items()}
    try:
        refuse_credentials(vars(args))
        config = load_config(args.config, values)
    except UserInputError as error:
        record_failure(str(error))  # no run of ours yet: tag the one `mlflow run` opened
        logger.error("%s", error)
        return 1
    try:
        with deserialization.forbidden(config.trust.allow_pickle):
            step(config)
    except UserInputError as error:
        logger.error("%s", error)  # the run already ended FAILED with the `error` tag
        return 1
    except MlflowException as error:
        if error.error_code not in _REFUSALS:
            raise
        logger.error("%s", refused_by_server(error))
        return 1
    return 0


# How a tracking server with auth says no: not logged in, or no permission on a resource
# (MLflow's basic auth also answers 403 for a registered model that does not exist).
_REFUSALS = {ErrorCode.Name(UNAUTHENTICATED), ErrorCode.Name(PERMISSION_DENIED)}


def refused_by_server(error: MlflowException) -> str:
    """One line for a request the tracking server refused this user."""
    request = re.search(r"endpoint (\S+)", error.message)
    what = f" ({request.group(1)})" if request else ""
    return (
        f"the tracking server refused a request{what} to user "
        f"{os.environ.get('MLFLOW_TRACKING_USERNAME', '(none)')}: {error.error_code}; "
        "an admin grants roles on the config's experiment and registered models "
        "(scripts/stack.sh user NAME trainer)"
    )


def refuse_credentials(parameters: dict[str, Any]) -> None:
    """A parameter is logged as it is given (by MLflow, as a param of the run it opens):
    one holding a URL's password or token is refused, pointing to where it belongs."""
    for name, value in parameters.items():
        if isinstance(value, str) and holds_credentials(value):
            raise ConfigError(
                f"parameter {name} holds a credential, which MLflow has logged with the run's "
                "params: give it through the environment instead (PostgreSQL: PGPASSWORD or "
                "~/.pgpass; a tracking server: MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD), then delete that run"
            )


def record_failure(reason: str) -> None:
    """Under `mlflow run`, put why the entry point failed on its run (for `main`, which
    reports a failed step by it), before any run of ours could. Best effort."""
    if not MLFLOW_RUN_ID.defined:
        return
    try:
        configure_tracking()
        reason = redact(reason)[:MAX_TAG_LENGTH]
        mlflow.MlflowClient().set_tag(MLFLOW_RUN_ID.get(), Tag.ERROR, reason)
    except Exception as error:
        logger.warning("could not record the failure on run %s: %s", MLFLOW_RUN_ID.get(), error)
