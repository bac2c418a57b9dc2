"""MLflow's own switch for loading pickles and skops files, MLFLOW_ALLOW_PICKLE_DESERIALIZATION
(default true): off around a step (`forbidden`), so that a load that skipped the project's
check (mlflow.model_trust) is refused by MLflow itself; on only around loading a model that
check passed, or one this process has just saved (`allowed`). Child processes started
meanwhile inherit the setting."""

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

from tabular_mlops.runtime.processes import environment_variable

SWITCH = MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name


@contextmanager
def forbidden(allow_pickle: bool) -> Iterator[None]:
    """Around a step: loads refused, unless the config trusts whoever logged the models it
    loads (`trust.allow_pickle`)."""
    if allow_pickle:
        yield
        return
    with environment_variable(SWITCH, "false"):
        yield


@contextmanager
def allowed() -> Iterator[None]:
    with environment_variable(SWITCH, "true"):
        yield
