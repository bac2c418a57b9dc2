"""Entry point `monitor`: judge a batch of inputs (and its outcomes, once known) against
the model's training profile (tabular_mlops.jobs.monitor)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import MONITOR
from tabular_mlops.jobs.monitor import monitor
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(MONITOR).parse_args(argv)
    return run_with_config(args, MONITOR, monitor)


if __name__ == "__main__":
    interrupts.run_as_process(main)
