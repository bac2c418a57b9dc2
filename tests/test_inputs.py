"""How the project's models read input rows (tabular_custom_model.inputs): every form a
caller holds a table in, the one-line refusals, and the canary on MLflow's enforcement
that tells when the models may declare their inputs in the signature again."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, Schema
from tabular_custom_model.inputs import InputSpec

SCHEMA = Schema(
    [
        ColSpec("double", "tenure"),
        ColSpec("double", "charges", required=False),
        ColSpec("string", "contract"),
    ]
)
SPEC = InputSpec.from_schema(SCHEMA.to_dict())
EXPECTED = pd.DataFrame(
    {
        "tenure": [1.0, np.nan, 30.0],
        "charges": [np.nan, np.nan, np.nan],
        "contract": pd.array(["Month", None, "2"], dtype="str"),
    }
)


def table(tenure: object, contract: object = ("Month", None, 2)) -> pd.DataFrame:
    return pd.DataFrame({"tenure": tenure, "contract": list(contract)})


@pytest.mark.parametrize(
    "rows",
    [
        table(pd.array([1, None, 30], dtype="Int64")),  # nullable Int64
        table([1.0, np.nan, 30.0]),  # float64, as pd.read_csv reads a column with gaps
        table(pd.array([1.0, None, 30.0], dtype="Float64")),
        table(pd.Series([1, None, 30], dtype=object)),  # Python ints and None
        table(["1", None, "30.0"]),  # numbers as text (JSON, a CSV read as text)
        # The scoring server's `inputs`, without a schema: columns of 0-d arrays, or records.
        {
            "tenure": np.array([np.array(1), np.array(None), np.array(30)], dtype=object),
            "contract": np.array(["Month", None, "2"], dtype=object),
        },
        [
            {"tenure": np.array(1), "contract": np.array("Month")},
            {"tenure": np.array(None, dtype=object), "contract": np.array(None, dtype=object)},
            {"tenure": np.array(30), "contract": np.array(2)},
        ],
        # A Spark UDF's unnamed columns, in the declared order.
        pd.DataFrame(
            {"0": [1, None, 30], "1": [np.nan, np.nan, np.nan], "2": ["Month", None, "2"]}
        ),
    ],
    ids=["Int64", "float64", "Float64", "object", "text", "columns", "records", "positional"],
)
def test_every_form_of_a_table_reads_as_training_did(rows: object) -> None:
    pd.testing.assert_frame_equal(SPEC.frame(rows), EXPECTED)


def test_whole_numbers_and_booleans_become_floats_and_extra_columns_go() -> None:
    rows = pd.DataFrame(
        {"customer_id": [7, 8], "tenure": [1, 30], "charges": [True, False], "contract": ["a", "b"]}
    )
    read = SPEC.frame(rows)
    assert list(read.columns) == ["tenure", "charges", "contract"]
    assert read["tenure"].tolist() == [1.0, 30.0]
    assert read["charges"].tolist() == [1.0, 0.0]
    assert read["tenure"].dtype == np.float64


def test_rows_typed_as_trained_are_not_copied() -> None:
    assert SPEC.frame(EXPECTED) is EXPECTED


def test_one_row_as_a_mapping_of_values() -> None:
    read = SPEC.frame({"tenure": 3, "contract": "Month"})
    assert (read["tenure"].tolist(), read["contract"].tolist()) == ([3.0], ["Month"])
    assert read["charges"].isna().all()


def test_the_index_is_kept() -> None:
    rows = table([1, 2, 3]).set_axis([10, 20, 30])
    assert SPEC.frame(rows).index.tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            table(["1", "abc", 3]),
            "Incompatible input types for column tenure: 'abc' is not a number.",
        ),
        (table(["1", "", 3]), "Incompatible input types for column tenure: '' is not a number."),
        (pd.DataFrame({"contract": ["a"]}), "Model is missing inputs ['tenure']."),
        (pd.DataFrame({"tenure": [1]}), "Model is missing inputs ['contract']."),
        (5, "expected rows as a DataFrame, a mapping of columns or a list of records, got int"),
    ],
)
def test_what_cannot_be_right_is_refused_in_one_line(rows: object, message: str) -> None:
    with pytest.raises(MlflowException) as refused:
        SPEC.frame(rows)
    assert refused.value.message == message
    assert refused.value.get_http_status_code() == 400  # the scoring server's answer


def test_a_type_the_models_never_declare_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="unsupported type 'datetime'"):
        InputSpec.from_schema([{"type": "datetime", "name": "when"}])


def test_canary_mlflow_still_refuses_one_of_the_two_forms_of_a_whole_number_column() -> None:
    """Why the models carry their input schema in `model_config` (inputs.py): MLflow 3.17's
    `double` refuses int64 and its `long` refuses float64 with gaps. When this fails, MLflow
    accepts both: declare the inputs in the signature again and drop InputSpec's reading."""
    whole = pd.DataFrame({"tenure": [1, 30]})
    gaps = pd.DataFrame({"tenure": [1.0, np.nan]})
    nullable = pd.DataFrame({"tenure": pd.array([1, None], dtype="Int64")})
    for rows, declared in ((whole, "double"), (gaps, "long"), (nullable, "double")):
        with pytest.raises(MlflowException, match=r"Incompatible input types|Failed to enforce"):
            mlflow.models.validate_schema(rows, Schema([ColSpec(declared, "tenure")]))
