"""A model's input rows as its callers hold them, turned into what the pipeline trained on.

MLflow checks a model's input against the input schema of its signature before the model
sees it, and MLflow 3.17 has no type for "a number, whole or not, maybe missing":

- a `double` column refuses int64 (unless every value is 0 or 1) and pandas' nullable
  `Int64`;
- a `long` column refuses float64, and `Int64` holding a missing value
  (mlflow/mlflow#6767 asks for nullable types; #25593, the `Int64` case).

`pd.read_csv` gives int64 for a whole-number column without gaps and float64 for one with
gaps, so whichever type the signature declares, one of the two tables is refused. The
models in this package are therefore logged with a signature that states their outputs
and request parameters only, and carry their input schema (MLflow's own JSON form) in
their `model_config`, where `InputSpec` checks it: numbers arrive as ints, floats,
nullable ints, booleans or numeric text; categories as text or numbers (read as their
text); a missing value is a missing value. What cannot be right is refused in one line,
as MLflow's enforcement would: a required column absent, text in a numeric column.
`tests/test_inputs.py` has a canary that fails once MLflow accepts both forms itself.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

# MLflow's schema types read as numbers (float64, as the pipeline trained on them), and
# the one read as text. The project declares `double` and `string`; a model logged
# elsewhere may say `long` or `boolean`.
NUMERIC = ("double", "float", "long", "integer", "boolean")
CATEGORICAL = "string"


@dataclass(frozen=True)
class InputColumn:
    name: str
    numeric: bool  # else categorical (text)
    required: bool  # the column must be present (its values may still be missing)


class InputSpec:
    """The input columns a model takes, in order, and how to read a request into them."""

    def __init__(self, columns: Sequence[InputColumn]) -> None:
        self.columns = list(columns)
        self.names = [column.name for column in self.columns]

    @classmethod
    def from_schema(cls, schema: Sequence[Mapping[str, Any]]) -> "InputSpec":
        """From MLflow's JSON form of a column-based schema (`Schema.to_dict()`)."""
        columns = []
        for spec in schema:
            if spec["type"] not in (*NUMERIC, CATEGORICAL):
                raise ValueError(f"input {spec['name']!r}: unsupported type {spec['type']!r}")
            columns.append(
                InputColumn(spec["name"], spec["type"] in NUMERIC, spec.get("required", True))
            )
        return cls(columns)

    def frame(self, data: Any) -> pd.DataFrame:
        """`data` (a DataFrame, a mapping of columns or a list of records) as the model's
        input: the declared columns in order, numbers as float64, categories as text, an
        absent optional column as missing values, other columns left out."""
        table = _as_table(data)
        if self._typed_already(table):
            return table
        return pd.DataFrame(self._read(table), index=table.index, copy=False)

    def arrays(self, data: Any) -> tuple[dict[str, Any], int]:
        """The same columns as arrays, and the number of rows: no DataFrame is built."""
        table = _as_table(data)
        return self._read(table), len(table)

    def _read(self, table: pd.DataFrame) -> dict[str, Any]:
        given = self._named(column_arrays(table))
        if missing := [c.name for c in self.columns if c.required and c.name not in given]:
            raise MlflowException.invalid_parameter_value(f"Model is missing inputs {missing}.")
        rows = len(table)
        return {
            column.name: (_numbers if column.numeric else _texts)(
                given.get(column.name), column.name, rows
            )
            for column in self.columns
        }

    def _typed_already(self, table: pd.DataFrame) -> bool:
        """Exactly the declared columns with the trained types: nothing to convert."""
        if table.columns.tolist() != self.names:
            return False
        return all(
            dtype == np.float64 if column.numeric else isinstance(dtype, pd.StringDtype)
            for column, dtype in zip(self.columns, table.dtypes, strict=True)
        )

    def _named(self, given: dict[str, Any]) -> dict[str, Any]:
        """Columns named 0, 1, ... (a Spark UDF given unnamed columns) take the declared
        names in order, as MLflow matches unnamed columns to a signature."""
        positions = [str(position) for position in range(len(given))]
        if list(given) != positions or len(positions) > len(self.names):
            return given
        return dict(zip(self.names, given.values(), strict=False))


def column_arrays(frame: pd.DataFrame) -> dict[str, Any]:
    """Column name (as text) -> its array. `frame[name]` builds a Series, about 17 us each
    on pandas 3, a third of what a one-row request may take: pandas' own column iterator
    hands out the arrays without it."""
    iterate = getattr(frame, "_iter_column_arrays", None)
    arrays = iterate() if iterate else (frame[column].array for column in frame.columns)
    return dict(zip(map(str, frame.columns.tolist()), arrays, strict=True))


def _as_table(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        columns = {str(name): _plain_values(values) for name, values in data.items()}
        if all(np.ndim(values) == 0 for values in columns.values()):
            return pd.DataFrame([columns])  # one row, as {"column": value, ...}
        return pd.DataFrame(columns)
    if isinstance(data, list) and all(isinstance(record, Mapping) for record in data):
        return pd.DataFrame([{str(k): _plain(v) for k, v in record.items()} for record in data])
    raise MlflowException.invalid_parameter_value(
        f"expected rows as a DataFrame, a mapping of columns or a list of records, "
        f"got {type(data).__name__}"
    )


def _plain(value: Any) -> Any:
    # The scoring server, parsing `inputs`/`instances` without a schema, wraps each value
    # in a 0-d numpy array.
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _plain_values(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.dtype == object:
        return [_plain(value) for value in values]
    return _plain(values)


def _numbers(values: Any, name: str, rows: int) -> np.ndarray:
    """float64, NaN for a missing value; text that is not a number is refused."""
    if values is None:
        return np.full(rows, np.nan)
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
        return np.asarray(values, dtype=np.float64)
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)  # Int64, Float64, boolean
    given = pd.Series(values, dtype=object)
    converted = pd.to_numeric(given, errors="coerce")
    if (wrong := converted.isna() & given.notna()).any():
        raise MlflowException.invalid_parameter_value(
            f"Incompatible input types for column {name}: {given[wrong].iloc[0]!r} is not a number."
        )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _texts(values: Any, name: str, rows: int) -> Any:
    """Text as training read it (`astype("str")`), a missing value kept missing."""
    if values is None:
        return pd.array([None] * rows, dtype="str")
    if isinstance(values.dtype, pd.StringDtype):
        return values
    return pd.array(values, dtype=object).astype("str")
