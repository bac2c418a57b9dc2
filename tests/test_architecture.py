"""The layout keeps its promises: import-linter's contracts (pyproject.toml) hold and catch a
wrong-way import, modules stay short, and every module says what it is for."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.unit

PACKAGES = (
    "tabular_mlops",
    "steps",
    "sqlite_store_lock",
    "team_stack",
    "test_support",
    "bench",
    "docs_build",
    "tests",
    "custom_model/src/tabular_custom_model",
)
LIBRARY = ("tabular_mlops", "steps", "sqlite_store_lock", "team_stack", "test_support")
LONGEST_MODULE = 420  # "about 400 lines"


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"PYTHONPATH": f"{project}{os.pathsep}{project}/custom_model/src"}
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    return subprocess.run(
        command, cwd=project, env=environment, capture_output=True, text=True, timeout=120
    )


def copy_of_packages(destination: Path) -> Path:
    shutil.copy(PROJECT_DIR / "pyproject.toml", destination / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            PROJECT_DIR / package,
            destination / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return destination


def test_the_contracts_hold() -> None:
    done = lint_imports(PROJECT_DIR)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "wrong", "contract"),
    [
        ("tabular_mlops/core/wrong_way.py", "from tabular_mlops.jobs import train", "Layers"),
        ("tabular_mlops/core/wrong_way.py", "import mlflow", "The core is pure ML"),
        ("tabular_mlops/mlflow/wrong_way.py", "import tabular_mlops.jobs.entry_points", "Layers"),
        ("tabular_mlops/jobs/wrong_way.py", "import team_stack.stack", "imports no tooling"),
        ("tabular_mlops/jobs/wrong_way.py", "import steps.main", "Nothing imports the entry"),
        ("custom_model/src/tabular_custom_model/wrong.py", "import tabular_mlops", "shipped"),
        ("test_support/wrong_way.py", "import bench.stack", "Test support"),
        ("tabular_mlops/core/errors_user.py", "from tabular_mlops.core import data", "circle"),
    ],
    ids=["core->jobs", "core->mlflow", "mlflow->jobs", "jobs->tooling", "lib->steps",
         "model code->project", "support->bench", "circle"],
)  # fmt: skip
def test_a_wrong_way_import_is_caught(
    tmp_path: Path, module: str, wrong: str, contract: str
) -> None:
    project = copy_of_packages(tmp_path)
    (project / module).write_text(f'"""A module importing the wrong way."""\n\n{wrong}\n')
    if contract == "circle":  # data -> errors_user -> data
        data = project / "tabular_mlops/core/data.py"
        data.write_text(data.read_text() + "\nfrom tabular_mlops.core import errors_user  # noqa\n")
    done = lint_imports(project)
    assert done.returncode != 0
    assert any(contract in name for name in broken_contracts(done.stdout)), done.stdout[-3000:]


def broken_contracts(report: str) -> list[str]:
    """The names of the contracts lint-imports reports BROKEN (it wraps long names)."""
    listing = " ".join(report.split("Contracts:")[0].split("dependencies.")[-1].split())
    return re.findall(r"-*\s*(.+?) BROKEN", listing.replace(" KEPT", " KEPT\n"))


def library_modules() -> list[Path]:
    return [
        path
        for package in LIBRARY
        for path in sorted((PROJECT_DIR / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    ]


def test_no_module_is_long() -> None:
    long = {
        str(path.relative_to(PROJECT_DIR)): length
        for path in library_modules()
        if (length := len(path.read_text().splitlines())) > LONGEST_MODULE
    }
    assert long == {}


def test_every_module_says_what_it_is_for() -> None:
    undocumented = [
        str(path.relative_to(PROJECT_DIR))
        for path in library_modules()
        if path.name != "__init__.py" or path.stat().st_size
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert undocumented == []
