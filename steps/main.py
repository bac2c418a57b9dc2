"""Entry point `main`: the whole lifecycle, train_basic -> track -> register -> custom_model,
each a child run, steps whose inputs did not change reused (tabular_mlops.jobs.chain)."""

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.chain import run_chain
from tabular_mlops.jobs.entry_points import ENTRY_POINTS, MAIN, MAIN_ROUTES
from tabular_mlops.jobs.step_cache import StepMains
from tabular_mlops.runtime import interrupts

PROJECT_DIR = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`main`'s parameters (each checked as the step it goes to declares it, before any
    work), and each step's share as `steps[<step>]`."""
    args = parser_for(MAIN).parse_args(argv)
    args.steps = {
        step: {name: getattr(args, name) for name in names} for step, names in MAIN_ROUTES.items()
    }
    return args


def step_mains() -> StepMains:
    """Each step module's `main(argv)`, imported when the step runs in this process: `main`
    finds cached steps without loading the training libraries."""
    return {ENTRY_POINTS[step].module: _main_of(ENTRY_POINTS[step].module) for step in MAIN_ROUTES}


def _main_of(module: str) -> Callable[[list[str]], int]:
    def main(argv: list[str]) -> int:
        step: Callable[[list[str]], int] = importlib.import_module(module).main
        return step(argv)

    return main


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    return run_with_config(
        args,
        MAIN,
        lambda config: run_chain(config, args.steps, args.force, PROJECT_DIR, step_mains()),
    )


if __name__ == "__main__":
    interrupts.run_as_process(main)
