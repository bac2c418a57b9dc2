"""The config sections of the jobs that read a batch of rows: `batch_score` (with pandas or
Spark) and `monitor`. Split from core.sections, which holds the rest."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tabular_mlops.core.sections import _Section


class SparkConfig(_Section):
    """The Spark session of `batch_score --engine spark`."""

    master: str | None = None
    """None: a local session on the cores `compute.threads` allows (`local[N]`); a cluster's master
    URL (spark://host:7077, yarn, ...) to run there."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Any Spark setting: spark.executor.memory."""


class BatchConfig(_Section):
    """The `batch_score` entry point: a table in, a Parquet folder of answers out."""

    input: Path | None = None
    """A CSV or Parquet file, or a folder of Parquet parts."""
    output: Path | None = None
    """The Parquet folder written; it must not exist yet."""
    model_uri: str | None = None
    """None: the custom model's alias, models:/<custom_model.registered_model_name>@<alias>."""
    engine: Literal["pandas", "spark"] = "pandas"
    """pandas: batches on this machine; spark: on `batch.spark`'s session or cluster."""
    batch_rows: int = Field(10_000, ge=1)
    """Rows scored at a time (and per Arrow batch under Spark); at most the model's max_rows."""
    rows_per_file: int = Field(1_000_000, ge=1)
    """Pandas engine: rows per Parquet part."""
    explain: bool = False
    """Add each row's top reasons."""
    threshold: float | None = Field(None, ge=0, le=1)
    """None: the model's tuned threshold."""
    overwrite: bool = False
    """Replace an existing output folder."""
    spark: SparkConfig = SparkConfig()
    """The Spark session of the spark engine."""


Bounds = tuple[float, float]  # (warn, retrain)


class MonitoringConfig(_Section):
    """The `monitor` entry point: a batch of inputs (and, later, its outcomes) against the
    reference profile logged with the model (tabular_mlops.core.monitoring)."""

    input: Path | None = None
    """A CSV or Parquet file, or a folder of Parquet parts."""
    labels: Path | None = None
    """Id columns and the target, for the same rows."""
    model_uri: str | None = None
    """None: the custom model's alias, models:/<custom_model.registered_model_name>@<alias>."""
    engine: Literal["pandas", "spark"] = "pandas"
    """Pandas: batches on this machine; spark: by partition, on `batch.spark`'s session or cluster
    (`batch.batch_rows` rows per model call in both)."""
    psi: Bounds = (0.1, 0.25)
    """Population stability index on the reference's bins: (warn, retrain), the effect sizes
    past which the verdict is raised (so are the other pairs)."""
    distance: Bounds = (0.1, 0.2)
    """Kolmogorov-Smirnov distance (numbers), Jensen-Shannon (categories)."""
    missing_change: Bounds = (0.05, 0.10)
    """Missing rate up by this share of rows."""
    unseen_share: Bounds = (0.01, 0.05)
    """Categories training never saw."""
    metric_drop: Bounds = (0.02, 0.05)
    """Realized ROC/PR AUC under the test's, CI-bound."""
    bootstrap_rounds: int = Field(200, ge=20)
    """For the realized metrics' intervals."""
    plotted_features: int = Field(6, ge=0)
    """The most drifted, in the report."""

    @field_validator("psi", "distance", "missing_change", "unseen_share", "metric_drop")
    @classmethod
    def _ordered(cls, bounds: Bounds) -> Bounds:
        if not 0 <= bounds[0] <= bounds[1]:
            raise ValueError("must be [warn, retrain] with 0 <= warn <= retrain")
        return bounds
