"""Entry points of the MLproject, one thin module each."""

import sys

# Started as a process (`python -m steps.<name>`, as MLproject does), not imported by a
# test: stop cleanly on SIGTERM, SIGINT and SIGHUP from the first line on.
if sys.argv[:1] == ["-m"]:
    import gc

    # A step imports MLflow, pandas, scikit-learn and LightGBM first (about 5 s of CPU), and
    # the cyclic collector scanning that growing heap again and again took 2 s of it
    # (measured on train_basic: 14.0 s of CPU, 11.9 s without). Off until
    # interrupts.run_as_process starts the job, which freezes what was imported.
    gc.disable()
    from tabular_mlops.runtime import interrupts

    interrupts.install()
