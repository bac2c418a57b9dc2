"""A step process's robustness: SIGTERM/SIGINT/SIGHUP end its runs KILLED (interrupts), its
guardian puts KILLED back after `mlflow run` overwrites it (guardian), runs a killed process
left RUNNING are found and ended (stale_runs), facts about processes (processes), and the
fault points the fault-injection tests set from the environment (faults)."""
