"""MLproject and the steps' parsers agree with the one declaration of each entry point's
parameters (tabular_mlops.jobs.entry_points)."""

import re

import pytest
import yaml

from tabular_mlops.cli.commands import parser_for
from tabular_mlops.core.config import load_config
from tabular_mlops.jobs.entry_points import (
    ENTRY_POINTS,
    MAIN,
    MAIN_ROUTES,
    EntryPoint,
    optional_lines,
)
from tests.conftest import CHURN_CONFIG, PROJECT_DIR

pytestmark = pytest.mark.unit


def mlproject() -> dict:
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


def optional_block(name: str) -> list[str]:
    """The `# optional:` comment lines of an entry point in MLproject."""
    text = (PROJECT_DIR / "MLproject").read_text()
    block = text.split(f"\n  {name}:\n", 1)[1].split("command:", 1)[0]
    return [line for line in block.splitlines() if line.startswith("    #")]


def test_mlproject_declares_every_entry_point() -> None:
    assert set(mlproject()["entry_points"]) == set(ENTRY_POINTS)


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=lambda entry: entry.name)
def test_mlproject_lists_the_declared_parameters(entry: EntryPoint) -> None:
    spec = mlproject()["entry_points"][entry.name]
    declared = {p.name: p for p in entry.parameters if p.default is not None}
    optional = {p.name: p for p in entry.parameters if p.default is None}
    # Declared with a default that means something on the run (never ''), as passed.
    assert {
        name: (value["type"], str(value["default"])) for name, value in spec["parameters"].items()
    } == {name: (p.kind.mlproject_type, p.default) for name, p in declared.items()}
    assert spec["command"].startswith(f"python -m {entry.module} ")
    passed = dict(re.findall(r"--([a-z-]+) \{([a-z_]+)\}", spec["command"]))
    assert passed == {p.flag.removeprefix("--"): name for name, p in declared.items()}
    # The others listed, with their type and the setting they override (or what they are),
    # as optional_lines writes them from the declaration.
    assert optional_block(entry.name) == optional_lines(entry)
    assert all(f"#   {name} (" in "\n".join(optional_lines(entry)) for name in optional)


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=lambda entry: entry.name)
def test_the_parser_takes_what_mlflow_passes(entry: EntryPoint) -> None:
    parser = parser_for(entry)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for parameter in entry.parameters:
        # MLflow passes an undeclared `-P name=value` as `--name value`.
        assert {parameter.flag, f"--{parameter.name}"} <= flags
    defaults = [
        word
        for name, value in mlproject()["entry_points"][entry.name]["parameters"].items()
        for word in (f"--{name.replace('_', '-')}", str(value["default"]))
    ]
    parsed = vars(parser.parse_args(defaults))
    assert all(parsed[name] is None for name in entry.overrides())


def test_every_setting_a_parameter_overrides_exists() -> None:
    config = load_config(CHURN_CONFIG).model_dump()
    for entry in ENTRY_POINTS.values():
        for parameter, setting in entry.overrides().items():
            node = config
            for key in setting.split("."):
                assert isinstance(node, dict) and key in node, (entry.name, parameter, setting)
                node = node[key]


def test_main_routes_only_parameters_the_steps_take() -> None:
    routed = {name for names in MAIN_ROUTES.values() for name in names}
    assert {p.name for p in MAIN.parameters} == {"config", "force"} | routed
    for step, names in MAIN_ROUTES.items():
        step_parameters = {p.name for p in ENTRY_POINTS[step].parameters}
        assert set(names) <= step_parameters
