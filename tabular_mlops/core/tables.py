"""Reading a table from disk: a CSV file (separator and text encoding as configured, or the
separator inferred), a Parquet file, or a folder of Parquet files (hive-partitioned too).
Every problem is a one-line DataError."""

import csv
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tabular_mlops.core.errors import DataError

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Separators tried, in this order, when data.sep is not set.
CSV_SEPARATORS = (",", ";", "\t", "|")
# Lines of a CSV file its separator is inferred from.
_SNIFFED_LINES = 50


def read_table(path: Path, sep: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV file (`sep` None: inferred), a Parquet file, or a folder of Parquet files
    (hive-partitioned too: `year=2024/part-0.parquet` gives a `year` column)."""
    if path.is_dir():
        if not any(path.rglob("*.parquet")) and not any(path.rglob("*.pq")):
            raise DataError(f"data folder {path} holds no .parquet files")
        return _read(path, pd.read_parquet)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"unsupported data file type {path.suffix or '(none)'!r} for {path}: use one of "
            f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}, or a folder of Parquet files"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if suffix in PARQUET_SUFFIXES:
        return _read(path, pd.read_parquet)
    sep = sep or infer_separator(path, encoding)
    frame = _read(path, lambda source: pd.read_csv(source, sep=sep, encoding=encoding))
    _check_header(frame, path, sep)
    return frame


def infer_separator(path: Path, encoding: str = "utf-8") -> str:
    """The one of CSV_SEPARATORS that splits the first lines of `path` into the same
    number of fields, the most of them; `,` when none does."""
    try:
        with path.open(encoding=encoding, newline="") as file:
            lines = [line for _, line in zip(range(_SNIFFED_LINES), file, strict=False)]
    except UnicodeDecodeError as error:
        raise DataError(_not_text(path, encoding, error)) from None
    best, best_width = ",", 1
    for candidate in CSV_SEPARATORS:
        widths = {len(row) for row in csv.reader(lines, delimiter=candidate) if row}
        if len(widths) == 1 and (width := widths.pop()) > best_width:
            best, best_width = candidate, width
    return best


def _read(path: Path, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    try:
        return reader(path)
    except UnicodeDecodeError as error:
        raise DataError(_not_text(path, "utf-8", error)) from None
    except Exception as error:  # any parser failure means the same thing to the user
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot read data file {path}: {reason}") from None


def _not_text(path: Path, encoding: str, error: UnicodeDecodeError) -> str:
    return (
        f"data file {path} is not {error.encoding or encoding} text (byte {error.start}): "
        "set data.encoding (latin-1 and cp1252 are common for older exports)"
    )


def _check_header(frame: pd.DataFrame, path: Path, sep: str) -> None:
    """A one-column table whose header holds another separator was split wrong."""
    if len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    if others := [
        candidate for candidate in CSV_SEPARATORS if candidate != sep and candidate in header
    ]:
        raise DataError(
            f"{path} was read as one column named {header[:60]!r}: it looks "
            f"{others[0]!r}-separated; set data.sep: {others[0]!r}"
        )
