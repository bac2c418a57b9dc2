"""The pandas engine of `batch_score` and `monitor`: the input streamed in batches through
the model loaded in this process, Parquet parts written (or counts added up) as it goes:
memory stays flat however long the input."""

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tabular_mlops.core import monitoring
from tabular_mlops.core.batch_sections import BatchConfig
from tabular_mlops.core.errors import DataError
from tabular_mlops.jobs.score_io import PartWriter, ScoringInput, output_schema
from tabular_mlops.jobs.scoring_model import (
    DECISION,
    PROBABILITY,
    RISK_BAND,
    ScoreSummary,
    ScoringModel,
    batch_rows,
    request_params,
)

logger = logging.getLogger(__name__)


def score_with_pandas(
    model: ScoringModel,
    model_dir: Path,
    source: ScoringInput,
    staging: Path,
    settings: BatchConfig,
    threads: int,
) -> ScoreSummary:
    """Score `source` into Parquet parts in `staging` with the model's checked copy in
    `model_dir`; the answers summed up."""
    pa.set_cpu_count(threads)  # Arrow's pool takes every core by default
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    schema = output_schema(model.outputs, source)
    params = request_params(settings)
    size = batch_rows(settings, model)
    summary = ScoreSummary()
    total = _row_count(source)
    started = time.perf_counter()
    with PartWriter(staging, schema, settings.rows_per_file) as writer:
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


def count_with_pandas(
    reference: monitoring.Profile,
    model: ScoringModel,
    model_dir: Path,
    source: ScoringInput,
    labels: ScoringInput | None,
    settings: BatchConfig,
    threads: int,
) -> monitoring.Tally:
    """`source` scored by the model's checked copy in `model_dir` and counted against
    `reference`, batch by batch; with `labels`, each row's score joined to its outcome."""
    pa.set_cpu_count(threads)
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    counts = monitoring.Counts()
    scored = []
    for batch in _batches(source, batch_rows(settings, model)):
        frame = batch.select(list(source.features)).to_pandas()
        answers: Any = pyfunc.predict(frame)
        scores = np.asarray(answers[PROBABILITY], dtype=np.float64)
        counts += monitoring.count(reference, frame, scores)
        if labels is not None:
            ids = batch.select(list(source.id_columns)).to_pandas()
            scored.append(ids.assign(**{monitoring.SCORE_COLUMN: scores}))
    if labels is None or not scored:
        return monitoring.Tally(counts, None)
    outcomes = labels.dataset().to_table(columns=labels.schema.names).to_pandas()
    joined = pd.concat(scored).merge(outcomes, on=list(labels.id_columns), how="inner")
    order = [*labels.id_columns, monitoring.SCORE_COLUMN]
    return monitoring.Tally(counts, joined.sort_values(order, kind="stable", ignore_index=True))


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
