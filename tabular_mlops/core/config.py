"""The project's one config: a YAML file validated with pydantic, overridable per run
(the sections are in tabular_mlops.core.sections)."""

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import PrivateAttr, ValidationError, model_validator

from tabular_mlops.core.batch_sections import BatchConfig, MonitoringConfig
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.model_sections import (
    CustomModelConfig,
    DecisionConfig,
    ModelCodeConfig,
)
from tabular_mlops.core.redaction import is_secret_name, redact, redact_values
from tabular_mlops.core.sections import (
    DATABRICKS_PROFILE,
    ComputeConfig,
    DataConfig,
    ModelConfig,
    PromotionConfig,
    SplitConfig,
    TrackingConfig,
    TrustConfig,
    TuningConfig,
    _Section,
    unity_catalog_problem,
)

DEFAULT_CONFIG_PATH = Path("config/churn.yaml")


class ProjectConfig(_Section):
    data: DataConfig
    """The table: where it is, its target, its columns' roles."""
    split: SplitConfig = SplitConfig()
    """The train/test split."""
    model: ModelConfig = ModelConfig()
    """LightGBM's settings."""
    tuning: TuningConfig | None = None
    """The search of `track`, which needs it."""
    tracking: TrackingConfig
    """Where runs and models go, and what they are named."""
    promotion: PromotionConfig | None = None
    """The gate of `register`, which needs it."""
    custom_model: CustomModelConfig | None = None
    """The served model `custom_model` wraps, which needs it."""
    model_code: ModelCodeConfig = ModelCodeConfig()
    """The code shipped inside both models."""
    compute: ComputeConfig = ComputeConfig()
    """CPU use."""
    trust: TrustConfig = TrustConfig()
    """What may be loaded that runs its author's code."""
    batch: BatchConfig = BatchConfig()
    """`batch_score`."""
    monitoring: MonitoringConfig = MonitoringConfig()
    """`monitor`."""
    # Where the settings came from: the file, and the settings parameters replaced
    # (dotted key -> value); set by load_config, shown in run names and descriptions.
    _source: Path = PrivateAttr(DEFAULT_CONFIG_PATH)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def decision(self) -> DecisionConfig:
        """How decision thresholds are tuned: the custom model's settings, or the defaults."""
        return self.custom_model.decision if self.custom_model else DecisionConfig()

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
            ends: list[Any] = dimension.choices or [dimension.low, dimension.high]
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
        secrets masked (core.redaction)."""
        return _flatten(self.loggable())

    def loggable(self) -> dict[str, Any]:
        """The settings as logged (params, the config artifact): secrets masked."""
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
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        # Where, and what kind of problem; never the text there: the file named (by
        # `extends:`, say) may not be a config at all, and may hold secrets.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {kind}")
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
            secret = any(is_secret_name(str(part)) for part in item["loc"])
            plain = not isinstance(item["input"], dict) and not secret
            shown = f" (got {redact(repr(item['input']))})" if plain else ""
            problems.append(f"{where}: {message}{shown}" if where else message)
    return " ".join("; ".join(problems).splitlines())  # one line, whatever the YAML held


def _printable(key: str) -> str:
    return key if key.isprintable() else repr(key)
