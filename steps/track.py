"""Entry point `track`: tune the pipeline with nested trial runs, refit the best, report
(tabular_mlops.jobs.tune)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import TRACK
from tabular_mlops.jobs.tune import track
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(TRACK).parse_args(argv)
    return run_with_config(args, TRACK, lambda config: track(config, args.baseline_run_id))


if __name__ == "__main__":
    interrupts.run_as_process(main)
