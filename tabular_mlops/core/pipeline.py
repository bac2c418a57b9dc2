"""The model: a scikit-learn Pipeline (impute, one-hot) ending in LightGBM.

Built from stock scikit-learn and LightGBM classes only, so the logged sklearn-flavor
model loads anywhere those libraries are installed, with no project code shipped.
"""

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from tabular_mlops.core.data import FeatureSpec
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.sections import ModelConfig, TuningConfig

MISSING_CATEGORY = "__missing__"


def build_pipeline(features: FeatureSpec, model: ModelConfig, seed: int, threads: int) -> Pipeline:
    """Preprocessing and LightGBM; `threads` is LightGBM's thread count unless
    `model.params` sets one (see tabular_mlops.core.resources)."""
    return Pipeline(
        [
            ("preprocess", build_preprocessing(features)),
            ("classifier", build_classifier(model, seed, threads)),
        ]
    )


def build_preprocessing(features: FeatureSpec) -> ColumnTransformer:
    """The pipeline's first step. Its fit depends on the rows only, never on LightGBM's
    parameters, so tuning fits it once per fold for every trial."""
    # Missing categories arrive as NaN from files and as None from JSON requests; the
    # NaN imputer must come first (the None one rejects NaN input).
    categorical = Pipeline(
        [
            ("impute_nan", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            (
                "impute_none",
                SimpleImputer(
                    missing_values=None, strategy="constant", fill_value=MISSING_CATEGORY
                ),
            ),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    return ColumnTransformer(
        [
            # LightGBM treats NaN in numeric columns as missing natively.
            ("numeric", "passthrough", list(features.numeric)),
            ("categorical", categorical, list(features.categorical)),
        ],
        verbose_feature_names_out=False,
    )


def build_classifier(model: ModelConfig, seed: int, threads: int) -> LGBMClassifier:
    """The pipeline's last step, on `threads` threads unless `model.params` sets a count."""
    settings: dict[str, Any] = {
        "n_estimators": model.n_estimators,
        "learning_rate": model.learning_rate,
        "num_leaves": model.num_leaves,
        "random_state": seed,
        "verbose": -1,
    }
    if configured_threads(model) is None:
        settings["n_jobs"] = threads
    return LGBMClassifier(**settings, **model.params)


def configured_threads(model: ModelConfig) -> int | None:
    """The thread count `model.params` sets (`n_jobs` or any LightGBM alias of
    `num_threads`), or None when it sets none or a non-positive one (LightGBM's own
    default: all cores)."""
    for name in _thread_param_names():
        if name in model.params:
            value = model.params[name]
            return value if isinstance(value, int) and value > 0 else None
    return None


def fit_preprocessing(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series) -> Pipeline:
    """A fitted copy of `pipeline`'s preprocessing: the encoding its own fit on `X` gives
    (the fit is deterministic), for rows LightGBM is to watch while it grows trees."""
    return clone(pipeline[:-1]).fit(X, y)


def fit_with_learning_curve(
    pipeline: Pipeline,
    X_train: pd.DataFrame,
    y_train: pd.Series,
    valid_encoded: np.ndarray,
    y_valid: pd.Series,
) -> dict[str, list[float]]:
    """Fit `pipeline` and return LightGBM's per-iteration metrics on the validation rows,
    encoded by `fit_preprocessing`. They are only watched (no early stopping), so the model
    is the one a plain `fit` gives."""
    pipeline.fit(
        X_train,
        y_train,
        classifier__eval_X=(valid_encoded,),
        classifier__eval_y=(y_valid,),
        classifier__eval_names=["valid"],
        classifier__eval_metric=["auc", "binary_logloss"],
    )
    return dict(pipeline.named_steps["classifier"].evals_result_["valid"])


def input_column_of_encoded_features(pipeline: Pipeline) -> list[str]:
    """For each column the classifier sees, the input column it was encoded from."""
    preprocess: ColumnTransformer = pipeline.named_steps["preprocess"]
    sources: list[str] = []
    for name, transformer, columns in preprocess.transformers_:
        if name == "numeric":
            sources.extend(columns)
        elif name == "categorical":
            encoder: OneHotEncoder = transformer.named_steps["onehot"]
            for column, categories in zip(columns, encoder.categories_, strict=True):
                sources.extend([column] * len(categories))
    return sources


def feature_importance(pipeline: Pipeline) -> pd.DataFrame:
    """Total gain per input column (one-hot columns summed), largest first."""
    booster = pipeline.named_steps["classifier"].booster_
    gain = booster.feature_importance(importance_type="gain")
    frame = pd.DataFrame({"feature": input_column_of_encoded_features(pipeline), "gain": gain})
    totals = frame.groupby("feature", sort=False)["gain"].sum()
    return (
        (totals / max(totals.sum(), np.finfo(float).tiny))
        .rename("gain_share")
        .sort_values(ascending=False)
        .reset_index()
    )


def unknown_lightgbm_params(params: Mapping[str, object]) -> list[str]:
    """Names LightGBM would not recognise (it only warns about them)."""
    return sorted(name for name in params if name not in _lightgbm_param_names())


def check_lightgbm_names(model: ModelConfig, tuning: TuningConfig | None) -> None:
    """A ConfigError naming the setting when `model.params` or `tuning.search_space` holds a
    name LightGBM does not know: checked before a model is built, not when a config loads
    (which would import LightGBM for every command)."""
    settings = {"model.params": model.params}
    if tuning is not None:
        settings["tuning.search_space"] = tuning.search_space
    for setting, names in settings.items():
        if unknown := unknown_lightgbm_params(names):
            raise ConfigError(f"{setting}: unknown LightGBM parameter(s): {', '.join(unknown)}")


@cache
def _thread_param_names() -> tuple[str, ...]:
    from lightgbm.basic import _ConfigAliases

    return ("n_jobs", *sorted(_ConfigAliases.get("num_threads")))


@cache
def _lightgbm_param_names() -> frozenset[str]:
    # LightGBM's own table of parameters and aliases, plus the sklearn wrapper's arguments.
    from lightgbm.basic import _ConfigAliases

    names = set(LGBMClassifier().get_params())
    for name, aliases in _ConfigAliases._get_all_param_aliases().items():
        names.add(name)
        names.update(aliases)
    return frozenset(names)
