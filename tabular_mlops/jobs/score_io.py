"""What `batch_score` reads and writes: the input checked and typed as the model declares
its inputs (a CSV or Parquet file, or a folder of Parquet parts), and the output, a Parquet
folder written under a temporary name and renamed when complete."""

import hashlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from mlflow.types import DataType, Schema
from mlflow.types.schema import Array, Object

from tabular_mlops.core.errors import DataError

PART_NAME = "part-{:05d}.parquet"
_ARROW_TYPES: dict[DataType, pa.DataType] = {
    DataType.double: pa.float64(),
    DataType.float: pa.float32(),
    DataType.long: pa.int64(),
    DataType.integer: pa.int32(),
    DataType.boolean: pa.bool_(),
    DataType.string: pa.string(),
}


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


def open_input(path: Path, inputs: Schema, id_columns: list[str]) -> ScoringInput:
    """Check `path` (a CSV or Parquet file, or a folder of Parquet parts) before any
    scoring: readable, holding the id columns and every input the model requires."""
    features = [str(name) for name in inputs.input_names()]
    types = {str(spec.name): arrow_type(spec.type) for spec in inputs.inputs}
    form, dataset = _open(path, types, "input")
    found = dataset.schema
    required = [*id_columns, *map(str, inputs.required_input_names())]
    if missing := [name for name in required if name not in found.names]:
        raise DataError(f"input {path} lacks required column(s): {', '.join(missing)}")
    columns = [*id_columns, *(name for name in features if name in found.names)]
    return _checked(path, form, dataset, columns, types, id_columns, features)


def open_labels(path: Path, id_columns: list[str], target: str) -> ScoringInput:
    """Check a table of outcomes (`monitor`'s labels) as an input is checked: its id
    columns and the target, typed as found."""
    form, dataset = _open(path, {}, "labels")
    if missing := [c for c in [*id_columns, target] if c not in dataset.schema.names]:
        raise DataError(f"labels {path} lack column(s): {', '.join(missing)}")
    return _checked(path, form, dataset, [*id_columns, target], {}, id_columns, [])


def _open(
    path: Path, types: dict[str, pa.DataType], what: str
) -> tuple[Literal["csv", "parquet"], ds.Dataset]:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    form: Literal["csv", "parquet"]
    if path.is_dir():
        form = "parquet"
    elif path.suffix.lower() == ".csv":
        form = "csv"
    elif path.suffix.lower() in (".parquet", ".pq"):
        form = "parquet"
    else:
        raise DataError(f"{what} {path}: use a .csv or .parquet file, or a folder of Parquet parts")
    try:
        return form, _dataset(path, form, None, types)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"cannot read {what} {path}: {' '.join(str(error).split())}") from None


def _checked(
    path: Path,
    form: Literal["csv", "parquet"],
    dataset: ds.Dataset,
    columns: list[str],
    types: dict[str, pa.DataType],
    id_columns: list[str],
    features: list[str],
) -> ScoringInput:
    found = dataset.schema
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


def output_schema(outputs: Schema, source: ScoringInput) -> pa.Schema:
    """The id columns as read, then every output field of the model."""
    ids = [source.schema.field(name) for name in source.id_columns]
    answers = [pa.field(spec.name, arrow_type(spec.type)) for spec in outputs.inputs]
    return pa.schema([*ids, *answers])


# Written last into every output batch_score makes, with the run that made it: only a
# folder holding it (and nothing but what batch_score writes) is ever replaced. Readers of
# Parquet folders (pyarrow, Spark) skip files whose name starts with "_".
OUTPUT_MARKER = "_batch_score.json"
# What else an output of batch_score holds: its parts, Spark's _SUCCESS and checksums.
_OWN_FILES = re.compile(r"^(part-.*\.parquet|_SUCCESS|\..*\.crc)$")


@contextmanager
def staged_output(final: Path, overwrite: bool, run_id: str) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` once the block completes:
    a job killed half-way leaves nothing under the final name (only a `<name>.partial-*`
    folder; not hidden, since Spark skips hidden paths). An existing `final` is refused
    unless `overwrite`, and then unless batch_score wrote it (see OUTPUT_MARKER); it is
    replaced only once the new output is complete."""
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise DataError(f"output {final} exists: pass -P overwrite=true to replace it")
        if why := _not_ours(final):
            raise DataError(
                f"output {final} is not replaced: {why}, so batch_score did not write it; "
                "move it away yourself, or choose another output"
            )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.partial-", dir=final.parent))
    try:
        yield staging
        (staging / OUTPUT_MARKER).write_text(json.dumps({"run_id": run_id}))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        replaced = final.with_name(f"{final.name}.replaced-{uuid.uuid4().hex[:8]}")
        final.rename(replaced)
        staging.rename(final)
        shutil.rmtree(replaced)
    else:
        staging.rename(final)


def _not_ours(folder: Path) -> str | None:
    """Why `folder` is not an output batch_score wrote; None when it is."""
    if folder.is_symlink() or not folder.is_dir():
        return "it is not a folder"
    try:
        run_id = json.loads((folder / OUTPUT_MARKER).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"it holds no {OUTPUT_MARKER}"
    if not isinstance(run_id, str):
        return f"its {OUTPUT_MARKER} names no run"
    others = sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name != OUTPUT_MARKER and not (entry.is_file() and _OWN_FILES.match(entry.name))
    )
    return f"it holds {others[0]}" if others else None


class PartWriter:
    """Parquet parts of at most `rows_per_file` rows; an empty input gets one empty part
    (so the output still carries its schema)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_file: int) -> None:
        self._folder, self._schema, self._limit = folder, schema, rows_per_file
        self._writer: pq.ParquetWriter | None = None
        self._parts = 0
        self._rows_in_part = 0

    def __enter__(self) -> "PartWriter":
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
