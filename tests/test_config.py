import subprocess
import sys
from pathlib import Path

import pytest

from tabular_mlops.core.config import load_config
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.pipeline import check_lightgbm_names
from tests.conftest import CHURN_CONFIG, churn_settings, write_config


def test_shipped_config_loads() -> None:
    config = load_config(CHURN_CONFIG)
    assert config.data.target == "churn"
    assert config.data.positive_label == "Yes"
    assert len(config.data.numeric_features) == 9
    assert len(config.data.categorical_features) == 10
    assert config.tracking.alias == "latest-model"


def test_overrides_replace_values_and_none_keeps_them() -> None:
    config = load_config(
        CHURN_CONFIG, {"model.n_estimators": 50, "split.seed": None, "data.target": "x"}
    )
    assert config.model.n_estimators == 50
    assert config.split.seed == 42
    assert config.data.target == "x"


def test_flat_gives_dotted_keys() -> None:
    flat = load_config(CHURN_CONFIG).flat()
    assert flat["model.n_estimators"] == 300
    assert flat["model.params.subsample"] == 0.8
    assert flat["tracking.registered_model_name"] == "churn-classifier"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line 2, column 1") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"n_estimators": 0}}, r"model\.n_estimators: .*greater than or equal to 1"),
        ({"split": {"test_size": 1.5}}, r"split\.test_size: .*less than 1 \(got 1\.5\)"),
        ({"model": {"learning_rate": "fast"}}, r"model\.learning_rate: .*valid number"),
        ({"model": {"n_estimatorz": 10}}, r"model\.n_estimatorz: unknown setting"),
        ({"model": {"params": {"n_estimators": 3}}}, r"n_estimators outside model\.params"),
        ({"tracking": {"alias": "latest"}}, r"alias 'latest' is reserved"),
        ({"tracking": {"alias": "Latest"}}, r"alias 'Latest' is reserved"),
        ({"tracking": {"alias": "v3"}}, r"alias 'v3' is reserved"),
        ({"tracking": {"alias": "my alias"}}, r"may only hold letters"),
        ({"promotion": {"champion_alias": "latest"}}, r"champion_alias: alias 'latest' is res"),
        ({"promotion": {"challenger_alias": "V1"}}, r"challenger_alias: alias 'V1' is reserved"),
        (
            {"promotion": {"previous_champion_alias": "champion"}},
            r"aliases must differ, got latest-model, champion, challenger, champion",
        ),
        ({"promotion": {"min_improvement": 0}}, r"promotion\.min_improvement: .*greater than 0"),
        ({"promotion": {"metric": "auc"}}, r"unknown metric 'auc': use one of roc_auc, "),
        ({"promotion": {"threshold": None}}, r"promotion\.threshold: .*valid number"),
        ({"data": {"id_columns": ["churn"]}}, r"'churn' is listed twice \(target and id_columns\)"),
        (
            {"data": {"categorical_features": ["tenure"]}},
            r"'tenure' is listed twice \(numeric_features and categorical_features\)",
        ),
        (
            {"data": {"numeric_features": [], "categorical_features": []}},
            r"no features",
        ),
    ],
)
def test_invalid_settings_are_one_line_errors(
    tmp_path: Path, changes: dict[str, dict[str, object]], message: str
) -> None:
    path = write_config(tmp_path / "config.yaml", churn_settings(), **changes)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_lightgbm_aliases_and_booster_params_are_accepted(tmp_path: Path) -> None:
    params = {"min_data_in_leaf": 5, "feature_fraction": 0.9, "max_bin": 63, "max_depth": 4}
    path = write_config(tmp_path / "c.yaml", churn_settings(), model={"params": params})
    config = load_config(path)
    assert config.model.params == params
    check_lightgbm_names(config.model, config.tuning)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model": {"params": {"max_dpeth": 3}}},
            "model.params: unknown LightGBM parameter(s): max_dpeth",
        ),
        (
            {"tuning": {"search_space": {"colsample": {"type": "float", "low": 0.1, "high": 1}}}},
            "tuning.search_space: unknown LightGBM parameter(s): colsample",
        ),
    ],
)
def test_lightgbm_names_are_checked_before_a_model_is_built(
    tmp_path: Path, changes: dict[str, dict[str, object]], message: str
) -> None:
    # Not when the config loads: that would import LightGBM for every command.
    config = load_config(write_config(tmp_path / "c.yaml", churn_settings(), **changes))
    with pytest.raises(ConfigError) as caught:
        check_lightgbm_names(config.model, config.tuning)
    assert str(caught.value) == message


def test_loading_the_shipped_config_imports_no_training_library() -> None:
    """In a fresh interpreter: loading (and validating) the shipped config, as `main` does
    to find cached steps, imports none of LightGBM, scikit-learn or Optuna."""
    code = (
        "import sys\n"
        "from tabular_mlops.core.config import load_config\n"
        f"load_config({str(CHURN_CONFIG)!r}).require_tuning()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightgbm', 'sklearn', 'optuna'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    settings = churn_settings()
    del settings["tracking"]
    with pytest.raises(ConfigError, match="tracking: required"):
        load_config(write_config(tmp_path / "c.yaml", settings))


def test_promotion_section_is_needed_by_register_only(tmp_path: Path) -> None:
    settings = churn_settings()
    del settings["promotion"]
    config = load_config(write_config(tmp_path / "c.yaml", settings))
    with pytest.raises(ConfigError, match="needs a `promotion` section"):
        config.require_promotion()
    assert load_config(CHURN_CONFIG).require_promotion().greater_is_better
    log_loss = load_config(CHURN_CONFIG, {"promotion.metric": "log_loss"}).promotion
    assert not log_loss.greater_is_better
