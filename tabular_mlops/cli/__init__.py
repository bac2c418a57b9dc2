"""The command lines: each entry point's parameters parsed as jobs.entry_points declares
them, logging with secrets masked, one error line and an exit code (commands); and `python -m
tabular_mlops.cli.init`, a config for a new table (init)."""
