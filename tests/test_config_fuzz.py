"""Any malformed shape of the config is one line (ConfigError), never a traceback: the
shipped config mutated by Hypothesis, with and without parameter overrides."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabular_mlops.core.config import ProjectConfig, load_config
from tabular_mlops.core.errors import ConfigError
from tabular_mlops.jobs.entry_points import MAIN
from tests.conftest import churn_settings

SHIPPED = churn_settings()
# Values of every YAML shape: scalars, lists and mappings, nested.
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
OVERRIDE_KEYS = sorted(set(MAIN.overrides().values()) | {"model.n_estimators", "split.seed"})


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, (*prefix, key))
    return found


PATHS = _paths(SHIPPED)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The shipped config with one to three places replaced by any value or deleted."""
    config = copy.deepcopy(SHIPPED)
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        *parents, leaf = path
        node: Any = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue  # an earlier mutation replaced this part
        if draw(st.booleans()):
            del node[leaf]
        else:
            node[leaf] = draw(YAML_VALUES)
    return config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=mutated_configs(),
    overrides=st.dictionaries(st.sampled_from(OVERRIDE_KEYS), YAML_VALUES, max_size=2),
)
def test_a_mutated_config_loads_or_is_one_line(
    tmp_path_factory: Any, config: dict[str, Any], overrides: dict[str, Any]
) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        loaded = load_config(path, overrides)
    except ConfigError as error:
        assert "\n" not in str(error)
        assert str(error)
    else:
        assert isinstance(loaded, ProjectConfig)


def test_an_empty_section_takes_an_override(tmp_path: Path) -> None:
    config = copy.deepcopy(SHIPPED) | {"model": None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path, {"model.n_estimators": 5}).model.n_estimators == 5


def test_an_override_into_a_scalar_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(SHIPPED) | {"split": 3}))
    with pytest.raises(ConfigError, match=r"split: must be a mapping to set split\.seed, got int$"):
        load_config(path, {"split.seed": 1})


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"data:\n  path: caf\xe9.csv\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"config file {path} is not UTF-8 text (invalid continuation byte at byte 17)"
    )
