"""Batch scoring: a table in, a Parquet folder of the custom model's answers out.

What both engines share: the model resolved to a registered version and checked to be
this project's custom model, the input checked (readable, required columns) and typed as
the model's signature says, the output schema (id columns, then every output field of the
model), the output written under a temporary name and renamed when complete, and the
figures of the run. The pandas engine is here; the Spark engine is in spark_scoring.
"""

import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.models.model import MODEL_CONFIG
from mlflow.pyfunc import FLAVOR_NAME
from mlflow.types import DataType, Schema
from mlflow.types.schema import Array, Object

from tabular_mlops.config import BatchConfig
from tabular_mlops.errors import DataError, UserInputError
from tabular_mlops.pipeline_flavor import declared_inputs
from tabular_mlops.plots import pyplot

logger = logging.getLogger(__name__)

# Keys of the custom model's model_config and request params this module relies on
# (tabular_custom_model.Setting and Param).
MAX_ROWS_SETTING = "max_rows"
THRESHOLD_SETTING = "threshold"
BAND_LABELS_SETTING = "risk_band_labels"
EXPLAIN_PARAM = "explain"
THRESHOLD_PARAM = "threshold"
# Output fields of the custom model (tabular_custom_model.Output) that the run sums up.
PROBABILITY, DECISION, RISK_BAND, REASONS = "probability", "decision", "risk_band", "reasons"
_SUMMED_UP = (PROBABILITY, DECISION, RISK_BAND, REASONS)
HISTOGRAM_BINS = 50
PART_NAME = "part-{:05d}.parquet"
PLOT_ARTIFACT = "score_distribution.png"
_ARROW_TYPES: dict[DataType, pa.DataType] = {
    DataType.double: pa.float64(),
    DataType.float: pa.float32(),
    DataType.long: pa.int64(),
    DataType.integer: pa.int32(),
    DataType.boolean: pa.bool_(),
    DataType.string: pa.string(),
}


class ModelError(UserInputError):
    """The model to score with cannot be found, or is not this project's custom model."""


@dataclass(frozen=True)
class ScoringModel:
    """The model a job scores with, pinned: an alias that moves mid-job changes nothing."""

    uri: str  # models:/<name>/<version> when registered, else the URI given
    inputs: Schema
    outputs: Schema
    max_rows: int
    threshold: float  # the model's own decision threshold
    band_labels: tuple[str, ...]

    def required_inputs(self) -> list[str]:
        return self.inputs.required_input_names()


def resolve_model(uri: str) -> ScoringModel:
    """`uri` pinned to its registered version (an alias or a version URI), with what its
    MLmodel says; anything but this project's custom model is a ModelError."""
    pinned = uri
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        try:
            version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
        except MlflowException as error:
            raise ModelError(f"model {uri} not found: {error.message}") from None
        pinned = f"models:/{name}/{version}"
    try:
        info = mlflow.models.get_model_info(pinned)
    except (MlflowException, OSError) as error:
        reason = error.message if isinstance(error, MlflowException) else str(error)
        raise ModelError(f"model {uri} cannot be read: {' '.join(reason.split())}") from None
    settings = info.flavors.get(FLAVOR_NAME, {}).get(MODEL_CONFIG) or {}
    signature = info.signature
    outputs = signature.outputs.input_names() if signature and signature.outputs else []
    params = {param.name for param in signature.params} if signature and signature.params else set()
    if (
        MAX_ROWS_SETTING not in settings
        or not set(_SUMMED_UP) <= set(outputs)
        or not {EXPLAIN_PARAM, THRESHOLD_PARAM} <= params
    ):
        raise ModelError(
            f"model {uri} is not this project's custom model (outputs: "
            f"{', '.join(map(str, outputs)) or 'none'}): score with the `custom_model` "
            "entry point's model"
        )
    return ScoringModel(
        uri=pinned,
        inputs=declared_inputs(info),
        outputs=signature.outputs,
        max_rows=int(settings[MAX_ROWS_SETTING]),
        threshold=float(settings[THRESHOLD_SETTING]),
        band_labels=tuple(settings[BAND_LABELS_SETTING]),
    )


def arrow_type(mlflow_type: Any) -> pa.DataType:
    """The Arrow type of an MLflow schema type (a DataType, Array or Object)."""
    if isinstance(mlflow_type, Array):
        return pa.list_(arrow_type(mlflow_type.dtype))
    if isinstance(mlflow_type, Object):
        return pa.struct([(prop.name, arrow_type(prop.dtype)) for prop in mlflow_type.properties])
    if mlflow_type in _ARROW_TYPES:
        return _ARROW_TYPES[mlflow_type]
    raise TypeError(f"no Arrow type for the model's {mlflow_type}")


@dataclass(frozen=True)
class ScoringInput:
    """A checked input: its files, format and the schema it is read with."""

    path: Path
    format: Literal["csv", "parquet"]
    files: tuple[Path, ...]
    schema: pa.Schema  # id columns as found, model inputs typed as the signature says
    id_columns: tuple[str, ...]
    features: tuple[str, ...]  # the model's inputs, in its signature's order
    digest: str  # of the files' bytes

    def dataset(self) -> ds.Dataset:
        return _dataset(self.path, self.format, self.schema)


def open_input(path: Path, model: ScoringModel, id_columns: list[str]) -> ScoringInput:
    """Check `path` (a CSV or Parquet file, or a folder of Parquet parts) before any
    scoring: readable, holding the id columns and every input the model requires."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_dir():
        form = "parquet"
    elif path.suffix.lower() == ".csv":
        form = "csv"
    elif path.suffix.lower() in (".parquet", ".pq"):
        form = "parquet"
    else:
        raise DataError(f"input {path}: use a .csv or .parquet file, or a folder of Parquet parts")
    features = [str(name) for name in model.inputs.input_names()]
    types = {spec.name: arrow_type(spec.type) for spec in model.inputs.inputs}
    try:
        dataset = _dataset(path, form, None, types)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"cannot read input {path}: {' '.join(str(error).split())}") from None
    found = dataset.schema
    required = [*id_columns, *model.required_inputs()]
    if missing := [name for name in required if name not in found.names]:
        raise DataError(f"input {path} lacks required column(s): {', '.join(missing)}")
    columns = [*id_columns, *(name for name in features if name in found.names)]
    schema = pa.schema(
        [pa.field(name, types.get(name, found.field(name).type)) for name in columns]
    )
    files = tuple(sorted(Path(file) for file in dataset.files))  # not _SUCCESS, .crc, ...
    return ScoringInput(
        path, form, files, schema, tuple(id_columns), tuple(features), _digest(files)
    )


def _dataset(
    path: Path,
    form: str,
    schema: pa.Schema | None,
    column_types: dict[str, pa.DataType] | None = None,
) -> ds.Dataset:
    if form == "csv":
        types = {f.name: f.type for f in schema} if schema is not None else column_types or {}
        # Empty cells and pandas' NA spellings are nulls in every column, as pd.read_csv reads.
        options = pa.csv.ConvertOptions(column_types=types, strings_can_be_null=True)
        return ds.dataset(path, format=ds.CsvFileFormat(convert_options=options))
    return ds.dataset(path, format="parquet", exclude_invalid_files=False)


def _digest(files: tuple[Path, ...]) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    for file in files:
        md5.update(f"{file.name}\0".encode())
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                md5.update(chunk)
    return md5.hexdigest()[:8]


def output_schema(model: ScoringModel, source: ScoringInput) -> pa.Schema:
    """The id columns as read, then every output field of the model."""
    ids = [source.schema.field(name) for name in source.id_columns]
    answers = [pa.field(spec.name, arrow_type(spec.type)) for spec in model.outputs.inputs]
    return pa.schema([*ids, *answers])


@contextmanager
def staged_output(final: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` once the block completes:
    a job killed half-way leaves nothing under the final name (only a `<name>.partial-*`
    folder; not hidden, since Spark skips hidden paths). An existing `final` is refused
    unless `overwrite`; it is replaced only once the new output is complete."""
    if final.exists() and not overwrite:
        raise DataError(f"output {final} exists: pass -P overwrite=true to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.partial-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        replaced = final.with_name(f"{final.name}.replaced-{uuid.uuid4().hex[:8]}")
        final.rename(replaced)
        staging.rename(final)
        shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()
    else:
        staging.rename(final)


@dataclass
class ScoreSummary:
    """What the answers add up to, gathered batch by batch (or from Spark's aggregates)."""

    rows: int = 0
    decisions: int = 0
    bands: Counter[str] = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=int))

    def add(self, probability: np.ndarray, decision: np.ndarray, band: list[str]) -> None:
        self.rows += len(probability)
        self.decisions += int(np.count_nonzero(decision))
        self.bands.update(band)
        self.histogram += histogram_bins(probability)

    def metrics(self, seconds: float, band_labels: list[str]) -> dict[str, float]:
        figures = {
            "rows": self.rows,
            "seconds": seconds,
            "rows_per_second": self.rows / seconds if seconds > 0 else 0.0,
            "decision_rate": self.decisions / self.rows if self.rows else 0.0,
        }
        return figures | {f"risk_band.{label}": self.bands[label] for label in band_labels}


def histogram_bins(probability: np.ndarray) -> np.ndarray:
    return np.histogram(probability, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]


def request_params(settings: BatchConfig) -> dict[str, Any]:
    """The model's request parameters for this job."""
    params: dict[str, Any] = {EXPLAIN_PARAM: settings.explain}
    if settings.threshold is not None:
        params[THRESHOLD_PARAM] = settings.threshold
    return params


def batch_rows(settings: BatchConfig, model: ScoringModel) -> int:
    """Rows per call to the model: the configured batch, at most what the model takes."""
    return min(settings.batch_rows, model.max_rows)


def score_with_pandas(
    model: ScoringModel, source: ScoringInput, staging: Path, settings: BatchConfig, threads: int
) -> ScoreSummary:
    """Stream the input in batches through the model loaded in this process, writing
    Parquet parts as it goes: memory stays flat however long the input."""
    pa.set_cpu_count(threads)  # Arrow's pool takes every core by default
    pyfunc = mlflow.pyfunc.load_model(model.uri)
    schema = output_schema(model, source)
    params = request_params(settings)
    size = batch_rows(settings, model)
    summary = ScoreSummary()
    total = _row_count(source)
    started = time.perf_counter()
    with _PartWriter(staging, schema, settings.rows_per_file) as writer:
        for number, batch in enumerate(_batches(source, size), start=1):
            frame = batch.select(list(source.features)).to_pandas()
            answers = pyfunc.predict(frame, params=params)
            columns = [batch.column(name) for name in source.id_columns]
            columns += [
                pa.array(answers[field.name], type=field.type)
                for field in schema
                if field.name not in source.id_columns
            ]
            writer.write(pa.Table.from_arrays(columns, schema=schema))
            summary.add(
                np.asarray(answers[PROBABILITY], dtype=float),
                np.asarray(answers[DECISION], dtype=bool),
                answers[RISK_BAND],
            )
            _log_progress(number, summary.rows, total, time.perf_counter() - started)
    return summary


def _row_count(source: ScoringInput) -> int | None:
    """Rows of a Parquet input, from its footers; None for CSV (it would take a pass)."""
    return source.dataset().count_rows() if source.format == "parquet" else None


def _batches(source: ScoringInput, size: int) -> Iterator[pa.RecordBatch]:
    """The input's rows typed as `source.schema` says, at most `size` rows at a time."""
    try:
        batches = (
            _parquet_batches(source, size) if source.format == "parquet" else _csv_batches(source)
        )
        for batch in batches:
            typed = [
                column if column.type == field.type else column.cast(field.type)
                for column, field in zip(batch.columns, source.schema, strict=True)
            ]  # e.g. Parquet ints that the model takes as doubles
            for offset in range(0, batch.num_rows, size):
                yield pa.RecordBatch.from_arrays(typed, schema=source.schema).slice(offset, size)
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split())
        raise DataError(f"cannot read input {source.path}: {reason}") from None


def _parquet_batches(source: ScoringInput, size: int) -> Iterator[pa.RecordBatch]:
    # File by file, `size` rows decoded at a time. (Arrow's dataset scanner decodes whole
    # row groups, 1M rows by default: its memory grew with the input.)
    for file in source.files:
        for batch in pq.ParquetFile(file).iter_batches(
            batch_size=size, columns=source.schema.names
        ):
            yield batch.select(source.schema.names)


def _csv_batches(source: ScoringInput) -> Iterator[pa.RecordBatch]:
    # The CSV reader streams blocks of about 1 MB.
    yield from source.dataset().scanner(columns=source.schema.names).to_batches()


def _log_progress(number: int, rows: int, total: int | None, seconds: float) -> None:
    done = f"{rows:,}/{total:,} rows" if total else f"{rows:,} rows"
    rate = rows / seconds if seconds > 0 else 0.0
    logger.info("batch %d: %s scored (%.0f rows/s)", number, done, rate)


class _PartWriter:
    """Parquet parts of at most `rows_per_file` rows; an empty input gets one empty part
    (so the output still carries its schema)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_file: int) -> None:
        self._folder, self._schema, self._limit = folder, schema, rows_per_file
        self._writer: pq.ParquetWriter | None = None
        self._parts = 0
        self._rows_in_part = 0

    def __enter__(self) -> "_PartWriter":
        return self

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None or self._rows_in_part >= self._limit:
                self._next_part()
            assert self._writer is not None
            room = self._limit - self._rows_in_part
            self._writer.write_table(table.slice(0, room))
            self._rows_in_part += min(room, table.num_rows)
            table = table.slice(room)

    def _next_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = pq.ParquetWriter(self._folder / PART_NAME.format(self._parts), self._schema)
        self._parts += 1
        self._rows_in_part = 0

    def __exit__(self, *exc_info: object) -> None:
        if self._writer is None:
            self._next_part()
        assert self._writer is not None
        self._writer.close()


def log_summary(
    summary: ScoreSummary, seconds: float, model: ScoringModel, settings: BatchConfig
) -> dict[str, float]:
    """The job's figures as run metrics, and the score distribution as a plot."""
    metrics = summary.metrics(seconds, list(model.band_labels))
    mlflow.log_metrics(metrics)
    threshold = model.threshold if settings.threshold is None else settings.threshold
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    axes.bar(edges[:-1], summary.histogram, width=np.diff(edges), align="edge")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(xlabel="probability", ylabel="rows", title=f"Scores of {summary.rows:,} rows")
    axes.legend()
    mlflow.log_figure(figure, PLOT_ARTIFACT)
    plt.close(figure)
    return metrics
