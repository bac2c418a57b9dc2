"""Entry point `batch_score`: score a CSV/Parquet table with the custom model into a
Parquet folder, with pandas or Spark (tabular_mlops.jobs.score)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import BATCH_SCORE
from tabular_mlops.jobs.score import batch_score
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(BATCH_SCORE).parse_args(argv)
    return run_with_config(args, BATCH_SCORE, batch_score)


if __name__ == "__main__":
    interrupts.run_as_process(main)
