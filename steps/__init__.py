"""Entry points of the MLproject, one thin module each."""

import sys

# Started as a process (`python -m steps.<name>`, as MLproject does), not imported by a
# test: stop cleanly on SIGTERM, SIGINT and SIGHUP from the first line on.
if sys.argv[:1] == ["-m"]:
    from tabular_mlops.runtime import interrupts

    interrupts.install()
