"""The custom model's own encoder against the sklearn pipeline it replaces at serving time."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tabular_custom_model.encoding import FeatureEncoder, UnsupportedPipelineError

from tabular_mlops.core import data
from tabular_mlops.core.config import load_config
from tabular_mlops.core.pipeline import build_pipeline
from tests.conftest import CHURN_CONFIG, CHURN_CSV, mixed_table, write_config


@dataclass(frozen=True)
class Fitted:
    pipeline: Pipeline
    encoder: FeatureEncoder
    rows: pd.DataFrame  # held-out rows, with gaps added


def fitted_on(config_path: str, overrides: dict[str, str]) -> Fitted:
    config = load_config(config_path, overrides)
    table = data.load_table(config.data)
    parts = data.split(table, config.split)
    pipeline = build_pipeline(table.spec, config.model, config.split.seed, threads=1)
    pipeline.fit(parts.X_train, parts.y_train)
    rows = parts.X_test.reset_index(drop=True)
    # Nulls as files (NaN) and JSON requests (None) bring them, in every column.
    rng = np.random.default_rng(0)
    for column in rows.columns:
        gaps = rng.random(len(rows)) < 0.05
        rows[column] = rows[column].astype(object).where(~gaps, rng.choice([None, np.nan]))
    rows = rows.astype({column: "float64" for column in table.spec.numeric})
    return Fitted(pipeline, FeatureEncoder.from_pipeline(pipeline), rows)


@pytest.fixture(scope="module", params=["churn", "mixed"])
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    if request.param == "churn":  # the shipped table and model: no categorical nulls
        return fitted_on(CHURN_CONFIG, {"data.path": str(CHURN_CSV)})
    # bools, ints and a categorical column with nulls in training
    directory = tmp_path_factory.mktemp("mixed")
    mixed_table(400).to_csv(directory / "mixed.csv", index=False)
    settings = {"data": {"path": str(directory / "mixed.csv"), "target": "label"}}
    settings["data"] |= {"positive_label": 1, "id_columns": ["id"], "min_rows": 50}
    settings["tracking"] = {"registered_model_name": "mixed"}
    config = write_config(directory / "mixed.yaml", settings, model={"n_estimators": 40})
    return fitted_on(str(config), {})


def in_chunks(encoder: FeatureEncoder, rows: pd.DataFrame, size: int) -> np.ndarray:
    return np.vstack(
        [encoder.encode(rows.iloc[i : i + size]).matrix for i in range(0, len(rows), size)]
    )


@pytest.mark.parametrize("batch", [1, 7, 10_000], ids=["single-rows", "small", "whole-split"])
def test_encodes_and_predicts_exactly_as_the_pipeline(fitted: Fitted, batch: int) -> None:
    rows = fitted.rows if batch > 1 else fitted.rows.head(200)  # row by row is slow
    expected = fitted.pipeline[:-1].transform(rows)
    encoded = in_chunks(fitted.encoder, rows, batch)
    np.testing.assert_array_equal(encoded, expected)
    booster = fitted.pipeline[-1].booster_
    # The same bits, not just close: README says "to the last bit".
    np.testing.assert_array_equal(
        booster.predict(encoded), fitted.pipeline.predict_proba(rows)[:, 1]
    )


def test_the_mixed_table_has_a_null_category_and_the_churn_one_has_none(fitted: Fitted) -> None:
    # Both branches of null handling are covered: a learned `__missing__` category, or none.
    null_codes = {column.null_code >= 0 for column in fitted.encoder.categorical_columns}
    assert null_codes == ({True, False} if "region" in fitted.rows else {False})


@pytest.mark.parametrize("copies", [1, 40], ids=["looped", "vectorised"])
def test_unseen_categories_are_flagged_per_row_and_encoded_as_the_pipeline_does(
    fitted: Fitted, copies: int
) -> None:
    columns = [column.name for column in fitted.encoder.categorical_columns]
    rows = fitted.rows.head(3).copy()
    rows.loc[0, columns[0]] = "never-seen"
    rows.loc[2, columns] = "never-seen"
    rows = pd.concat([rows] * copies, ignore_index=True)
    encoded = fitted.encoder.encode(rows)
    assert encoded.unseen[:3] == [[columns[0]], None, columns]
    assert encoded.unseen == encoded.unseen[:3] * copies
    np.testing.assert_array_equal(encoded.matrix, fitted.pipeline[:-1].transform(rows))


def test_extra_columns_and_column_order_do_not_matter(fitted: Fitted) -> None:
    rows = fitted.rows.head(5)
    shuffled = rows[rows.columns[::-1]].assign(unrelated="x", another=1.5)
    np.testing.assert_array_equal(
        fitted.encoder.encode(shuffled).matrix, fitted.encoder.encode(rows).matrix
    )


def test_missing_columns_and_text_in_numeric_columns_are_refused(fitted: Fitted) -> None:
    numeric = fitted.encoder.numeric_columns[0]
    with pytest.raises(MlflowException, match=rf"missing input columns: \['{numeric}'\]"):
        fitted.encoder.encode(fitted.rows.drop(columns=[numeric]))
    wrong = fitted.rows.head(2).astype({numeric: object})
    wrong.loc[0, numeric] = "abc"
    with pytest.raises(MlflowException, match=f"column '{numeric}' must be numeric"):
        fitted.encoder.encode(wrong)


def test_empty_input_encodes_to_no_rows(fitted: Fitted) -> None:
    encoded = fitted.encoder.encode(fitted.rows.head(0))
    assert encoded.matrix.shape == (0, fitted.encoder.width) and encoded.unseen == []


def test_sources_name_each_encoded_column_input(fitted: Fitted) -> None:
    sources = fitted.encoder.encoded_column_sources()
    assert len(sources) == fitted.encoder.width
    assert set(sources) == set(fitted.encoder.input_columns)


def test_other_preprocessing_is_refused(fitted: Fitted) -> None:
    numeric = fitted.encoder.numeric_columns
    scaled = Pipeline(
        [
            ("preprocess", ColumnTransformer([("scaled", StandardScaler(), numeric)])),
            ("classifier", fitted.pipeline[-1]),
        ]
    )
    scaled[0].fit(fitted.rows.dropna(subset=numeric))
    with pytest.raises(UnsupportedPipelineError, match="transformer 'scaled' is neither"):
        FeatureEncoder.from_pipeline(scaled)
    with pytest.raises(UnsupportedPipelineError, match="expected Pipeline"):
        FeatureEncoder.from_pipeline(Pipeline([("classifier", fitted.pipeline[-1])]))
