"""The code that ships inside the project's models (`custom_model/`, the package
`tabular_custom_model`): built into a wheel, and carried in each model's `code/`
directory with its source (see ShippedCode).

The wheel's version is the package's own plus a hash of its content
(`0.1.0+3f2a9c1b04de`): MLflow caches model environments by their requirement strings, so a
changed source with an unchanged version would be served by the environment of the old one.
The same source always gives the same file name, and an existing wheel is reused once its
bytes are checked against the sha256 recorded beside it when it was built
(`<wheel>.sha256`); a wheel cut short or altered is rebuilt. Both files are written under
a temporary name and renamed, so an interrupted build leaves no wheel behind.
"""

import ast
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tabular_mlops.core.errors import ConfigError
from tabular_mlops.core.files import write_atomically
from tabular_mlops.core.model_sections import ModelCodeConfig

logger = logging.getLogger(__name__)

PACKAGE = "tabular_custom_model"
# Where the shipped code declares the skops types it trusts (and loads pipelines with).
TRUSTED_TYPES_FILE = Path("src") / PACKAGE / "pipeline_file.py"
TRUSTED_TYPES_NAME = "SKOPS_TRUSTED_TYPES"

_IGNORED = ("__pycache__", "*.pyc", "*.egg-info")
_BUILD = "import sys; from hatchling.build import build_wheel; print(build_wheel(sys.argv[1]))"


def skops_trusted_types(package_dir: Path) -> list[str]:
    """The skops types the shipped code trusts, as its source declares them: read, not
    imported (the package is not installed where jobs run)."""
    path = package_dir / TRUSTED_TYPES_FILE
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == TRUSTED_TYPES_NAME
            for target in node.targets
        ):
            return [str(name) for name in ast.literal_eval(node.value)]
    raise ConfigError(f"{path} declares no {TRUSTED_TYPES_NAME}")


def content_hash(package_dir: Path) -> str:
    """12 hex digits of sha256 over the relative paths and bytes of the built files."""
    digest = hashlib.sha256()
    for path in sorted(_source_files(package_dir)):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_wheel(package_dir: Path, wheel_dir: Path) -> Path:
    """The wheel of `package_dir` in `wheel_dir`, built unless this content was built before."""
    project = tomllib.loads((package_dir / "pyproject.toml").read_text())["project"]
    version = f"{project['version']}+{content_hash(package_dir)}"
    distribution = project["name"].replace("-", "_")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / f"{distribution}-{version}-py3-none-any.whl"
    if wheel.is_file() and _recorded_hash(wheel) == _file_hash(wheel):
        logger.info("reusing %s (same content)", wheel)
        return wheel
    if wheel.is_file():
        logger.warning("rebuilding %s: it does not match the hash recorded at build", wheel)
    with tempfile.TemporaryDirectory(prefix="custom-model-build-") as scratch:
        source = Path(scratch) / "source"
        shutil.copytree(
            package_dir / "src", source / "src", ignore=shutil.ignore_patterns(*_IGNORED)
        )
        shutil.copy2(package_dir / "pyproject.toml", source / "pyproject.toml")
        _set_version(source / "pyproject.toml", project["version"], version)
        built = subprocess.run(
            [sys.executable, "-c", _BUILD, str(Path(scratch) / "dist")],
            cwd=source,
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise RuntimeError(f"building {package_dir} failed:\n{built.stderr[-3000:]}")
        built_wheel = Path(scratch) / "dist" / built.stdout.strip().splitlines()[-1]
        write_atomically(wheel, built_wheel.read_bytes())
    # The hash last: a wheel without its hash file is never reused.
    write_atomically(_hash_file(wheel), _file_hash(wheel).encode())
    logger.info("built %s", wheel)
    return wheel


def _hash_file(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + ".sha256")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded_hash(wheel: Path) -> str | None:
    try:
        return _hash_file(wheel).read_text().strip()
    except OSError:
        return None


def _source_files(package_dir: Path) -> list[Path]:
    files = [package_dir / "pyproject.toml"]
    files += [
        path
        for path in (package_dir / "src").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    return files


def _set_version(pyproject: Path, base: str, version: str) -> None:
    text = pyproject.read_text()
    line = f'version = "{base}"'
    if text.count(line) != 1:
        raise ValueError(f"{pyproject} must hold exactly one line {line!r}")
    pyproject.write_text(text.replace(line, f'version = "{version}"'))


@dataclass(frozen=True)
class ShippedCode:
    """The built code a model carries: `code_paths` puts the wheel and the package source in
    the model's `code/` (on `sys.path` at load, so `--env-manager local` imports the source);
    the requirements end with `code/<wheel>`, which installs it in a fresh environment."""

    package_dir: Path  # custom_model/
    wheel: Path

    @classmethod
    def build(cls, settings: ModelCodeConfig) -> "ShippedCode":
        if not (settings.package_dir / "pyproject.toml").is_file():
            raise ConfigError(
                f"model_code.package_dir {settings.package_dir} holds no pyproject.toml: run "
                "from the project directory, or set it to the project's custom_model/"
            )
        return cls(settings.package_dir, build_wheel(settings.package_dir, settings.wheel_dir))

    @property
    def source(self) -> Path:
        return self.package_dir / "src" / PACKAGE

    def model_file(self, name: str) -> str:
        """A "models from code" file of the package directory (`model_code.py`, ...)."""
        return str(self.package_dir / name)

    def code_paths(self) -> list[str]:
        return [str(self.wheel), str(self.source)]

    def requirements(self, pinned: list[str]) -> list[str]:
        """`pinned` (what the model needs, exact versions), then the wheel. Explicit:
        inference would list this project as `name==version`, which pip cannot install."""
        return [*pinned, f"code/{self.wheel.name}"]

    @contextmanager
    def importable(self) -> Iterator[None]:
        """The package on `sys.path` meanwhile: MLflow runs a model's code to log it."""
        directory = str(self.source.parent.resolve())
        sys.path.insert(0, directory)
        try:
            yield
        finally:
            sys.path.remove(directory)
