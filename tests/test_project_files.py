"""The files that describe the project agree with each other and with the code."""

import re
import tomllib

import yaml

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
