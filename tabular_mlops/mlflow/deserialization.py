"""MLflow's own switch for loading pickles and skops files, MLFLOW_ALLOW_PICKLE_DESERIALIZATION
(default true): off around a step (`forbidden`), so that a load that skipped the project's
check (mlflow.model_trust) is refused by MLflow itself; on only around loading a model that
check passed, or one this process has just saved (`allowed`). Child processes started
meanwhile inherit the setting."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

SWITCH = MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name


@contextmanager
def forbidden(allow_pickle: bool) -> Iterator[None]:
    """Around a step: loads refused, unless the config trusts whoever logged the models it
    loads (`trust.allow_pickle`)."""
    if allow_pickle:
        yield
        return
    with _set(SWITCH, "false"):
        yield


@contextmanager
def allowed() -> Iterator[None]:
    with _set(SWITCH, "true"):
        yield


@contextmanager
def _set(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
