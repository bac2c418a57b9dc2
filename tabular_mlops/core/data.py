"""A table checked to train a binary classifier (read by tabular_mlops.core.tables), its
model inputs typed, its target made 0/1; the train/test split and the held-out rows."""

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from tabular_mlops.core.errors import DataError
from tabular_mlops.core.sections import DataConfig, SplitConfig
from tabular_mlops.core.tables import read_table

logger = logging.getLogger(__name__)

# Tables kept by load_table: the training table and a holdout.
_TABLES_KEPT = 2
# An inferred categorical column with this many distinct values, mostly unique, is
# probably an identifier or free text: worth a warning.
_ID_LIKE_MIN_DISTINCT = 50
_ID_LIKE_MIN_UNIQUE_RATIO = 0.5


@dataclass(frozen=True)
class FeatureSpec:
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass(frozen=True)
class LabeledTable:
    """A table ready for training: typed model inputs, a 0/1 target and the row ids."""

    source: Path
    raw: pd.DataFrame  # the labelled rows as read, for `mlflow.log_input`
    features: pd.DataFrame  # numeric columns float64, categorical columns str
    target: pd.Series  # 1 for the positive class
    ids: pd.DataFrame
    spec: FeatureSpec
    positive_label: Any

    @cached_property
    def digest(self) -> str:
        """8 hex digits that identify the labelled rows as read: every row (MLflow's own
        dataset digest reads the first 10,000), the column names and their types."""
        md5 = hashlib.md5(usedforsecurity=False)
        md5.update(pd.util.hash_pandas_object(self.raw, index=False).to_numpy().tobytes())
        for name, dtype in self.raw.dtypes.items():
            md5.update(f"{name}:{dtype}\0".encode())
        return md5.hexdigest()[:8]


@dataclass(frozen=True)
class Holdout:
    """Labelled rows to compare models on, and the table they come from."""

    table: LabeledTable
    X: pd.DataFrame
    y: pd.Series
    is_test_split: bool  # True: the test split of the training table


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    ids_test: pd.DataFrame


def load_table(config: DataConfig) -> LabeledTable:
    """Read the configured file and validate it; every problem is a one-line DataError.

    A table this process read and checked before with the same settings, its files
    unchanged since (path, size, modification time), is reused: `main` and the steps it
    runs in its own process read and check it once. Do not modify what it returns.
    """
    try:
        files = sorted(config.path.rglob("*")) if config.path.is_dir() else [config.path]
        stats = [(str(file), file.stat().st_mtime_ns, file.stat().st_size) for file in files]
    except OSError:
        return prepare(_read_configured(config), config)  # read_table says what is wrong
    return _load_unchanged(str(config.path.resolve()), tuple(stats), config.model_dump_json())


@lru_cache(maxsize=_TABLES_KEPT)
def _load_unchanged(
    path: str, files: tuple[tuple[str, int, int], ...], config_json: str
) -> LabeledTable:
    config = DataConfig.model_validate_json(config_json)
    return prepare(_read_configured(config), config)


def _read_configured(config: DataConfig) -> pd.DataFrame:
    return read_table(config.path, config.sep, config.encoding)


def prepare(frame: pd.DataFrame, config: DataConfig) -> LabeledTable:
    """Check `frame` against `config` and turn it into model inputs and a 0/1 target."""
    source = config.path
    if config.target not in frame.columns:
        raise DataError(
            f"target column {config.target!r} not in {source} (columns: {_preview(frame.columns)})"
        )
    listed = {
        "data.id_columns": config.id_columns,
        "data.numeric_features": config.numeric_features or [],
        "data.categorical_features": config.categorical_features or [],
    }
    for setting, columns in listed.items():
        if missing := [column for column in columns if column not in frame.columns]:
            raise DataError(
                f"column(s) listed in {setting} not in {source}: {', '.join(missing)} "
                f"(columns: {_preview(frame.columns)})"
            )

    unlabeled = frame[config.target].isna()
    if unlabeled.any():
        logger.warning("dropping %d rows with no %r value", unlabeled.sum(), config.target)
        frame = frame.loc[~unlabeled]

    if config.positive_labels is not None:
        positive_label = _positive_labels(frame[config.target], config)
        positive = frame[config.target].isin(positive_label)
    else:
        positive_label = _positive_label(frame[config.target], config)
        positive = frame[config.target] == positive_label
    target = positive.astype("int64").rename(config.target)
    _check_size(target, positive_label, config)

    spec = _feature_spec(frame, config)
    features = pd.DataFrame(
        {column: _as_numeric(frame[column]) for column in spec.numeric}
        | {column: _as_category(frame[column]) for column in spec.categorical},
        index=frame.index,
    )
    logger.info(
        "%s: %d rows, %d numeric and %d categorical features, %.1f%% positive (%s=%r)",
        source,
        len(frame),
        len(spec.numeric),
        len(spec.categorical),
        100 * target.mean(),
        config.target,
        positive_label,
    )
    return LabeledTable(
        source=source,
        raw=frame,
        features=features,
        target=target,
        ids=frame[config.id_columns],
        spec=spec,
        positive_label=positive_label,
    )


def split(table: LabeledTable, config: SplitConfig) -> Split:
    """Seeded, stratified train/test split."""
    # Imported here: sklearn takes 1.2 s to import, which `main` need not pay to find
    # that its steps are cached.
    from sklearn.model_selection import train_test_split

    try:
        X_train, X_test, y_train, y_test, _, ids_test = train_test_split(
            table.features,
            table.target,
            table.ids,
            test_size=config.test_size,
            random_state=config.seed,
            stratify=table.target,
        )
    except ValueError as error:
        raise DataError(
            f"cannot split {table.source} with split.test_size={config.test_size}: {error}"
        ) from None
    return Split(X_train, X_test, y_train, y_test, ids_test)


def load_holdout(
    training: LabeledTable, config: DataConfig, split_config: SplitConfig, path: Path | None
) -> Holdout:
    """The rows at `path`, read and checked like the training table, or, with no path,
    the test split of `training` (the rows a model trained with `split_config` never saw)."""
    if path is None:
        parts = split(training, split_config)
        return Holdout(training, parts.X_test, parts.y_test, is_test_split=True)
    table = load_table(config.model_copy(update={"path": path}))
    return Holdout(table, table.features, table.target, is_test_split=False)


def _positive_label(target: pd.Series, config: DataConfig) -> Any:
    classes = sorted(target.unique().tolist(), key=str)
    if not classes:
        raise DataError(f"no labelled rows in {config.path} (target {config.target!r})")
    if len(classes) < 2:
        raise DataError(
            f"target {config.target!r} in {config.path} has a single class "
            f"({_preview(classes)}): a classifier needs two"
        )
    if len(classes) > 2:
        raise DataError(
            f"target {config.target!r} in {config.path} has {len(classes)} classes "
            f"({_preview(classes)}): this project trains binary classifiers; set "
            "data.positive_labels: [...] to the values that count as positive (one-vs-rest)"
        )
    label = config.positive_label
    if label is None:
        if set(classes) <= {0, 1}:  # also matches False/True and 0.0/1.0
            return next(value for value in classes if value == 1)
        raise DataError(
            f"set data.positive_label: target {config.target!r} holds {_preview(classes)}"
        )
    for value in classes:
        if _same_label(value, label):
            return value
    raise DataError(
        f"data.positive_label {label!r} is not a value of target {config.target!r} "
        f"({_preview(classes)})"
    )


def _positive_labels(target: pd.Series, config: DataConfig) -> list[Any]:
    """The target's values named by data.positive_labels (one-vs-rest); each must occur."""
    classes = sorted(target.unique().tolist(), key=str)
    found, missing = [], []
    for label in config.positive_labels or []:
        matches = [value for value in classes if _same_label(value, label)]
        if matches:
            found += matches
        else:
            missing.append(label)
    if missing:
        raise DataError(
            f"data.positive_labels {', '.join(map(repr, missing))} not values of target "
            f"{config.target!r} ({_preview(classes)})"
        )
    if len(set(found)) == len(classes):
        raise DataError(
            f"data.positive_labels name every class of target {config.target!r}: "
            "nothing is left for the negative class"
        )
    return found


def _same_label(value: Any, label: Any) -> bool:
    return value == label or str(value) == str(label) or _same_number(value, label)


def _same_number(value: Any, label: Any) -> bool:
    try:
        return float(value) == float(label)
    except (TypeError, ValueError):
        return False


def _check_size(target: pd.Series, positive_label: Any, config: DataConfig) -> None:
    if len(target) < config.min_rows:
        raise DataError(
            f"too few rows: {config.path} has {len(target)} labelled rows, "
            f"data.min_rows is {config.min_rows}"
        )
    smallest = int(min(target.sum(), len(target) - target.sum()))
    if smallest < config.min_rows_per_class:
        which = positive_label if target.sum() == smallest else f"not {positive_label!r}"
        raise DataError(
            f"too few rows of class {which!r}: {smallest} in {config.path}, "
            f"data.min_rows_per_class is {config.min_rows_per_class}"
        )


def _feature_spec(frame: pd.DataFrame, config: DataConfig) -> FeatureSpec:
    """Listed features as given; a list left out is inferred from the remaining columns."""
    listed = [*(config.numeric_features or []), *(config.categorical_features or [])]
    if empty := [column for column in listed if frame[column].isna().all()]:
        raise DataError(f"listed feature(s) with no values in {config.path}: {', '.join(empty)}")
    taken = {config.target, *config.id_columns, *listed}
    unlisted = [column for column in frame.columns if column not in taken]
    # An empty column carries nothing: never inferred as a feature.
    candidates = [column for column in unlisted if frame[column].notna().any()]

    numeric = config.numeric_features
    if numeric is None:
        numeric = [c for c in candidates if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = config.categorical_features
    if categorical is None:
        categorical = [c for c in candidates if _is_categorical_dtype(frame[c])]
        for column in categorical:
            _warn_if_id_like(frame[column])
    if ignored := [c for c in unlisted if c not in numeric and c not in categorical]:
        # Both lists given: leaving a column out was a choice (init's configs list it in a
        # comment); an inferred list that skips one may be a surprise.
        chosen = config.numeric_features is not None and config.categorical_features is not None
        log = logger.info if chosen else logger.warning
        log("not used as features: %s", ", ".join(ignored))
    if not numeric and not categorical:
        raise DataError(f"no feature columns in {config.path} besides the target and ids")
    return FeatureSpec(numeric=tuple(numeric), categorical=tuple(categorical))


def _is_categorical_dtype(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) and (
        pd.api.types.is_string_dtype(column)
        or pd.api.types.is_object_dtype(column)
        or isinstance(column.dtype, pd.CategoricalDtype)
    )


def _warn_if_id_like(column: pd.Series) -> None:
    distinct = column.nunique()
    if distinct >= _ID_LIKE_MIN_DISTINCT and distinct >= _ID_LIKE_MIN_UNIQUE_RATIO * len(column):
        logger.warning(
            "column %r has %d distinct values in %d rows: if it is an identifier, "
            "list it in data.id_columns",
            column.name,
            distinct,
            len(column),
        )


def _as_numeric(column: pd.Series) -> pd.Series:
    # float64 throughout: integer columns may hold missing values at serving time.
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    converted = pd.to_numeric(column, errors="coerce")
    bad = converted.isna() & column.notna()
    if bad.any():
        raise DataError(
            f"column {column.name!r} is listed as numeric but holds "
            f"{int(bad.sum())} non-numeric values such as {column[bad].iloc[0]!r}"
        )
    return converted.astype("float64")


def _as_category(column: pd.Series) -> pd.Series:
    # pandas' text dtype, NaN for missing; numbers used as codes become their text.
    return column.astype("str")


def _preview(values: Iterable[Any], limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(
        repr(value) if not isinstance(value, str) else value for value in values[:limit]
    )
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
