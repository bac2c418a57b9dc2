"""Entry point `register`: review a candidate for champion, roll back, list the versions, or
find and end stale runs (tabular_mlops.jobs.register)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import REGISTER
from tabular_mlops.jobs.register import register
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(REGISTER).parse_args(argv)
    return run_with_config(
        args, REGISTER, lambda config: register(config, args.action, args.run_id, args.dry_run)
    )


if __name__ == "__main__":
    interrupts.run_as_process(main)
