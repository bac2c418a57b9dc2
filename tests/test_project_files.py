"""The files that describe the project agree with each other and with the code."""

import re
import tomllib
from types import ModuleType

import pytest
import yaml

from steps import batch_score, custom_model, main, register, track, train_basic
from tests.conftest import PROJECT_DIR


def mlproject() -> dict:
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


def test_conda_env_lists_the_project_dependencies_under_pip() -> None:
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip_lists = [item["pip"] for item in conda["dependencies"] if isinstance(item, dict)]
    python = [item for item in conda["dependencies"] if str(item).startswith("python")]
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    assert python == ["python=3.11"]
    assert pip_lists == [pyproject["project"]["dependencies"]]


def _name(requirement: str) -> str:
    """`psycopg[binary]==3.3.9` -> `psycopg`, as pip normalises names."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>;~! ]", requirement, maxsplit=1)[0]).lower()


def test_every_dependency_is_pinned_and_locked_at_its_pin() -> None:
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    direct = pyproject["dependencies"] + [
        requirement
        for extra in pyproject["optional-dependencies"].values()
        for requirement in extra
        if _name(requirement) != _name(pyproject["name"])
    ]
    pins = {_name(requirement): requirement.split("==")[-1] for requirement in direct}
    assert [r for r in direct if r.count("==") != 1] == []  # exact pins, dev tools too
    locked = dict(
        (_name(line), line.split("==")[1].split(";")[0].strip())
        for line in (PROJECT_DIR / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith(("#", " "))
    )
    assert {name: locked.get(name) for name in pins} == pins


def test_mlproject_uses_conda_yaml() -> None:
    assert mlproject()["conda_env"] == "conda.yaml"


ENTRY_POINTS = [train_basic, track, register, custom_model, batch_score, main]


def test_mlproject_declares_every_entry_point() -> None:
    assert set(mlproject()["entry_points"]) == {step.ENTRY_POINT for step in ENTRY_POINTS}


def optional_parameters(entry_point: str) -> dict[str, str]:
    """The `# optional:` block of an entry point in MLproject: name -> type."""
    text = (PROJECT_DIR / "MLproject").read_text()
    block = text.split(f"\n  {entry_point}:\n", 1)[1].split("command:", 1)[0]
    return dict(re.findall(r"^    #   ([a-z_]+) \((string|float)\)", block, flags=re.MULTILINE))


@pytest.mark.parametrize("step", ENTRY_POINTS, ids=lambda step: step.ENTRY_POINT)
def test_every_parameter_reaches_the_step(step: ModuleType) -> None:
    entry_point = mlproject()["entry_points"][step.ENTRY_POINT]
    declared = entry_point["parameters"]
    optional = optional_parameters(step.ENTRY_POINT)
    assert entry_point["command"].startswith(f"python -m steps.{step.ENTRY_POINT} ")
    passed = dict(re.findall(r"--([a-z-]+) \{([a-z_]+)\}", entry_point["command"]))
    assert sorted(passed.values()) == sorted(declared)
    assert all(flag == name.replace("_", "-") for flag, name in passed.items())
    # Declared parameters have a value that means something on the run (never "").
    assert all(spec["default"] != "" for spec in declared.values())
    assert {spec["type"] for spec in declared.values()} <= {"string", "float"}
    # The step's parser takes exactly the declared and the listed optional parameters,
    # the optional ones as MLflow passes them: `--name value`.
    accepted = {action.dest for action in step.build_parser()._actions} - {"help"}
    assert set(declared) | set(optional) == accepted and not set(declared) & set(optional)
    assert set(step.OVERRIDES) <= set(optional)
    # The step accepts what MLflow substitutes for every default.
    argv = [
        arg
        for name, spec in declared.items()
        for arg in (f"--{name.replace('_', '-')}", str(spec["default"]))
    ]
    parsed = vars(step.parse_args(argv))
    assert all(parsed[name] is None for name in step.OVERRIDES)
    flags = {flag for action in step.build_parser()._actions for flag in action.option_strings}
    assert {f"--{name}" for name in optional} <= flags
