"""The sections of the project's config (see tabular_mlops.core.config), each a pydantic
model: a misspelt key is an error, every value checked where it is declared.

LightGBM's own parameter names (`model.params`, `tuning.search_space`) are checked where a
model is built (tabular_mlops.core.pipeline.check_lightgbm_names): loading a config imports
no LightGBM.
"""

import codecs
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tabular_mlops.core.resources import available_cores, model_threads

# MLflow reserves `latest` (any case) and `v<N>` for its own model URIs.
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")

# Metrics of MLflow's default classifier evaluator a promotion can be judged by, and
# whether greater is better for each.
GATE_METRICS: dict[str, bool] = {
    "roc_auc": True,
    "precision_recall_auc": True,
    "log_loss": False,
    "f1_score": True,
    "accuracy_score": True,
    "precision_score": True,
    "recall_score": True,
}

# The threshold maximising F1 out of fold on the training split, and the suffix of the
# test metrics at it (tabular_mlops.mlflow.evaluation.log_f1_threshold_metrics).
F1_THRESHOLD = "f1_threshold"
AT_F1_THRESHOLD = "_at_f1_threshold"

# The metrics a run is summed up by, as MLflow's evaluator names them (plus brier_score_loss
# and F1 at the tuned threshold as well as at 0.5).
HEADLINE_METRICS = (
    "roc_auc",
    "precision_recall_auc",
    "log_loss",
    "brier_score_loss",
    "f1_score",
    f"f1_score{AT_F1_THRESHOLD}",
)


def _usable_alias(alias: str) -> str:
    if _RESERVED_ALIAS.match(alias):
        raise ValueError(f"alias {alias!r} is reserved by MLflow (latest, v<N>)")
    if not _ALIAS_PATTERN.match(alias):
        raise ValueError(f"alias {alias!r} may only hold letters, digits, '_' and '-'")
    return alias


# A registered-model alias this project may set.
Alias = Annotated[str, AfterValidator(_usable_alias)]

# Where runs and models go: `local` is MLFLOW_TRACKING_URI (a server) or ./mlflow.db, with
# that store's registry; `databricks` is the workspace's tracking and Unity Catalog's
# registry (three-level model names, aliases only).
LOCAL_PROFILE: Final = "local"
DATABRICKS_PROFILE: Final = "databricks"
# An unquoted Unity Catalog identifier (catalog, schema, model).
_UC_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def unity_catalog_problem(name: str) -> str | None:
    """Why `name` is not a Unity Catalog model name (`catalog.schema.model`), or None."""
    parts = name.split(".")
    if len(parts) != 3:
        return f"{name!r} is not catalog.schema.model ({len(parts)} part(s))"
    if bad := [part for part in parts if not _UC_IDENTIFIER.match(part)]:
        return f"{name!r}: {', '.join(map(repr, bad))} may hold only letters, digits and _"
    return None


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting. Each setting's help is the
    # docstring under it, read by docs_build for the configuration reference (not by
    # pydantic's use_attribute_docstrings: it reads every class's source at import, 25 ms
    # added to every step's start).
    model_config = ConfigDict(extra="forbid", frozen=True)


Label = str | int | float | bool


class DataConfig(_Section):
    path: Path
    """A CSV or Parquet file, or a folder of Parquet files (hive-partitioned too)."""
    sep: str | None = Field(None, min_length=1)
    """CSV separator; None: inferred (, ; tab |)"""
    encoding: str = "utf-8"
    """Of a CSV file; latin-1 or cp1252 for many older exports."""
    target: str = Field(min_length=1)
    """The column to predict."""
    positive_label: Label | None = None
    """Value of `target` that counts as the positive class; may be omitted for 0/1 or bool targets.
    Value of `target` that counts as the positive class; may be omitted for 0/1 or bool targets."""
    positive_labels: list[Label] | None = Field(None, min_length=1)
    """Or several values (a multi-class target): these are positive, all others negative."""
    id_columns: list[str] = []
    """Columns that identify a row (kept out of the features; `monitor` joins outcomes on them)."""
    numeric_features: list[str] | None = None
    """None: inferred from the table's dtypes (numbers are numeric, the rest categorical)."""
    categorical_features: list[str] | None = None
    """None: inferred, as numeric_features."""
    min_rows: int = Field(100, ge=10)
    """Fewer rows in the table are refused."""
    min_rows_per_class: int = Field(10, ge=2)
    """Fewer rows of either class are refused."""

    @field_validator("encoding")
    @classmethod
    def _encoding_is_known(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}") from None
        return encoding

    @model_validator(mode="after")
    def _one_way_to_name_positives(self) -> "DataConfig":
        if self.positive_label is not None and self.positive_labels is not None:
            raise ValueError("set data.positive_label or data.positive_labels, not both")
        return self

    @model_validator(mode="after")
    def _columns_have_one_role(self) -> "DataConfig":
        roles = {
            "target": [self.target],
            "id_columns": self.id_columns,
            "numeric_features": self.numeric_features or [],
            "categorical_features": self.categorical_features or [],
        }
        seen: dict[str, str] = {}
        for role, columns in roles.items():
            for column in columns:
                if column in seen:
                    where = role if seen[column] == role else f"{seen[column]} and {role}"
                    raise ValueError(f"column {column!r} is listed twice ({where})")
                seen[column] = role
        if self.numeric_features == [] and self.categorical_features == []:
            raise ValueError("no features: numeric_features and categorical_features are empty")
        return self


class SplitConfig(_Section):
    test_size: float = Field(0.2, gt=0, lt=1)
    """Share of rows held out for the test metrics (stratified)."""
    seed: int = 42
    """Seeds the split, LightGBM and the in-memory tuning search."""


# Set from ModelConfig's own fields or the split seed, never through model.params.
MANAGED_PARAMS = frozenset({"n_estimators", "learning_rate", "num_leaves", "random_state"})


class ModelConfig(_Section):
    """LightGBM settings; `params` takes any other LGBMClassifier or LightGBM parameter."""

    n_estimators: int = Field(300, ge=1)
    """Trees LightGBM grows (the ceiling, under early stopping)."""
    learning_rate: float = Field(0.03, gt=0, le=1)
    """LightGBM's shrinkage per tree."""
    num_leaves: int = Field(15, ge=2)
    """Leaves per tree at most."""
    params: dict[str, Any] = {}
    """Any other LGBMClassifier parameter (n_jobs, min_child_samples, ...)."""

    @field_validator("params")
    @classmethod
    def _params_are_not_managed(cls, params: dict[str, Any]) -> dict[str, Any]:
        if clash := sorted(set(params) & MANAGED_PARAMS):
            raise ValueError(f"set {', '.join(clash)} outside model.params (it is managed)")
        return params

    def with_values(self, values: Mapping[str, Any]) -> "ModelConfig":
        """This config with some LightGBM parameters replaced (a tuning trial's, say)."""
        fields = {name: value for name, value in values.items() if name in type(self).model_fields}
        params = {name: value for name, value in values.items() if name not in fields}
        return ModelConfig.model_validate(
            self.model_dump() | fields | {"params": self.params | params}
        )


class SearchDimension(_Section):
    """The range of one hyperparameter: low/high for int and float, or a list of choices."""

    type: Literal["int", "float", "categorical"]
    """How the dimension is drawn."""
    low: float | None = None
    """Lowest value of an int or float dimension."""
    high: float | None = None
    """Highest value of an int or float dimension."""
    log: bool = False
    """Drawn on a log scale (low > 0)."""
    choices: list[str | int | float | bool] | None = None
    """The values of a categorical dimension."""

    @model_validator(mode="after")
    def _range_matches_type(self) -> "SearchDimension":
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("a categorical dimension takes a non-empty `choices` only")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"an {self.type} dimension takes `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale dimension needs low > 0")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("an int dimension needs whole-number low and high")
        return self

    def bounds(self) -> tuple[float, float]:
        """low and high of an int or float dimension (checked present at validation)."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension has no range")
        return self.low, self.high

    def options(self) -> list[str | int | float | bool]:
        """The choices of a categorical dimension (checked present at validation)."""
        if not self.choices:
            raise ValueError(f"a {self.type} dimension has no choices")
        return self.choices


class TuningConfig(_Section):
    """Optuna search over LightGBM parameters, scored by cross-validated ROC AUC."""

    n_trials: int = Field(20, ge=1)
    """Trials that finish (complete or pruned) in this process."""
    timeout_seconds: float | None = Field(None, gt=0)
    """No trial starts after this long; None: no limit."""
    n_jobs: int = Field(1, ge=1)
    """Trials run in parallel threads (1: reproducible)"""
    cv_folds: int = Field(5, ge=2, le=20)
    """Folds of the cross-validation."""
    early_stopping_rounds: int | None = Field(50, ge=1)
    """Within a fold, LightGBM stops adding trees once its log loss on a part of the fold's
    training rows (`early_stopping_fraction`) has not improved for this many trees;
    `n_estimators` is the ceiling. None: every fold trains `n_estimators` trees."""
    early_stopping_fraction: float = Field(0.1, gt=0, lt=0.5)
    """Share of a fold's training rows watched for early stopping."""
    pruner: Literal["median", "top_quartile", "none"] = "median"
    """After each fold, a trial whose running CV ROC AUC cannot win stops ("pruned"): median: below
    the median of earlier trials after as many folds; top_quartile: below their top quarter;
    none: every trial runs every fold."""
    pruner_startup_trials: int = Field(5, ge=0)
    """Trials that are never pruned, first."""
    storage: str | None = None
    """Optuna RDB URL (postgresql://...) shared by several `track` processes; None: in memory."""
    study_name: str = Field("churn-lightgbm", min_length=1)
    """The Optuna study (a shared storage keeps it by this name)."""
    search_space: dict[str, SearchDimension] = Field(min_length=1)
    """LightGBM parameter -> its range (see the search dimension's settings)."""

    @field_validator("search_space")
    @classmethod
    def _seed_is_not_searched(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        if "random_state" in space:
            raise ValueError("random_state is set from split.seed, not searched")
        return space


class TrackingConfig(_Section):
    profile: Literal["local", "databricks"] = LOCAL_PROFILE
    """databricks: runs to the workspace, models to Unity Catalog (docs: Databricks)."""
    experiment_name: str = Field("churn", min_length=1)
    """The MLflow experiment runs go to."""
    experiment_description: str = ""
    """Shown on the experiment's page."""
    experiment_tags: dict[str, str] = {}
    """Set on the experiment."""
    model_name: str = Field("model", min_length=1)
    """Name of the logged model inside its run (`runs:/<run_id>/<model_name>`)."""
    registered_model_name: str = Field(min_length=1)
    """The registered model's name."""
    alias: Alias = "latest-model"
    """Moved to every version `train_basic` registers."""
    prediction_sample_rows: int = Field(20, ge=1)
    """Rows of `predictions/sample_predictions.csv`."""
    autolog: bool = False
    """MLflow's scikit-learn/LightGBM autologging of the model's fit, beside the explicit logging
    (see tracking.autologged)."""
    stale_after_hours: float = Field(24.0, gt=0)
    """A RUNNING run whose process cannot be checked from here (another host, none recorded) is
    taken for stale after this long (`register -P action=stale|reap`)."""


class PromotionConfig(_Section):
    """The `register` gate: a challenger becomes champion only if, on the same held-out
    rows, it reaches `threshold` and beats the champion by at least `min_improvement`."""

    metric: str = "roc_auc"
    """The gate's metric: roc_auc, pr_auc, log_loss, f1_score, ..."""
    threshold: float
    """The challenger's bar: a minimum, or a maximum for a lower-is-better metric (log_loss)."""
    min_improvement: float = Field(gt=0)
    """Over the champion, in the metric's units; MLflow's validation needs it positive."""
    holdout_path: Path | None = None
    """A table no candidate trained on, same columns as `data`; None: the test split of `data`."""
    champion_alias: Alias = "champion"
    """The alias of the model in service."""
    challenger_alias: Alias = "challenger"
    """The alias of the candidate under review."""
    previous_champion_alias: Alias = "previous-champion"
    """Where the champion goes when replaced: a rollback moves `champion` back to it."""

    @field_validator("metric")
    @classmethod
    def _metric_is_known(cls, metric: str) -> str:
        if metric not in GATE_METRICS:
            raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(GATE_METRICS)}")
        return metric

    @model_validator(mode="after")
    def _threshold_is_reachable(self) -> "PromotionConfig":
        # Every gate metric but log loss is a share, in [0, 1]; a bar outside can never
        # (or always) be met, which is a typo, not a policy.
        upper = None if self.metric == "log_loss" else 1.0
        if self.threshold < 0 or (upper is not None and self.threshold > upper):
            bounds = ">= 0" if upper is None else "between 0 and 1"
            raise ValueError(f"threshold for {self.metric} must be {bounds}, got {self.threshold}")
        return self

    @property
    def greater_is_better(self) -> bool:
        return GATE_METRICS[self.metric]

    @property
    def aliases(self) -> tuple[str, str, str]:
        """The aliases `register` moves."""
        return (self.champion_alias, self.challenger_alias, self.previous_champion_alias)


class TrustConfig(_Section):
    """What this project may load that could run code of its author's."""

    allow_pickle: bool = False
    """A pipeline saved with pickle or cloudpickle (not skops) runs code when it is loaded:
    `register` and `custom_model` refuse one unless you trust whoever logged it."""


class ComputeConfig(_Section):
    """CPU use of every entry point (see tabular_mlops.core.resources)."""

    threads: int | None = Field(None, ge=1)
    """Threads a step may use; None: the cores this process may run on (its CPU affinity, capped by
    a cgroup CPU quota). model.params.n_jobs sets LightGBM's per model."""

    def resolved_threads(self) -> int:
        return self.threads or available_cores()

    def model_threads(self, training_rows: int) -> int:
        """LightGBM threads of a model trained on `training_rows` rows (one on a small
        table: core.resources.model_threads)."""
        return model_threads(self.resolved_threads(), training_rows)
