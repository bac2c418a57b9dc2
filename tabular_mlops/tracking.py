"""Runs and what goes into them: tags, config, dataset and the logged model."""

import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Metric, Run
from mlflow.environment_variables import (
    MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD,
    MLFLOW_REGISTRY_URI,
    MLFLOW_RUN_ID,
    MLFLOW_TRACKING_URI,
)
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from tabular_mlops import descriptions, interrupts, stale_runs
from tabular_mlops.config import DATABRICKS_PROFILE, LOCAL_PROFILE, ProjectConfig, TrackingConfig
from tabular_mlops.data import LabeledTable
from tabular_mlops.errors import UserInputError
from tabular_mlops.redaction import redact
from tabular_mlops.tags import MAX_TAG_LENGTH, Tag

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DATABRICKS_URI, UNITY_CATALOG_URI = "databricks", "databricks-uc"
# Values of Tag.MODEL_TYPE: what a run's logged model is.
PIPELINE_MODEL_TYPE = "sklearn-pipeline-lightgbm"
WRAPPER_MODEL_TYPE = "pyfunc-wrapper"
INPUT_EXAMPLE_ROWS = 5
SCHEMA_SAMPLE_ROWS = 1000
# The tag MLflow's UI shows as an experiment's (or run's) description.
DESCRIPTION_TAG = "mlflow.note.content"
# The experiment type MLflow's UI reads (its JavaScript's ExperimentKind values).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"


def configure_tracking(profile: str = LOCAL_PROFILE) -> str:
    """The `local` profile: MLFLOW_TRACKING_URI when set (a server, say), else the local
    sqlite store, with that store's registry. `databricks`: the workspace (`databricks`,
    or MLFLOW_TRACKING_URI if it names one, `databricks://<profile>`) and Unity Catalog's
    registry (`databricks-uc`, unless MLFLOW_REGISTRY_URI says otherwise)."""
    # A server proxying an S3 store offers clients presigned URLs into the store, which a
    # client cannot reach when the store is not published (deploy/docker-compose.yml):
    # artifacts come through the server, unless the user says otherwise.
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
    model_type: str | None = PIPELINE_MODEL_TYPE,
    summary: str = "",
) -> Iterator[mlflow.ActiveRun]:
    """The run an entry point logs to; it ends FAILED, with an `error` tag, on any error,
    and KILLED when the process is interrupted (see tabular_mlops.interrupts).

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
    if run.info.status != "FINISHED":
        raise error(f"run {run_id} is {run.info.status}, not FINISHED")
    return run


def describe_experiment(experiment_id: str, tracking: TrackingConfig) -> None:
    """Give the experiment the config's description (shown in the UI) and tags."""
    client = mlflow.MlflowClient()
    # The experiment's type in MLflow's UI (otherwise inferred). In 3.17 it does not choose
    # the page the UI opens on: a per-browser setting does (see descriptions.runs_page).
    tags = {EXPERIMENT_KIND_TAG: CUSTOM_MODEL_DEVELOPMENT} | dict(tracking.experiment_tags)
    if tracking.experiment_description:
        tags[DESCRIPTION_TAG] = tracking.experiment_description
    current = client.get_experiment(experiment_id).tags
    for key, value in tags.items():
        if current.get(key) != value:
            again_after_insert_race(
                lambda key=key, value=value: client.set_experiment_tag(experiment_id, key, value),
                f"experiment tag {key}",
            )


@contextmanager
def quiet_integer_schema_hint() -> Iterator[None]:
    """Silence MLflow's hint that integer columns cannot hold missing values.

    Model inputs are float64 or text here (see tabular_mlops.data), so the hint only ever
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
    mlflow.log_dict(config.loggable(), "config/config.yaml")


def log_dataset(table: LabeledTable, context: str = "training") -> str:
    """Log the table as the run's input; returns its digest."""
    log_input(as_mlflow_dataset(table), context)
    mlflow.set_tag(Tag.DATASET_DIGEST, table.digest)
    return table.digest


class TableDataset(PandasDataset):
    """MLflow's pandas dataset, with the table's own digest (every row) and a schema read
    from a sample. MLflow's own inference checks every value, which took 26 s on a
    200k-row table before any training."""

    @cached_property
    def schema(self) -> Schema | None:
        return sampled_schema(self.df)


def as_mlflow_dataset(table: LabeledTable) -> TableDataset:
    """The table as MLflow sees it; its digest identifies the data a model trained on."""
    return TableDataset(
        df=table.raw,
        source=_dataset_source(table.source),
        targets=table.target.name,
        name=table.source.name,
        digest=table.digest,
    )


def log_file_input(path: Path, digest: str, context: str) -> None:
    """Log a file or folder the run read, not loaded in memory (a table to score, say)."""
    dataset = MetaDataset(_dataset_source(path), name=path.name, digest=digest)
    log_input(dataset, context)


# MLflow's SQL store looks a dataset or an experiment tag up, then inserts it: two runs
# doing that at once for the same new one (two chains on a PostgreSQL server) both insert,
# and one fails on the unique key. Done again, it finds the other's row.
_INSERT_RACE = re.compile(
    r"violates unique constraint|UNIQUE constraint failed|Duplicate entry", re.I
)
T = TypeVar("T")


def again_after_insert_race(write: Callable[[], T], what: str, attempts: int = 3) -> T:
    """`write()` (idempotent), again when another process inserted the same row meanwhile."""
    for _ in range(attempts - 1):
        try:
            return write()
        except MlflowException as error:
            if not _INSERT_RACE.search(str(error)):
                raise
            logger.info("%s was written by another process meanwhile: again", what)
    return write()


def log_input(dataset: Dataset, context: str) -> None:
    """mlflow.log_input, safe when another run logs the same new dataset at once."""
    again_after_insert_race(
        lambda: mlflow.log_input(dataset, context=context), f"dataset {dataset.name}"
    )


def _dataset_source(path: Path) -> DatasetSource:
    with warnings.catch_warnings():
        # MLflow registers one local-file source class per URI scheme, then warns that a
        # path matches "LocalArtifactDatasetSource, LocalArtifactDatasetSource".
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        return resolve_dataset_source(str(path))


def sampled_schema(frame: pd.DataFrame) -> Schema:
    """MLflow's schema of `frame`: column types inferred from its first rows (pandas types
    are per column, so a sample shows them), and a column optional if it has a missing
    value anywhere."""
    with quiet_integer_schema_hint():
        try:
            inferred = infer_signature(frame.head(SCHEMA_SAMPLE_ROWS)).inputs
        except MlflowException:  # e.g. an object column empty in the sample
            inferred = infer_signature(frame).inputs
    missing = frame.isna().any()
    return Schema(
        [ColSpec(spec.type, spec.name, required=not missing[spec.name]) for spec in inferred]
    )


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


def log_stepped_metrics(series: dict[str, list[float]], prefix: str) -> None:
    """Per-iteration values as stepped metrics (step 1, 2, ...) in one batch call."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}_{name}", float(value), now, step)
        for name, values in series.items()
        for step, value in enumerate(values, start=1)
    ]
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=metrics)
