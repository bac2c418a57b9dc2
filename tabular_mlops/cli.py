"""What every entry point shares: typed parameter parsing, logging, exit codes."""

import argparse
import logging
from collections.abc import Callable
from typing import NoReturn, TypeVar

from tabular_mlops.errors import UserInputError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad parameter in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def unset_or(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """MLproject parameters default to "", meaning: keep the config's value."""

    def parse_or_none(text: str) -> T | None:
        return None if text == "" else parse(text)

    return parse_or_none


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_entry_point(step: Callable[[], None]) -> int:
    """Run `step`; a UserInputError becomes one error line and exit code 1."""
    try:
        step()
    except UserInputError as error:
        logger.error("%s", error)
        return 1
    return 0
