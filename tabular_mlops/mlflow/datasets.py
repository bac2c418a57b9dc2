"""The data a run read, as MLflow records it: datasets with the project's own digest (every
row) and a schema read from a sample."""

import warnings
from functools import cached_property
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.types import ColSpec, Schema

from tabular_mlops.core.concurrency import again_if_created_meanwhile
from tabular_mlops.core.data import LabeledTable
from tabular_mlops.core.names import Tag
from tabular_mlops.mlflow.runs import inserted_meanwhile, quiet_integer_schema_hint

SCHEMA_SAMPLE_ROWS = 1000


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
    # MLflow 3.17 marks MetaDataset's `profile` abstract, and implements it.
    dataset = MetaDataset(_dataset_source(path), name=path.name, digest=digest)  # type: ignore[abstract]
    log_input(dataset, context)


def log_input(dataset: Dataset, context: str) -> None:
    """mlflow.log_input, safe when another run logs the same new dataset at once."""
    again_if_created_meanwhile(
        lambda: mlflow.log_input(dataset, context=context),
        f"dataset {dataset.name}",
        raced=inserted_meanwhile,
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
