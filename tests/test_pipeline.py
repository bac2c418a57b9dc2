from importlib.metadata import version

import numpy as np
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from tabular_custom_model.pipeline_file import SKOPS_TRUSTED_TYPES

from tabular_mlops.core.data import LabeledTable, Split, load_table, split
from tabular_mlops.core.pipeline import (
    build_pipeline,
    feature_importance,
    input_column_of_encoded_features,
    unknown_lightgbm_params,
)
from tabular_mlops.core.sections import DataConfig, ModelConfig, SplitConfig
from tabular_mlops.mlflow.pipeline_model import pip_requirements
from tabular_mlops.mlflow.shipped_code import skops_trusted_types
from tests.conftest import PROJECT_DIR, churn_settings

FAST_MODEL = ModelConfig(n_estimators=60, learning_rate=0.1, num_leaves=15)


@pytest.fixture(scope="module")
def churn_table() -> LabeledTable:
    return load_table(DataConfig(**churn_settings()["data"]))


@pytest.fixture(scope="module")
def churn_split(churn_table: LabeledTable) -> Split:
    return split(churn_table, SplitConfig())


def fit(table: LabeledTable, parts: Split) -> Pipeline:
    return build_pipeline(table.spec, FAST_MODEL, seed=42, threads=1).fit(
        parts.X_train, parts.y_train
    )


@pytest.fixture(scope="module")
def fitted(churn_table: LabeledTable, churn_split: Split) -> Pipeline:
    return fit(churn_table, churn_split)


def test_missing_category_as_none_or_nan_is_the_same_missing_value(
    fitted: Pipeline, churn_split: Split
) -> None:
    rows = churn_split.X_test.head(50).astype({"contract": object, "payment_method": object})
    as_nan, as_none = rows.copy(), rows.copy()
    as_nan[["contract", "payment_method"]] = np.nan
    as_none[["contract", "payment_method"]] = None
    nan_proba = fitted.predict_proba(as_nan)[:, 1]
    assert np.array_equal(nan_proba, fitted.predict_proba(as_none)[:, 1])
    assert not np.array_equal(nan_proba, fitted.predict_proba(rows)[:, 1])


def test_unseen_category_and_missing_number_are_scored(
    fitted: Pipeline, churn_split: Split
) -> None:
    rows = churn_split.X_test.head(3).copy()
    rows["contract"] = "Ten year"
    rows["tenure"] = np.nan
    proba = fitted.predict_proba(rows)[:, 1]
    assert np.isfinite(proba).all() and ((proba > 0) & (proba < 1)).all()


def test_same_seed_same_model(
    fitted: Pipeline, churn_table: LabeledTable, churn_split: Split
) -> None:
    again = fit(churn_table, churn_split)
    assert np.array_equal(
        fitted.predict_proba(churn_split.X_test), again.predict_proba(churn_split.X_test)
    )


def test_the_project_reads_the_trusted_types_the_shipped_code_declares() -> None:
    assert skops_trusted_types(PROJECT_DIR / "custom_model") == SKOPS_TRUSTED_TYPES


def test_skops_trusted_types_are_complete(fitted: Pipeline, churn_split: Split) -> None:
    dumped = skops.io.dumps(fitted)
    untrusted = skops.io.get_untrusted_types(data=dumped)
    assert set(untrusted) <= set(SKOPS_TRUSTED_TYPES), set(untrusted) - set(SKOPS_TRUSTED_TYPES)
    loaded = skops.io.loads(dumped, trusted=SKOPS_TRUSTED_TYPES)
    assert np.array_equal(
        loaded.predict_proba(churn_split.X_test), fitted.predict_proba(churn_split.X_test)
    )


def test_encoded_features_map_back_to_input_columns(fitted: Pipeline) -> None:
    sources = input_column_of_encoded_features(fitted)
    assert len(sources) == fitted.named_steps["classifier"].n_features_in_
    # contract has three categories, each its own one-hot column.
    assert sources.count("contract") == 3
    assert sources.count("tenure") == 1


def test_feature_importance_sums_gain_per_input_column(fitted: Pipeline) -> None:
    importance = feature_importance(fitted)
    assert len(importance) == 19
    assert importance["gain_share"].sum() == pytest.approx(1.0)
    assert importance["gain_share"].is_monotonic_decreasing
    assert importance["feature"].iloc[0] in {"contract", "tenure"}  # the known strong signals


def test_unknown_lightgbm_params() -> None:
    params = {"min_data_in_leaf": 1, "subsample": 0.8, "max_dpeth": 3, "colsample": 1}
    assert unknown_lightgbm_params(params) == ["colsample", "max_dpeth"]


def test_pip_requirements_pin_installed_versions() -> None:
    requirements = pip_requirements()
    assert f"lightgbm=={version('lightgbm')}" in requirements
    assert f"skops=={version('skops')}" in requirements
    assert all("==" in line for line in requirements)
