"""Whether a model someone else logged may be loaded here, judged by what loading it would
run, never by what its MLmodel file says about itself.

Anyone who may log a model (EDIT on an experiment) writes every byte of it, its MLmodel
included. Loading runs, depending on the flavor: a pickle or cloudpickle (any code), a
"models from code" file and the modules on its `code/` path (any code), a skops file
(only the types it is told to trust: MLflow tells it the model's own list), and, in a
fresh environment, whatever its requirements install. So a model is loaded only from a
local copy that `LoadPolicy.checked` has read whole and found to run nothing but:

- this project's shipped code (`custom_model/`): every `.py` file a loader can import,
  at the top or in `code/` or in the wheel there, is byte for byte a version of a file of
  `custom_model/` this checkout knows (its files, or any version in its git history);
- skops files whose types are all in the shipped code's list (`SKOPS_TRUSTED_TYPES` of
  custom_model/src/tabular_custom_model/pipeline_file.py);
- requirements naming only the packages the project's models need, at no URL, and the
  wheel checked above.

Anything else (a cloudpickled `python_model`, another flavor or loader, a `.pyc`, `.so` or
`.pth` file, a path out of the model's directory) is refused in one line that says why,
before any of the model's code or artifacts is loaded. `trust.allow_pickle` skips the check
for a caller who trusts whoever logged the model.

Steps also run with MLflow's own switch off (mlflow.deserialization): a load that skipped
the check is refused by MLflow itself; loading a checked copy turns it on meanwhile
(`CheckedModel.loading`).
"""

import hashlib
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.mlflow import deserialization
from tabular_mlops.mlflow.pipeline_model import MODEL_REQUIREMENTS
from tabular_mlops.mlflow.shipped_code import PACKAGE, skops_trusted_types

PYFUNC, SKLEARN = "python_function", "sklearn"
# Loaders of the flavors this project logs: skops-saved pipelines, and models from code.
SKLEARN_LOADER = "mlflow.sklearn"
CODE_LOADERS = ("mlflow.pyfunc.model", "mlflow.pyfunc.loaders.code_model")
# Files no loader executes: metadata, examples, environments (checked on their own), plots.
INERT_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md", ".png", ".csv", ".html")
INERT_NAMES = ("MLmodel", "registered_model_meta")
# What may sit in the shipped wheel besides the package's modules.
WHEEL_METADATA = ("METADATA", "WHEEL", "RECORD")
ALLOWED_REQUIREMENTS = frozenset(canonicalize_name(name) for name in MODEL_REQUIREMENTS)
ALLOWED_BUILD_TOOLS = frozenset({"pip", "setuptools", "wheel"})
# The wheel a model ships, as its requirements name it; and conda's own entries.
SHIPPED_WHEEL = re.compile(rf"^code/{PACKAGE}-[A-Za-z0-9.+_-]+-py3-none-any\.whl$")
CONDA_BASICS = re.compile(r"^(python|pip)([<>=]=?[0-9.]+)?$")


class UntrustedModelError(PromotionError):
    """Loading the model would run code, or install packages, this project did not ship."""


@dataclass(frozen=True)
class TrustedCode:
    """Every version of the shipped code's Python files this checkout knows, as git blob
    ids: the files of `custom_model/` now, and every version in the git history of HEAD."""

    blobs: frozenset[str]
    skops_types: frozenset[str]  # what skops files may hold: the shipped code's own list

    @classmethod
    def of_checkout(cls, package_dir: Path) -> "TrustedCode":
        if not (package_dir / "src" / PACKAGE).is_dir():
            raise PromotionError(
                f"no shipped code to check models against: {package_dir} holds no "
                f"src/{PACKAGE} (model_code.package_dir: run from the project directory)"
            )
        current = {_blob_id(path.read_bytes()) for path in package_dir.rglob("*.py")}
        blobs = frozenset(current | _committed_python_blobs(package_dir))
        return cls(blobs, frozenset(skops_trusted_types(package_dir)))

    def knows(self, content: bytes) -> bool:
        return _blob_id(content) in self.blobs


def _blob_id(content: bytes) -> str:
    """The id git gives a file with this content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def _committed_python_blobs(package_dir: Path) -> set[str]:
    """Blob ids of every `.py` version under `package_dir` in HEAD's history; none outside
    a git checkout."""
    listed = subprocess.run(
        ["git", "log", "--format=", "--raw", "--no-abbrev", "--no-renames", "HEAD", "--", "."],
        cwd=package_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    blobs = set()
    for line in listed.stdout.splitlines() if listed.returncode == 0 else []:
        # :100644 100644 <old blob> <new blob> M<TAB>path
        fields, _, path = line.partition("\t")
        if path.endswith(".py"):
            blobs.update(fields.split()[2:4])
    return blobs - {"0" * 40}


@dataclass(frozen=True)
class CheckedModel:
    """A model downloaded and checked: load it from `local` only (its URI could give other
    bytes next time), within `loading()`."""

    uri: str  # as asked for
    local: Path
    model_id: str | None  # the LoggedModel it is, as the tracking server says (None: not one)

    @contextmanager
    def loading(self) -> Iterator[Path]:
        with deserialization.allowed():
            yield self.local


@dataclass(frozen=True)
class LoadPolicy:
    """How this process loads models others logged: checked against the shipped code of
    `package_dir`, unless the config trusts their authors (`trust.allow_pickle`)."""

    package_dir: Path
    allow_pickle: bool

    @classmethod
    def of(cls, config: ProjectConfig) -> "LoadPolicy":
        return cls(config.model_code.package_dir, config.trust.allow_pickle)

    def checked(self, model_uri: str, into: Path) -> CheckedModel:
        """`model_uri` downloaded into `into` (a new or empty directory) and checked; an
        UntrustedModelError in one line when loading it could run code not shipped here."""
        into.mkdir(parents=True, exist_ok=True)
        try:
            model_id = _logged_model_id(model_uri)
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(into)))
        except MlflowException as error:
            reason = " ".join(error.message.split())
            raise PromotionError(f"model {model_uri} cannot be read: {reason}") from None
        # Compiled files that came with the model: Python would run one instead of the
        # source checked below (MLflow copies them when the logging process had imported
        # that code).
        for compiled in sorted(local.rglob("__pycache__"), reverse=True):
            shutil.rmtree(compiled)
        trusted = TrustedCode.of_checkout(self.package_dir)
        if not self.allow_pickle and (why := refusal(local, trusted)):
            raise UntrustedModelError(
                f"model {model_uri} refused: {why}; load it only if you trust whoever logged "
                "it (-P allow_pickle=true)"
            )
        return CheckedModel(model_uri, local, model_id)


def _logged_model_id(model_uri: str) -> str | None:
    """The LoggedModel behind `models:/<id>`, `models:/<name>/<version>` or
    `models:/<name>@<alias>`, as the tracking server records it; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    target = model_uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    if "@" in target:
        name, alias = target.split("@", 1)
        return client.get_model_version_by_alias(name, alias).model_id
    if "/" in target:
        name, version = target.rsplit("/", 1)
        return client.get_model_version(name, version).model_id
    return client.get_logged_model(target).model_id


def refusal(model_dir: Path, code: TrustedCode) -> str | None:
    """Why loading the model in `model_dir` could run code or install packages this
    project did not ship; None when it cannot."""
    try:
        _Inspection(model_dir.resolve(), code).model(model_dir.resolve())
    except _Refused as refused:
        return str(refused)
    return None


class _Refused(Exception):
    pass


@dataclass(frozen=True)
class _Inspection:
    root: Path  # the downloaded model
    code: TrustedCode

    def model(self, directory: Path) -> None:
        """What each flavor's loader reads, then every file of the model in `directory`;
        a model nested in its artifacts (the pipeline's stock face) is inspected as one."""
        flavors = self._flavors(directory)
        if unknown := sorted(set(flavors) - {PYFUNC, SKLEARN}):
            raise _Refused(f"it has flavor {unknown[0]!r}, which this project does not load")
        if SKLEARN in flavors:
            self._sklearn(flavors[SKLEARN], directory)
        if PYFUNC in flavors:
            self._pyfunc(flavors[PYFUNC], SKLEARN in flavors, directory)
        nested = {found.parent for found in directory.rglob("MLmodel")} - {directory}
        outermost = {inner for inner in nested if not nested & set(inner.parents)}
        for path in sorted(directory.rglob("*")):
            if not outermost & ({path} | set(path.parents)):
                self._file(path)
        self._environment(directory)
        for inner in sorted(outermost):
            self.model(inner)

    def _flavors(self, directory: Path) -> dict[str, Any]:
        mlmodel = directory / "MLmodel"
        if not mlmodel.is_file():
            raise _Refused(f"{self._shown(directory)} holds no MLmodel file")
        try:
            flavors = yaml.safe_load(mlmodel.read_text())["flavors"]
        except Exception:  # whatever is wrong with it, nothing can be judged from it
            flavors = None
        if not isinstance(flavors, dict):
            raise _Refused(f"{self._shown(mlmodel)} is not a valid MLmodel file")
        return flavors

    def _sklearn(self, settings: dict[str, Any], directory: Path) -> None:
        if settings.get("serialization_format") != "skops":
            raise _Refused(
                f"its pipeline is saved with {settings.get('serialization_format')!r}, not "
                "skops: loading it runs code of whoever logged it"
            )
        self._inside(directory, settings.get("pickled_model"))

    def _pyfunc(self, settings: dict[str, Any], has_sklearn: bool, directory: Path) -> None:
        loader = settings.get("loader_module")
        if loader == SKLEARN_LOADER:
            if not has_sklearn:  # MLflow would then read its file as a plain pickle
                raise _Refused("its python_function loads a pipeline with no sklearn flavor")
            self._inside(directory, settings.get("model_path"))
            return
        if loader not in CODE_LOADERS:
            raise _Refused(f"its python_function loader is {loader!r}, not one this project uses")
        if "python_model" in settings:
            raise _Refused(
                "its python_function model is a cloudpickle (python_model): loading it runs "
                "code of whoever logged it"
            )
        if "model_code_path" not in settings:
            raise _Refused("its python_function model names no code to load")
        # MLflow runs the file of that name in the model's directory (mlflow.pyfunc.model).
        self._inside(directory, PurePosixPath(str(settings["model_code_path"])).name)
        if settings.get("code") not in (None, "code"):
            raise _Refused(f"its code path is {settings['code']!r}, not the model's code/")
        for artifact in (settings.get("artifacts") or {}).values():
            self._inside(directory, artifact.get("path") if isinstance(artifact, dict) else None)

    def _file(self, path: Path) -> None:
        shown = self._shown(path)
        if path.is_symlink():
            raise _Refused(f"it holds a symbolic link, {shown}")
        if path.is_dir():
            return
        if path.suffix == ".py":
            if not self.code.knows(path.read_bytes()):
                raise _Refused(f"{shown} is not code this project ships (custom_model/)")
        elif path.suffix == ".whl":
            self._wheel(path, shown)
        elif path.suffix == ".skops":
            _check_skops(path, shown, self.code.skops_types)
        elif path.suffix not in INERT_SUFFIXES and path.name not in INERT_NAMES:
            raise _Refused(f"it holds {shown}, a file a loader could run")

    def _wheel(self, path: Path, shown: str) -> None:
        try:
            with zipfile.ZipFile(path) as wheel:
                for member in wheel.infolist():
                    if not member.is_dir():
                        self._wheel_member(PurePosixPath(member.filename), wheel, member, shown)
        except zipfile.BadZipFile:
            raise _Refused(f"{shown} is not a wheel") from None

    def _wheel_member(
        self, name: PurePosixPath, wheel: zipfile.ZipFile, member: zipfile.ZipInfo, shown: str
    ) -> None:
        if name.parts[0] == PACKAGE and name.suffix == ".py":
            if not self.code.knows(wheel.read(member)):
                raise _Refused(f"{shown}: {name} is not code this project ships")
        elif name.parent.suffix == ".dist-info" and name.name in WHEEL_METADATA:
            if name.name == "METADATA":
                lines = wheel.read(member).decode("utf-8", "replace").splitlines()
                dependencies = [
                    line.partition(":")[2] for line in lines if line.startswith("Requires-Dist:")
                ]
                _check_requirements(dependencies, f"{shown}'s METADATA")
        else:
            raise _Refused(f"{shown} holds {name}, which pip would install")

    def _environment(self, directory: Path) -> None:
        """What `--env-manager virtualenv|conda|uv` would install for the model."""
        requirements = directory / "requirements.txt"
        if requirements.is_file():
            _check_requirements(requirements.read_text().splitlines(), self._shown(requirements))
        python_env = directory / "python_env.yaml"
        if python_env.is_file():
            shown = self._shown(python_env)
            settings = yaml.safe_load(python_env.read_text()) or {}
            _check_requirements(settings.get("build_dependencies") or [], shown, tools=True)
            if (settings.get("dependencies") or []) not in ([], ["-r requirements.txt"]):
                raise _Refused(f"{shown} installs more than requirements.txt")
        conda = directory / "conda.yaml"
        if conda.is_file():
            shown = self._shown(conda)
            settings = yaml.safe_load(conda.read_text()) or {}
            for dependency in settings.get("dependencies") or []:
                if isinstance(dependency, dict):
                    _check_requirements(dependency.get("pip") or [], shown)
                elif not CONDA_BASICS.match(str(dependency)):
                    raise _Refused(f"{shown} installs {dependency!r}")

    def _inside(self, directory: Path, relative: object) -> None:
        """A path an MLmodel names must be inside the model."""
        if not isinstance(relative, str) or not relative:
            raise _Refused(f"{self._shown(directory / 'MLmodel')} names no file to load")
        # A file that is missing is the loader's failure to report, not a risk.
        if self.root not in (directory / relative).resolve().parents:
            raise _Refused(f"its MLmodel names {relative!r}, which is not in the model")

    def _shown(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path != self.root else "the model"


def _check_skops(path: Path, shown: str, trusted: frozenset[str]) -> None:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception:  # not a zip, no schema: skops could not load it either
        raise _Refused(f"{shown} is not a readable skops file") from None
    if unknown := sorted(set(untrusted) - trusted):
        raise _Refused(f"{shown} holds type {unknown[0]}, which this project does not trust")


def _check_requirements(lines: list[str], where: str, tools: bool = False) -> None:
    allowed = ALLOWED_REQUIREMENTS | (ALLOWED_BUILD_TOOLS if tools else frozenset())
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        if SHIPPED_WHEEL.match(line):
            continue  # the model's own wheel, inspected with its files
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise _Refused(f"{where} asks pip for {line!r}") from None
        if requirement.url or canonicalize_name(requirement.name) not in allowed:
            raise _Refused(f"{where} installs {line!r}, which this project's models do not need")
