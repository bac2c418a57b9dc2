"""Request rows to the booster's input matrix, without the sklearn pipeline at call time.

The pipeline's `ColumnTransformer` (numeric columns passed through, categorical ones
imputed then one-hot encoded) costs 7-10 ms on one row, nearly all of it sklearn's and
pandas' per-call checks: the trees take 0.05-0.2 ms. The same mappings, read once from the
fitted pipeline, encode a row in about 0.1 ms. The results are the pipeline's
(tests compare them on the whole test split).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from tabular_custom_model.inputs import column_arrays

# Codes of a categorical value that has no one-hot column; both encode as all zeros, as
# the pipeline's OneHotEncoder(handle_unknown="ignore") does.
UNSEEN = -1  # a category training never saw: flagged in the answer
NULL_NEVER_SEEN = -2  # a null in a column that had none in training: a missing value
# Up to this many rows a Python loop is faster than pandas' vectorised calls, whose fixed
# cost per call (tens of microseconds) would dominate a single-row request.
_LOOP_ROWS = 32


class UnsupportedPipelineError(ValueError):
    """The pipeline's preprocessing is not one this encoder reproduces exactly."""


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    offset: int  # its first one-hot column in the encoded matrix
    codes: dict[Any, int]  # category -> its one-hot column, counted from `offset`
    null_code: int  # the code of a null: the imputer's fill category, or NULL_NEVER_SEEN


@dataclass(frozen=True)
class Encoded:
    matrix: np.ndarray  # float64, rows x encoded columns: what the booster predicts on
    # Per row, the input columns holding a category training never saw; None if none do.
    unseen: list[list[str] | None]


class FeatureEncoder:
    def __init__(self, numeric: dict[str, int], categorical: list[CategoricalColumn], width: int):
        self._numeric = numeric  # input column -> its column in the encoded matrix
        self._categorical = categorical
        self.width = width
        self.input_columns = [*numeric, *(column.name for column in categorical)]

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> "FeatureEncoder":
        """The mappings of `Pipeline([("preprocess", ColumnTransformer), classifier])`,
        whose transformers pass numeric columns through or impute (constant) and one-hot
        encode categorical ones, as `tabular_mlops.core.pipeline.build_pipeline` builds it."""
        preprocess = pipeline.steps[0][1] if len(pipeline.steps) == 2 else None
        if not isinstance(preprocess, ColumnTransformer):
            raise UnsupportedPipelineError("expected Pipeline([ColumnTransformer, classifier])")
        numeric: dict[str, int] = {}
        categorical: list[CategoricalColumn] = []
        width = 0
        for name, transformer, columns in preprocess.transformers_:
            if transformer == "drop" or len(columns) == 0:
                continue
            if not all(isinstance(column, str) for column in columns):
                raise UnsupportedPipelineError(f"transformer {name!r} selects columns by position")
            if _is_passthrough(transformer):
                numeric |= {column: width + i for i, column in enumerate(columns)}
                width += len(columns)
            else:
                fill, encoder = _imputed_one_hot(name, transformer)
                for column, categories in zip(columns, encoder.categories_, strict=True):
                    codes = {category: i for i, category in enumerate(categories.tolist())}
                    null_code = codes.get(fill, NULL_NEVER_SEEN)
                    categorical.append(CategoricalColumn(column, width, codes, null_code))
                    width += len(categories)
        if width != pipeline.steps[-1][1].n_features_in_:
            raise UnsupportedPipelineError("the encoded width is not what the classifier takes")
        return cls(numeric, categorical, width)

    @property
    def numeric_columns(self) -> list[str]:
        return list(self._numeric)

    @property
    def categorical_columns(self) -> list[CategoricalColumn]:
        return list(self._categorical)

    def encoded_column_sources(self) -> list[str]:
        """For each encoded column, the input column it comes from."""
        sources = [""] * self.width
        for column, position in self._numeric.items():
            sources[position] = column
        for encoded in self._categorical:
            sources[encoded.offset : encoded.offset + len(encoded.codes)] = [encoded.name] * len(
                encoded.codes
            )
        return sources

    def encode(self, frame: pd.DataFrame) -> Encoded:
        return self.encode_arrays(column_arrays(frame), len(frame))

    def encode_arrays(self, arrays: Mapping[str, Any], rows: int) -> Encoded:
        """The same from the input columns' arrays (see inputs.InputSpec.arrays)."""
        absent = [column for column in self.input_columns if column not in arrays]
        if absent:
            raise MlflowException.invalid_parameter_value(f"missing input columns: {absent}")
        matrix = np.zeros((rows, self.width))
        for column, position in self._numeric.items():
            matrix[:, position] = _floats(arrays[column], column)
        unseen: list[list[str] | None] = [None] * rows
        place = _place_looped if rows <= _LOOP_ROWS else _place_vectorised
        for categorical in self._categorical:
            for row in place(matrix, arrays[categorical.name], categorical):
                unseen[row] = [*(unseen[row] or []), categorical.name]
        return Encoded(matrix, unseen)


def _is_passthrough(transformer: Any) -> bool:
    # sklearn stores "passthrough" as an identity FunctionTransformer once fitted.
    if isinstance(transformer, FunctionTransformer):
        return transformer.func is None and transformer.inverse_func is None
    return transformer == "passthrough"


def _imputed_one_hot(name: str, transformer: Any) -> tuple[Any, OneHotEncoder]:
    """The fill value of the constant imputers before the encoder, and the encoder."""
    steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else []
    encoder = steps[-1] if steps else None
    imputers = steps[:-1]
    fills = {imputer.fill_value for imputer in imputers if isinstance(imputer, SimpleImputer)}
    if (
        not isinstance(encoder, OneHotEncoder)
        or encoder.handle_unknown != "ignore"
        or encoder.drop is not None
        or getattr(encoder, "infrequent_categories_", None) is not None
        or len(fills) != 1
        or any(not isinstance(i, SimpleImputer) or i.strategy != "constant" for i in imputers)
    ):
        raise UnsupportedPipelineError(
            f"transformer {name!r} is neither a passthrough nor constant imputers followed "
            "by OneHotEncoder(handle_unknown='ignore')"
        )
    return fills.pop(), encoder


def _floats(values: Any, column: str) -> np.ndarray:
    try:
        if isinstance(values, np.ndarray):
            return values.astype(np.float64, copy=False)  # None becomes NaN
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise MlflowException.invalid_parameter_value(
            f"column {column!r} must be numeric: {error}"
        ) from None


def _place_looped(matrix: np.ndarray, values: Any, column: CategoricalColumn) -> list[int]:
    """Set the column's one-hot cells row by row; return the rows whose category is unseen."""
    unseen = []
    for row, value in enumerate(_python_list(values)):
        code = column.codes.get(value)
        if code is None:
            if not pd.isna(value):
                unseen.append(row)
                continue
            code = column.null_code
        if code >= 0:
            matrix[row, column.offset + code] = 1.0
    return unseen


def _place_vectorised(matrix: np.ndarray, values: Any, column: CategoricalColumn) -> np.ndarray:
    """The same in a few array operations, for larger batches."""
    found, uniques = pd.factorize(values)  # nulls (None, NaN, NA) get -1: the last code
    listed = [column.codes.get(value, UNSEEN) for value in uniques] + [column.null_code]
    codes = np.asarray(listed, dtype=np.intp)
    hot = codes >= 0
    # A row without a one-hot cell here writes 0.0 into the column's first cell, which
    # is 0.0 anyway: one unmasked write covers every row.
    cells = (
        np.arange(len(found)) * matrix.shape[1] + (column.offset + np.where(hot, codes, 0))[found]
    )
    matrix.ravel()[cells] = hot[found]
    return np.flatnonzero(codes[found] == UNSEEN) if UNSEEN in codes else np.empty(0, np.intp)


def _python_list(values: Any) -> list[Any]:
    # Arrow-backed strings (pandas 3's default) are slow to iterate one by one.
    to_arrow = getattr(values, "__arrow_array__", None)
    return to_arrow().to_pylist() if to_arrow else values.tolist()
