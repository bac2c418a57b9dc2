"""Entry point `train_basic`: train, evaluate, log and register one LightGBM pipeline
(tabular_mlops.jobs.train)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import TRAIN_BASIC
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(TRAIN_BASIC).parse_args(argv)
    return run_with_config(args, TRAIN_BASIC, train_basic)


if __name__ == "__main__":
    interrupts.run_as_process(main)
