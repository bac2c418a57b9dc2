"""The project's one config: a YAML file validated with pydantic, overridable per run."""

import codecs
import copy
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tabular_mlops.errors import ConfigError
from tabular_mlops.redaction import redact_values
from tabular_mlops.resources import available_cores

DEFAULT_CONFIG_PATH = Path("config/churn.yaml")

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
# test metrics at it (tabular_mlops.evaluation.log_f1_threshold_metrics).
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
LOCAL_PROFILE, DATABRICKS_PROFILE = "local", "databricks"
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
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


Label = str | int | float | bool


class DataConfig(_Section):
    # A CSV or Parquet file, or a folder of Parquet files (hive-partitioned too).
    path: Path
    sep: str | None = Field(None, min_length=1)  # CSV separator; None: inferred (, ; tab |)
    encoding: str = "utf-8"  # of a CSV file; latin-1 or cp1252 for many older exports
    target: str = Field(min_length=1)
    # Value of `target` that counts as the positive class; may be omitted for 0/1 or bool targets.
    positive_label: Label | None = None
    # Or several values (a multi-class target): these are positive, all others negative.
    positive_labels: list[Label] | None = Field(None, min_length=1)
    id_columns: list[str] = []
    # None: inferred from the table's dtypes (numbers are numeric, the rest categorical).
    numeric_features: list[str] | None = None
    categorical_features: list[str] | None = None
    min_rows: int = Field(100, ge=10)
    min_rows_per_class: int = Field(10, ge=2)

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
    seed: int = 42


class ModelConfig(_Section):
    """LightGBM settings; `params` takes any other LGBMClassifier or LightGBM parameter."""

    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.03, gt=0, le=1)
    num_leaves: int = Field(15, ge=2)
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def _params_are_lightgbm_parameters(cls, params: dict[str, Any]) -> dict[str, Any]:
        # Imported here: tabular_mlops.pipeline builds its estimator from ModelConfig.
        from tabular_mlops.pipeline import MANAGED_PARAMS, unknown_lightgbm_params

        if clash := sorted(set(params) & MANAGED_PARAMS):
            raise ValueError(f"set {', '.join(clash)} outside model.params (it is managed)")
        if unknown := unknown_lightgbm_params(params):
            raise ValueError(f"unknown LightGBM parameter(s): {', '.join(unknown)}")
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
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float | bool] | None = None

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


class TuningConfig(_Section):
    """Optuna search over LightGBM parameters, scored by cross-validated ROC AUC."""

    n_trials: int = Field(20, ge=1)
    timeout_seconds: float | None = Field(None, gt=0)
    n_jobs: int = Field(1, ge=1)  # trials run in parallel threads (1: reproducible)
    cv_folds: int = Field(5, ge=2, le=20)
    # Within a fold, LightGBM stops adding trees once its log loss on a part of the fold's
    # training rows (`early_stopping_fraction`) has not improved for this many trees;
    # `n_estimators` is the ceiling. None: every fold trains `n_estimators` trees.
    early_stopping_rounds: int | None = Field(50, ge=1)
    early_stopping_fraction: float = Field(0.1, gt=0, lt=0.5)
    # After each fold, a trial whose running CV ROC AUC cannot win stops ("pruned"):
    # median: below the median of earlier trials after as many folds; top_quartile: below
    # their top quarter; none: every trial runs every fold.
    pruner: Literal["median", "top_quartile", "none"] = "median"
    pruner_startup_trials: int = Field(5, ge=0)  # trials that are never pruned, first
    # Optuna RDB URL (postgresql://...) shared by several `track` processes; None: in memory.
    storage: str | None = None
    study_name: str = Field("churn-lightgbm", min_length=1)
    search_space: dict[str, SearchDimension] = Field(min_length=1)

    @field_validator("search_space")
    @classmethod
    def _dimensions_are_lightgbm_parameters(
        cls, space: dict[str, SearchDimension]
    ) -> dict[str, SearchDimension]:
        from tabular_mlops.pipeline import unknown_lightgbm_params

        if "random_state" in space:
            raise ValueError("random_state is set from split.seed, not searched")
        if unknown := unknown_lightgbm_params(space):
            raise ValueError(f"unknown LightGBM parameter(s): {', '.join(unknown)}")
        return space


class TrackingConfig(_Section):
    profile: Literal["local", "databricks"] = LOCAL_PROFILE
    experiment_name: str = Field("churn", min_length=1)
    experiment_description: str = ""
    experiment_tags: dict[str, str] = {}
    # Name of the logged model inside its run (`runs:/<run_id>/<model_name>`).
    model_name: str = Field("model", min_length=1)
    registered_model_name: str = Field(min_length=1)
    # Moved to every version `train_basic` registers.
    alias: Alias = "latest-model"
    prediction_sample_rows: int = Field(20, ge=1)
    # MLflow's scikit-learn/LightGBM autologging of the model's fit, beside the explicit
    # logging (see tracking.autologged).
    autolog: bool = False
    # A RUNNING run whose process cannot be checked from here (another host, none
    # recorded) is taken for stale after this long (`register -P action=stale|reap`).
    stale_after_hours: float = Field(24.0, gt=0)


class PromotionConfig(_Section):
    """The `register` gate: a challenger becomes champion only if, on the same held-out
    rows, it reaches `threshold` and beats the champion by at least `min_improvement`."""

    metric: str = "roc_auc"
    # The challenger's bar: a minimum, or a maximum for a lower-is-better metric (log_loss).
    threshold: float
    # Over the champion, in the metric's units; MLflow's validation needs it positive.
    min_improvement: float = Field(gt=0)
    # A table no candidate trained on, same columns as `data`; None: the test split of `data`.
    holdout_path: Path | None = None
    champion_alias: Alias = "champion"
    challenger_alias: Alias = "challenger"
    # Where the champion goes when replaced: a rollback moves `champion` back to it.
    previous_champion_alias: Alias = "previous-champion"

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


class CostMatrix(_Section):
    """Cost of each outcome of a decision, in any one unit (money, say)."""

    false_positive: float = Field(1.0, ge=0)
    false_negative: float = Field(1.0, ge=0)
    true_positive: float = Field(0.0, ge=0)
    true_negative: float = Field(0.0, ge=0)


class DecisionConfig(_Section):
    """How the custom model's decision threshold is tuned, on out-of-fold predictions of
    the training split (rows the test split's metrics never see)."""

    objective: Literal["f1", "cost"] = "f1"  # maximise F1, or minimise the expected cost
    costs: CostMatrix = CostMatrix()
    cv_folds: int = Field(5, ge=2, le=20)


class CustomModelConfig(_Section):
    """The pyfunc wrapper served in front of the registered pipeline."""

    registered_model_name: str = Field(min_length=1)
    # Set once the wrapped model passes its checks.
    alias: Alias = "champion"
    # The pipeline wrapped by default: the first of these aliases that exists.
    source_aliases: list[Alias] = Field(["champion", "latest-model"], min_length=1)
    decision: DecisionConfig = DecisionConfig()
    # Probabilities below the first cut get the first label, and so on.
    risk_band_cuts: list[float] = [0.3, 0.6]
    risk_band_labels: list[str] = ["low", "medium", "high"]
    top_k: int = Field(3, ge=1)  # reasons returned per row when asked (`explain`)
    max_rows: int = Field(10_000, ge=1)  # per request; larger ones are refused (HTTP 400)
    # `mlflow models predict --env-manager` of the isolated-environment check; none skips it.
    check_env_manager: Literal["uv", "virtualenv", "conda", "none"] = "uv"
    # A check process that has not answered by then is a failed check (and is stopped).
    check_timeout_seconds: float = Field(900, gt=0)

    @model_validator(mode="after")
    def _bands_fit(self) -> "CustomModelConfig":
        cuts = self.risk_band_cuts
        if any(not 0 < cut < 1 for cut in cuts) or any(a >= b for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"risk_band_cuts must rise strictly within (0, 1), got {cuts}")
        if len(self.risk_band_labels) != len(cuts) + 1:
            raise ValueError(
                f"{len(cuts)} risk_band_cuts make {len(cuts) + 1} bands, but "
                f"{len(self.risk_band_labels)} risk_band_labels are given"
            )
        return self


class ModelCodeConfig(_Section):
    """The code that ships inside both registered models (`custom_model/`): built into a
    wheel, carried in each model's `code/` directory."""

    package_dir: Path = Path("custom_model")
    wheel_dir: Path = Path("wheels")


class TrustConfig(_Section):
    """What this project may load that could run code of its author's."""

    # A pipeline saved with pickle or cloudpickle (not skops) runs code when it is loaded:
    # `register` and `custom_model` refuse one unless you trust whoever logged it.
    allow_pickle: bool = False


class ComputeConfig(_Section):
    """CPU use of every entry point (see tabular_mlops.resources)."""

    # Threads a step may use; None: the cores this process may run on (its CPU affinity,
    # capped by a cgroup CPU quota). model.params.n_jobs sets LightGBM's per model.
    threads: int | None = Field(None, ge=1)

    def resolved_threads(self) -> int:
        return self.threads or available_cores()


class SparkConfig(_Section):
    """The Spark session of `batch_score --engine spark`."""

    # None: a local session on the cores `compute.threads` allows (`local[N]`); a cluster's
    # master URL (spark://host:7077, yarn, ...) to run there.
    master: str | None = None
    conf: dict[str, str] = {}  # any Spark setting, e.g. spark.executor.memory: 4g


class BatchConfig(_Section):
    """The `batch_score` entry point: a table in, a Parquet folder of answers out."""

    input: Path | None = None  # a CSV or Parquet file, or a folder of Parquet parts
    output: Path | None = None  # the Parquet folder written; it must not exist yet
    # None: the custom model's alias, models:/<custom_model.registered_model_name>@<alias>.
    model_uri: str | None = None
    engine: Literal["pandas", "spark"] = "pandas"
    # Rows scored at a time (and per Arrow batch under Spark); at most the model's max_rows.
    batch_rows: int = Field(10_000, ge=1)
    rows_per_file: int = Field(1_000_000, ge=1)  # pandas engine: rows per Parquet part
    explain: bool = False  # add each row's top reasons
    threshold: float | None = Field(None, ge=0, le=1)  # None: the model's tuned threshold
    overwrite: bool = False  # replace an existing output folder
    spark: SparkConfig = SparkConfig()


class ProjectConfig(_Section):
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    tuning: TuningConfig | None = None  # needed by the `track` entry point only
    tracking: TrackingConfig
    promotion: PromotionConfig | None = None  # needed by the `register` entry point only
    custom_model: CustomModelConfig | None = None  # needed by `custom_model` only
    model_code: ModelCodeConfig = ModelCodeConfig()
    compute: ComputeConfig = ComputeConfig()
    trust: TrustConfig = TrustConfig()
    batch: BatchConfig = BatchConfig()
    # Where the settings came from: the file, and the settings parameters replaced
    # (dotted key -> value); set by load_config, shown in run names and descriptions.
    _source: Path = PrivateAttr(DEFAULT_CONFIG_PATH)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> Path:
        return self._source

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self._overrides)

    @model_validator(mode="after")
    def _aliases_are_distinct(self) -> "ProjectConfig":
        aliases = [self.tracking.alias]
        if self.promotion:
            promotion = self.promotion
            aliases += [
                promotion.champion_alias,
                promotion.challenger_alias,
                promotion.previous_champion_alias,
            ]
        if len(set(aliases)) < len(aliases):
            raise ValueError(f"aliases must differ, got {', '.join(aliases)}")
        return self

    @model_validator(mode="after")
    def _names_fit_the_profile(self) -> "ProjectConfig":
        if self.tracking.profile != DATABRICKS_PROFILE:
            return self
        experiment = self.tracking.experiment_name
        if not experiment.startswith("/"):
            raise ValueError(
                "tracking.experiment_name must be a workspace path on Databricks "
                f"(/Users/you@example.com/churn, /Shared/churn), got {experiment!r}"
            )
        names = {"tracking.registered_model_name": self.tracking.registered_model_name}
        if self.custom_model:
            names["custom_model.registered_model_name"] = self.custom_model.registered_model_name
        for setting, name in names.items():
            if problem := unity_catalog_problem(name):
                raise ValueError(f"{setting} on Databricks (Unity Catalog): {problem}")
        return self

    @model_validator(mode="after")
    def _search_space_fits_the_model(self) -> "ProjectConfig":
        # Both ends of every range must make a valid model, so no trial fails half-way.
        for name, dimension in (self.tuning.search_space if self.tuning else {}).items():
            ends = dimension.choices or [dimension.low, dimension.high]
            for value in ends:
                if dimension.type == "int":
                    value = int(value)
                try:
                    self.model.with_values({name: value})
                except ValidationError as error:
                    raise ValueError(
                        f"tuning.search_space.{name} reaches {value!r}: {_one_line(error)}"
                    ) from None
        return self

    def require_tuning(self) -> TuningConfig:
        if self.tuning is None:
            raise ConfigError("this entry point needs a `tuning` section in the config")
        return self.tuning

    def require_promotion(self) -> PromotionConfig:
        if self.promotion is None:
            raise ConfigError("this entry point needs a `promotion` section in the config")
        return self.promotion

    def require_custom_model(self) -> CustomModelConfig:
        if self.custom_model is None:
            raise ConfigError("this entry point needs a `custom_model` section in the config")
        return self.custom_model

    def flat(self) -> dict[str, Any]:
        """Settings as dotted keys (`model.n_estimators`), the form logged as run params;
        URL passwords masked."""
        return _flatten(self.loggable())

    def loggable(self) -> dict[str, Any]:
        """The settings as logged (params, the config artifact): URL passwords masked."""
        return redact_values(self.model_dump(mode="json"))


def load_config(path: Path | str, overrides: Mapping[str, Any] | None = None) -> ProjectConfig:
    """Read `path`, apply dotted-key `overrides` (None values skipped) and validate.

    A config may start with `extends: other.yaml` (relative to its own folder): it then
    holds only what it changes in that one, section by section (a list is replaced)."""
    path = Path(path)
    raw = copy.deepcopy(_read_extended(path, seen=()))
    for dotted_key, value in (overrides or {}).items():
        if value is not None:
            try:
                _set_dotted(raw, dotted_key, value)
            except TypeError as error:
                raise ConfigError(f"invalid config {path}: {error}") from None
    try:
        config = ProjectConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {path}: {_one_line(error)}") from None
    config._source = path
    config._overrides = {
        key: value for key, value in (overrides or {}).items() if value is not None
    }
    return config


def _read_extended(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The config at `path`, merged onto the one it extends (if any)."""
    if path.resolve() in seen:
        chain = " -> ".join(str(step) for step in (*seen, path.resolve()))
        raise ConfigError(f"config files extend each other in a circle: {chain}")
    raw = _read_mapping(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"invalid config {path}: extends: must be a file name, got {base!r}")
    return _merged(_read_extended(path.parent / base, (*seen, path.resolve())), raw)


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"config file {path} cannot be read: {reason}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {raw!r}")
    return raw


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a section left empty in the YAML (`model:`) is an
    empty mapping. Anything else where a mapping belongs is a TypeError saying where."""
    *parents, leaf = dotted_key.split(".")
    for depth, key in enumerate(parents):
        if tree.get(key) is None:
            tree[key] = {}
        tree = tree[key]
        if not isinstance(tree, dict):
            where = ".".join(parents[: depth + 1])
            raise TypeError(
                f"{where}: must be a mapping to set {dotted_key}, got {type(tree).__name__}"
            )
    tree[leaf] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(_printable(str(part)) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{where}: required")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown setting")
        else:
            shown = f" (got {item['input']!r})" if not isinstance(item["input"], dict) else ""
            problems.append(f"{where}: {message}{shown}" if where else message)
    return " ".join("; ".join(problems).splitlines())  # one line, whatever the YAML held


def _printable(key: str) -> str:
    return key if key.isprintable() else repr(key)
