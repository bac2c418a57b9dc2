"""Fault points for the fault-injection tests: with TABULAR_MLOPS_FAULT set to a point's
name, the process kills itself with SIGKILL there, as an OOM kill or a power cut would,
so that no handler runs. Unset (always, outside those tests), nothing happens."""

import os
import signal
from enum import StrEnum

FAULT_ENV = "TABULAR_MLOPS_FAULT"


class FaultPoint(StrEnum):
    BEFORE_MODEL_LOGGED = "before_model_logged"  # train_basic, track: trained, not logged
    BETWEEN_ALIAS_MOVES = "between_alias_moves"  # register: one alias moved, not the other
    DURING_ISOLATED_CHECK = "during_isolated_check"  # custom_model: the check is running


def crash_if_injected(point: FaultPoint) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
