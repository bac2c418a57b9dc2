"""Entry point `custom_model`: wrap the registered pipeline in the custom pyfunc model, check
it, register it and point its alias at it (tabular_mlops.jobs.wrap)."""

from tabular_mlops.cli.commands import configure_logging, parser_for, run_with_config
from tabular_mlops.jobs.entry_points import CUSTOM_MODEL
from tabular_mlops.jobs.wrap import custom_model
from tabular_mlops.runtime import interrupts


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser_for(CUSTOM_MODEL).parse_args(argv)
    return run_with_config(args, CUSTOM_MODEL, lambda config: custom_model(config, args.model_uri))


if __name__ == "__main__":
    interrupts.run_as_process(main)
