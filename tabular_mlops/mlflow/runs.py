"""The runs of the project's entry points: where they go (tracking profile), how they start
and end (FAILED with an `error` tag, KILLED when interrupted), what every run carries
(tags, the resolved config), autologging and stepped metrics."""

import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Run
from mlflow.environment_variables import (
    MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD,
    MLFLOW_REGISTRY_URI,
    MLFLOW_RUN_ID,
    MLFLOW_TRACKING_URI,
)
from mlflow.exceptions import MlflowException
from mlflow.utils.autologging_utils import disable_autologging
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from tabular_mlops.core.concurrency import again_if_created_meanwhile
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import MAX_TAG_LENGTH, Artifact, ModelType, Status, Tag
from tabular_mlops.core.redaction import redact
from tabular_mlops.core.sections import DATABRICKS_PROFILE, LOCAL_PROFILE, TrackingConfig
from tabular_mlops.mlflow import descriptions
from tabular_mlops.runtime import interrupts, stale_runs

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DATABRICKS_URI, UNITY_CATALOG_URI = "databricks", "databricks-uc"
INPUT_EXAMPLE_ROWS = 5
# The experiment type MLflow's UI reads (its JavaScript's ExperimentKind values).
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"


def configure_tracking(profile: str = LOCAL_PROFILE) -> str:
    """The `local` profile: MLFLOW_TRACKING_URI when set (a server, say), else the local
    sqlite store, with that store's registry. `databricks`: the workspace (`databricks`,
    or MLFLOW_TRACKING_URI if it names one, `databricks://<profile>`) and Unity Catalog's
    registry (`databricks-uc`, unless MLFLOW_REGISTRY_URI says otherwise)."""
    # A server proxying an S3 store offers clients presigned URLs into the store, which a
    # client cannot reach when the store is not published (deploy/docker-compose.yml):
    # artifacts come through the server, unless the user says otherwise (MLflow 3.17.2's
    # default; canary: tests/test_workarounds.py::test_mlflow_still_presigns_downloads_by_default).
    os.environ.setdefault(MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD.name, "false")
    if profile == DATABRICKS_PROFILE:
        given = MLFLOW_TRACKING_URI.get() if MLFLOW_TRACKING_URI.defined else ""
        mlflow.set_tracking_uri(given if given.startswith(DATABRICKS_URI) else DATABRICKS_URI)
        if not MLFLOW_REGISTRY_URI.defined:
            mlflow.set_registry_uri(UNITY_CATALOG_URI)
        return mlflow.get_tracking_uri()
    if not MLFLOW_TRACKING_URI.defined:
        # Explicit: a leftover ./mlruns file store would otherwise become MLflow's default.
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
    return mlflow.get_tracking_uri()


@contextmanager
def project_run(
    config: ProjectConfig,
    entry_point: str,
    model_type: str | None = ModelType.PIPELINE,
    summary: str = "",
) -> Iterator[mlflow.ActiveRun]:
    """The run an entry point logs to; it ends FAILED, with an `error` tag, on any error,
    and KILLED when the process is interrupted (see tabular_mlops.runtime.interrupts).

    Under `mlflow run` that is the run MLflow opened (MLFLOW_RUN_ID), in the experiment
    `mlflow run` chose; otherwise a new run in the config's experiment. Either way it is
    named after the entry point and the settings given, and described by `summary`.
    """
    tracking_uri = configure_tracking(config.tracking.profile)
    name = descriptions.run_name(entry_point, config)
    description = descriptions.run_description(summary, config) if summary else None
    if MLFLOW_RUN_ID.defined:
        # Nested: `main` runs its steps in its own process under the local env manager.
        run = mlflow.start_run(
            nested=mlflow.active_run() is not None, run_name=name, description=description
        )
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        if experiment != config.tracking.experiment_name:
            logger.warning(
                "logging to experiment %r chosen by `mlflow run`; config names %r: "
                "pass --experiment-name %s to use it",
                experiment,
                config.tracking.experiment_name,
                config.tracking.experiment_name,
            )
    else:
        mlflow.set_experiment(config.tracking.experiment_name)
        run = mlflow.start_run(run_name=name, description=description)
    logger.info("run %s in %s", run.info.run_id, redact(tracking_uri))
    mask_source_tags(run.info.run_id, run.data.tags)
    describe_experiment(run.info.experiment_id, config.tracking)
    with run, interrupts.run_ends_killed(run.info.run_id):
        tags = {Tag.ENTRY_POINT: entry_point, Tag.PROCESS: stale_runs.this_process(), **git_tags()}
        mlflow.set_tags(tags | ({Tag.MODEL_TYPE: model_type} if model_type else {}))
        try:
            yield run
        except Exception as error:
            reason = redact(str(error) if isinstance(error, UserInputError) else repr(error))
            mlflow.set_tag(Tag.ERROR, reason[:MAX_TAG_LENGTH])
            raise


# Where `mlflow run` says the code came from: a git URL, which may carry a token
# (`mlflow run https://user:token@host/repo.git`, or a clone from such a URL).
SOURCE_TAGS = (MLFLOW_SOURCE_NAME, MLFLOW_GIT_REPO_URL)


def mask_source_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Replace credentials in the source tags MLflow set on `run_id` (its `tags`) by `***`
    (a tag, unlike a param, can be overwritten)."""
    for name in SOURCE_TAGS:
        if name in tags and (masked := redact(tags[name])) != tags[name]:
            mlflow.MlflowClient().set_tag(run_id, name, masked)


def finished_run(run_id: str, error: type[UserInputError] = UserInputError) -> Run:
    """The FINISHED run `run_id`; anything else is the user's error, raised as `error`."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise error(f"run {run_id!r} not found in {redact(mlflow.get_tracking_uri())}") from None
    if run.info.status != Status.FINISHED:
        raise error(f"run {run_id} is {run.info.status}, not FINISHED")
    return run


def describe_experiment(experiment_id: str, tracking: TrackingConfig) -> None:
    """Give the experiment the config's description (shown in the UI) and tags."""
    client = mlflow.MlflowClient()
    # The experiment's type in MLflow's UI (otherwise inferred). In 3.17 it does not choose
    # the page the UI opens on: a per-browser setting does (see descriptions.runs_page).
    tags = {Tag.EXPERIMENT_KIND: CUSTOM_MODEL_DEVELOPMENT} | dict(tracking.experiment_tags)
    if tracking.experiment_description:
        tags[Tag.DESCRIPTION] = tracking.experiment_description
    current = client.get_experiment(experiment_id).tags
    for key, value in tags.items():
        if current.get(key) != value:
            again_if_created_meanwhile(
                partial(client.set_experiment_tag, experiment_id, key, value),
                f"experiment tag {key}",
                raced=inserted_meanwhile,
            )


@contextmanager
def quiet_integer_schema_hint() -> Iterator[None]:
    """Silence MLflow's hint that integer columns cannot hold missing values.

    Model inputs are float64 or text here (see tabular_mlops.core.data), so the hint only ever
    concerns the 0/1 labels and the raw table's record, where it is noise.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        yield


def git_tags(directory: Path | None = None) -> dict[str, str]:
    """Commit of `directory` (the working directory) and whether it has uncommitted
    changes; empty outside a git checkout."""
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        dirty = bool(_git(directory, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {Tag.GIT_COMMIT: commit, Tag.GIT_DIRTY: str(dirty).lower()}


def _git(directory: Path | None, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def log_config(config: ProjectConfig) -> None:
    """Resolved settings as dotted params, and the whole config as a YAML artifact."""
    mlflow.log_params(config.flat())
    mlflow.log_dict(config.loggable(), Artifact.CONFIG)


@contextmanager
def autologged(enabled: bool) -> Iterator[None]:
    """MLflow's scikit-learn and LightGBM autologging around one fit in the active run
    (`tracking.autolog`), beside the explicit logging: the pipeline's parameters
    (`classifier__num_leaves`, ...), `training_*` metrics and plots, `estimator.html`. It
    logs no model (the step logs the one it registers), no dataset (logged with its
    digest) and no metric after the fit (the test metrics are the step's); its names never
    clash with the config's dotted params or the test metrics. Off again on exit: fits
    made elsewhere (tuning folds in threads would each open a run) stay unlogged."""
    if not enabled:
        yield
        return
    quiet = {"log_models": False, "log_datasets": False, "silent": True}
    mlflow.sklearn.autolog(**quiet, log_post_training_metrics=False)
    mlflow.lightgbm.autolog(**quiet)  # a LightGBM model fitted outside a pipeline
    try:
        yield
    finally:
        mlflow.sklearn.autolog(disable=True)
        mlflow.lightgbm.autolog(disable=True)


@contextmanager
def not_autologged() -> Iterator[None]:
    """A helper fit inside an autologged block (see `autologged`) that must not be logged."""
    with disable_autologging():
        yield


# Workaround: MLflow's SQL store (checked on 3.17.2) looks a dataset or an experiment tag
# up, then inserts it (`session.merge`, mlflow/mlflow#8442): two runs doing that at once
# for the same new one (two chains on a PostgreSQL server) both insert, and one fails on
# the unique key. Canary: tests/test_workarounds.py::
# test_mlflows_sql_store_still_looks_up_then_inserts.
_INSERT_RACE = re.compile(
    r"violates unique constraint|UNIQUE constraint failed|Duplicate entry", re.I
)


def inserted_meanwhile(error: Exception) -> bool:
    """Whether MLflow's SQL store refused a row another process inserted meanwhile."""
    return isinstance(error, MlflowException) and bool(_INSERT_RACE.search(str(error)))


def log_stepped_metrics(series: dict[str, list[float]], prefix: str) -> None:
    """Per-iteration values as stepped metrics (step 1, 2, ...) in one batch call."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}_{name}", float(value), now, step)
        for name, values in series.items()
        for step, value in enumerate(values, start=1)
    ]
    mlflow.MlflowClient().log_batch(active_run_id(), metrics=metrics)


def active_run_id() -> str:
    """The id of the run this process is logging to (a job's own)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active run")
    return run.info.run_id
