"""scripts/wheelhouse.sh: PySpark's wheel built once per machine, taken by every uv install
(a build per environment filled the CI's disk)."""

import os
import subprocess
from pathlib import Path

from tests.conftest import PROJECT_DIR, missing_tool


def lock_pin(package: str) -> str:
    lock = (PROJECT_DIR / "requirements.lock").read_text().splitlines()
    return next(line.split()[0] for line in lock if line.startswith(f"{package}=="))


def source_wheelhouse(wheelhouse: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail; source scripts/wheelhouse.sh; echo $UV_FIND_LINKS"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
        env={**os.environ, "TABULAR_MLOPS_WHEELHOUSE": str(wheelhouse)},
    )  # fmt: skip


def test_a_wheelhouse_holding_the_locked_pyspark_is_used_as_it_is(tmp_path: Path) -> None:
    version = lock_pin("pyspark").removeprefix("pyspark==")
    wheel = tmp_path / f"pyspark-{version}-py2.py3-none-any.whl"
    wheel.write_bytes(b"built earlier")
    result = source_wheelhouse(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path) and result.stderr == ""
    assert [path.name for path in tmp_path.iterdir()] == [wheel.name]


def test_a_missing_wheel_is_built_aside_then_moved_in(tmp_path: Path) -> None:
    """Another version's wheel does not count. The build (pip, faked here: it writes the
    wheel it was asked for) happens in a scratch folder, then the wheel is renamed in."""
    project, wheelhouse = tmp_path / "project", tmp_path / "wheelhouse"
    (project / "scripts").mkdir(parents=True)
    for name in ("requirements.lock", "scripts/wheelhouse.sh"):
        (project / name).write_text((PROJECT_DIR / name).read_text())
    pin = lock_pin("pyspark")
    wheel = f"pyspark-{pin.removeprefix('pyspark==')}-py2.py3-none-any.whl"
    fake_python = project / ".venv" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text(
        '#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/asked"\n'
        'while [ "$1" != --wheel-dir ]; do shift; done\n'
        f'touch "$2/{wheel}"\n'
    )
    fake_python.chmod(0o755)
    wheelhouse.mkdir()
    (wheelhouse / "pyspark-0.0.1-py2.py3-none-any.whl").write_bytes(b"another version")
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail; source scripts/wheelhouse.sh; echo $UV_FIND_LINKS"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={**os.environ, "TABULAR_MLOPS_WHEELHOUSE": str(wheelhouse)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"building {pin}" in result.stderr and result.stdout.strip() == str(wheelhouse)
    assert pin in (fake_python.parent / "asked").read_text().split()
    assert sorted(path.name for path in wheelhouse.iterdir()) == sorted(
        ["pyspark-0.0.1-py2.py3-none-any.whl", wheel]
    )


def test_the_suite_installs_pyspark_from_the_wheelhouse() -> None:
    """scripts/test.sh sources the script: every uv environment the suite makes
    (`--env-manager uv`, the model's isolated checks) finds the locked wheel."""
    folder = os.environ.get("UV_FIND_LINKS")
    if not folder:
        missing_tool("UV_FIND_LINKS (scripts/wheelhouse.sh)")
    version = lock_pin("pyspark").removeprefix("pyspark==")
    assert list(Path(folder).glob(f"pyspark-{version}-*.whl"))
