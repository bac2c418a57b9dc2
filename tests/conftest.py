import atexit
import fcntl
import gc
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models.model import ModelInfo

from tabular_mlops.core.config import ProjectConfig, load_config
from team_stack.settings import (
    ADMIN,
    ADMIN_PASSWORD_VARIABLE,
    PROXIED_DOWNLOADS,
    SERVICES,
    StackError,
    StackSettings,
    postgres_bin_dir,
)
from team_stack.stack import LocalStack
from test_support.servers import model_server
from test_support.stack import stack_environment

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHURN_CONFIG = PROJECT_DIR / "config" / "churn.yaml"
# `-P config=...` of end-to-end tests that check wiring, not model quality (tests/fast.yaml).
FAST_CONFIG_FILE = Path("tests") / "fast.yaml"
FAST_CONFIG = f"config={FAST_CONFIG_FILE}"
CHURN_CSV = PROJECT_DIR / "data" / "wa_churn.csv"
E2E_EXPERIMENT = "churn"  # what the README passes to `mlflow run --experiment-name`
SERVICE_URI = "models:/churn-service@champion"  # what `custom_model` registers
STACK_SERVER_TIMEOUT = 10  # seconds: the session stack's (team_stack.settings.StackSettings)


# Every JVM the suite starts (Spark's driver, a standalone cluster's daemons and executors)
# compiles with the quick JIT only and one GC thread: its jobs last seconds, and on two
# cores the optimizing JIT's threads took about 50 s of CPU in test_e2e_spark alone.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright downloads no browser here
TIERS = ("unit", "integration", "system")
# What a test marked so needs, and how to tell it is here; scripts/test.sh installs each.
NEEDS: dict[str, tuple[str, Callable[[], bool]]] = {
    "postgres": ("PostgreSQL server binaries", lambda: _has_postgres()),
    "spark": ("Java (Spark's JRE)", lambda: shutil.which("java") is not None),
    "browser": ("chromium (apt-get install chromium)", lambda: CHROMIUM.exists()),
    "nginx": ("nginx (apt-get install nginx)", lambda: Path("/usr/sbin/nginx").exists()),
}
# The slowest modules, slowest first (`--durations` of a whole run): in processes that each
# take a whole module at a time, in collection order, handing out the longest first keeps
# them all busy to the end.
SLOWEST_MODULES = (
    "test_e2e_stack",
    "test_e2e_main",
    "test_faults",
    "test_e2e_spark",
    "test_e2e_train_basic",
    "test_e2e_custom_model",
    "test_monitor",
    "test_e2e_clients",
    "test_register",
    "test_e2e_track",
    "test_delivery",
    "test_custom_model",
    "test_track",
    "test_e2e_interrupts",
    "test_e2e_batch_score",
    "test_attacks",
    "test_interrupts",
    "test_e2e_register",
    "test_stores",
    "test_alias_moves",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked with no tier is a unit test, and one marked with two is an error;
    modules by the cost above (the rest after, in file order), tests within a module in
    their order (some build on each other)."""
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} has several tiers: {', '.join(tiers)}")
        if not tiers:
            item.add_marker(pytest.mark.unit)
    rank = {name: position for position, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (MLflow, pandas, scikit-learn...) lives to the end of the
    session: out of the cyclic collector's way, as a step's imports are
    (runtime.interrupts). test_register.py and test_custom_model.py in one process, twice
    each way: 3 to 7% less CPU."""
    gc.collect()
    gc.freeze()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test whose need (a marker of NEEDS) is missing is skipped, or fails under CI."""
    for marker, (what, present) in NEEDS.items():
        if item.get_closest_marker(marker) and not present():
            missing_tool(what)


def _has_postgres() -> bool:
    try:
        postgres_bin_dir()
    except StackError:
        return False
    return True


@pytest.fixture(autouse=True)
def no_run_left() -> Iterator[None]:
    """Every test ends as a fresh process starts: no active run, no MLFLOW_EXPERIMENT_ID
    (mlflow.set_experiment, which the steps call in process, puts it in os.environ, and a
    later test's subprocess would look for that experiment in its own new store)."""
    yield
    leave_no_run_behind()


@pytest.fixture(autouse=True)
def no_fake_dbutils_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """MLflow puts a fake `dbutils` module in sys.modules while it loads a model from code
    (the custom model), and two loads at once can leave it there (its context manager,
    mlflow.models.utils._mock_dbutils, is not thread-safe; checked on MLflow 3.17.2).
    Hypothesis, scanning sys.modules, then fails on its `__file__` in a later test of the
    same process (seen once in CI). Removed, and named, after the test that left it.
    Canary: tests/test_workarounds.py::
    test_mlflow_still_fakes_dbutils_while_it_loads_a_model_from_code."""
    yield
    module = sys.modules.get("dbutils")
    if type(module).__name__ == "MockDbutils":
        del sys.modules["dbutils"]
        warnings.warn(f"{request.node.nodeid} left MLflow's fake dbutils module", stacklevel=1)


def shipped_config(overrides: dict[str, object] | None = None) -> ProjectConfig:
    """The shipped config, as `mlflow run` from the project gives it (its paths absolute;
    the models' code built once per session)."""
    return _absolute(CHURN_CONFIG, overrides)


def fast_config(overrides: dict[str, object] | None = None) -> ProjectConfig:
    """tests/fast.yaml (FAST_CONFIG), its paths absolute as in `shipped_config`."""
    return _absolute(PROJECT_DIR / FAST_CONFIG_FILE, overrides)


def _absolute(config: Path, overrides: dict[str, object] | None) -> ProjectConfig:
    paths = {
        "data.path": str(CHURN_CSV),
        "model_code.package_dir": str(PROJECT_DIR / "custom_model"),
        "model_code.wheel_dir": str(session_wheel_dir()),
    }
    return load_config(config, paths | (overrides or {}))


def shipped_config_file(directory: Path) -> Path:
    """A config file in `directory` that is the shipped one with its paths absolute, for a
    step run in process from another folder (relative paths are relative to where a step
    runs: the project under `mlflow run`)."""
    config = shipped_config()
    path = directory / "shipped-absolute.yaml"
    settings = {
        "extends": str(CHURN_CONFIG),
        "data": {"path": str(config.data.path)},
        "model_code": {
            "package_dir": str(config.model_code.package_dir),
            "wheel_dir": str(config.model_code.wheel_dir),
        },
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@cache
def session_wheel_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="tabular-mlops-wheels-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


@cache
def _churn_frame() -> pd.DataFrame:
    return pd.read_csv(CHURN_CSV)


def churn_frame() -> pd.DataFrame:
    """The shipped table, a fresh copy each call."""
    return _churn_frame().copy()


def churn_settings() -> dict[str, Any]:
    """The shipped config as a dict, with absolute paths (see shipped_config)."""
    settings = yaml.safe_load(CHURN_CONFIG.read_text())
    settings["data"]["path"] = str(CHURN_CSV)
    settings["model_code"] = {
        "package_dir": str(PROJECT_DIR / "custom_model"),
        "wheel_dir": str(session_wheel_dir()),
    }
    return settings


def write_config(path: Path, settings: dict[str, Any], **changes: dict[str, Any]) -> Path:
    """Write `settings` with some sections' keys replaced, e.g. data={"target": "x"}."""
    settings = {section: dict(values) for section, values in settings.items()}
    for section, values in changes.items():
        settings.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(settings))
    return path


def mixed_table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A small table unlike the churn one: 0/1 target, bools, text, ints with gaps."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(rows)],
            "age": rng.integers(18, 90, rows),
            "income": rng.normal(50_000, 10_000, rows),
            "member": rng.random(rows) < 0.5,
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "region": rng.choice(["north", "south", None], rows),
            "label": rng.integers(0, 2, rows),
        }
    )
    frame.loc[::7, "income"] = np.nan
    return frame


@cache
def _empty_store() -> Path:
    """An empty sqlite store, created and migrated once per session."""
    directory = Path(tempfile.mkdtemp(prefix="tabular-mlops-empty-store-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=sqlite_uri(path)).search_experiments()
    return path


def new_store(directory: Path) -> str:
    """The URI of a new, empty sqlite store in `directory`: a copy of one made once, which
    saves each test the 1-2 s MLflow takes to create and migrate a store."""
    path = directory / "mlflow.db"
    shutil.copyfile(_empty_store(), path)
    # The Default experiment keeps its artifacts where the store was made: move them here.
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(directory / "mlruns" / "0"),),
        )
    return sqlite_uri(path)


def point_mlflow_at(directory: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Use the sqlite store in `directory` (a new one if there is none), which becomes the
    working directory (where artifacts land), as a fresh process would."""
    monkeypatch.chdir(directory)
    existing = directory / "mlflow.db"
    uri = sqlite_uri(existing) if existing.exists() else new_store(directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # mlflow.set_experiment keeps the experiment in a module global and in the
    # environment: each test starts like a fresh process, and leaves nothing behind.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return uri


def pickled_copy_of(run_id: str, experiment: str = "pickled") -> ModelInfo:
    """A new run like `run_id` (same params and tags, so the same data and split), whose
    pipeline is logged with cloudpickle instead of skops."""
    source = mlflow.get_run(run_id)
    model_uri = source.data.tags["model_uri"]
    pipeline = mlflow.sklearn.load_model(model_uri)
    example = mlflow.pyfunc.load_model(model_uri).input_example
    tags = {key: value for key, value in source.data.tags.items() if "." not in key}
    experiment_id = mlflow.MlflowClient().create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags):
        mlflow.log_params(source.data.params)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            input_example=example,
        )
        mlflow.set_tag("model_uri", info.model_uri)
    return info


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with both registered models, as `train_basic` (60 trees) and `custom_model`
    (no isolated check) make them in this process: churn-classifier version 1 with
    `latest-model`, churn-service version 1 with `champion`. Made once for the whole session,
    whichever test process comes first (the others wait on its lock); modules copy it
    (`copy_of_trained_store`) rather than train their own."""
    # Under xdist each worker's base is inside the session's folder; alone, the base is.
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = session / "trained-store"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process has made it, or sees it
        if not (shared / "ready").exists():
            from tabular_mlops.jobs.train import train_basic
            from tabular_mlops.jobs.wrap import custom_model

            config = shipped_config(
                {"model.n_estimators": 60, "custom_model.check_env_manager": "none"}
            )
            with pytest.MonkeyPatch.context() as monkeypatch:
                point_mlflow_at(shared, monkeypatch)
                train_basic(config)
                custom_model(config)
                leave_no_run_behind()
            (shared / "ready").touch()
    return shared


def copy_of_trained_store(trained_store: Path, directory: Path) -> str:
    """The trained store's models in a store of `directory`'s own (its artifacts stay where
    they were made, shared, read-only for the copies' runs to find); its URI."""
    shutil.copyfile(trained_store / "mlflow.db", directory / "mlflow.db")
    return sqlite_uri(directory / "mlflow.db")


def leave_no_run_behind() -> None:
    if mlflow.active_run():  # a failed assertion inside a run must not leak into the next test
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store; the working directory is tmp_path, where artifacts land."""
    return point_mlflow_at(tmp_path, monkeypatch)


def missing_tool(what: str) -> None:
    """A test cannot run without `what`: under CI (CI=true) that fails the suite, since
    scripts/test.sh installs it; elsewhere the test is skipped with the reason."""
    reason = f"{what} not found (scripts/test.sh installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# The team stack (scripts/stack.sh): PostgreSQL, SeaweedFS and `mlflow server` with auth.

TRAINER, VIEWER = "trainer", "viewer"


@dataclass(frozen=True)
class TeamStack:
    """The session's local stack, its admin and two users (a trainer and a viewer)."""

    environment: dict[str, str]  # what `scripts/stack.sh` is given: STACK_*, admin password
    passwords: dict[str, str]  # user -> password, the admin's included
    up_seconds: float  # `scripts/stack.sh up` on a new folder, until all of it answered

    @property
    def local(self) -> LocalStack:
        return LocalStack(StackSettings.from_environment(self.environment), self.environment)

    @property
    def tracking_uri(self) -> str:
        return self.local.settings.tracking_uri

    def as_user(self, user: str) -> dict[str, str]:
        """The variables a user sets to work against the stack."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.passwords[user],
            PROXIED_DOWNLOADS: "false",
        }

    def script(self, *arguments: str, extra_env: dict[str, str] | None = None):
        """`scripts/stack.sh ARGUMENTS` as a user runs it."""
        return subprocess.run(
            [str(PROJECT_DIR / "scripts" / "stack.sh"), *arguments],
            env=users_environment() | self.environment | (extra_env or {}),
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def team_stack() -> Iterator[TeamStack]:
    """`scripts/stack.sh up` in a new folder on free ports, with a trainer and a viewer
    made by `scripts/stack.sh user`; gone at the end of the module."""
    if not _has_postgres():
        missing_tool("PostgreSQL server binaries")
    root = Path(tempfile.mkdtemp(prefix="tabular-mlops-stack-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach its folder
    # A short server timeout: tests/test_e2e_stack.py freezes the database past it.
    environment = stack_environment(root) | {"STACK_SERVER_TIMEOUT": str(STACK_SERVER_TIMEOUT)}
    passwords = {ADMIN: environment[ADMIN_PASSWORD_VARIABLE]}
    stack = TeamStack(environment, passwords, up_seconds=0.0)
    started = time.monotonic()
    up = stack.script("up")
    up_seconds = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        admin = stack.as_user(ADMIN)
        passwords |= {user: secrets.token_urlsafe(16) for user in (TRAINER, VIEWER)}
        with ThreadPoolExecutor(2) as pool:
            made = pool.map(
                lambda user: stack.script(
                    "user", user, user, extra_env=admin | {"USER_PASSWORD": passwords[user]}
                ),
                (TRAINER, VIEWER),
            )
            for done in made:
                assert done.returncode == 0, done.stderr[-3000:]
        yield TeamStack(environment, passwords, up_seconds)
    finally:
        # `down` is tested (test_e2e_stack.py); here the stack just goes, at once.
        for service in SERVICES:
            if pid := stack.local.running_pid(service):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


# End-to-end helpers: the real `mlflow run` on a committed copy of the project.

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (tracked or new, not ignored) committed in a fresh repository."""
    return copy_of_project(tmp_path_factory.mktemp("project"))


def copy_of_project(copy: Path) -> Path:
    """The project's files (tracked or new, not ignored) committed in a new repository
    in `copy`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        source = PROJECT_DIR / name
        if source.is_file():  # deleted but not yet committed files are listed too
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    env = os.environ | _GIT_IDENTITY
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(["git", *command], cwd=copy, env=env, check=True)
    return copy


def mlflow_run(
    project: Path,
    tracking_uri: str | None,
    entry_point: str,
    *parameters: str,
    env_manager: str = "local",
    experiment: str = E2E_EXPERIMENT,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`mlflow run` as a user types it; `local` uses this venv (and its `uv`). With
    `tracking_uri` None, MLflow's default applies: ./mlflow.db in the project."""
    env = mlflow_run_environment(project, tracking_uri) | (extra_env or {})
    command = [sys.executable, "-m", *mlflow_run_command(str(project), entry_point, env_manager)]
    command += ["--experiment-name", experiment]
    for parameter in parameters:
        command += ["-P", parameter]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900
    )


def mlflow_run_command(project: str, entry_point: str, env_manager: str = "local") -> list[str]:
    """`mlflow run` of `entry_point` as the README types it (`main` is MLflow's default
    entry point: `mlflow run .`); tests/test_docs.py holds the README to it."""
    chosen = [] if entry_point == "main" else ["-e", entry_point]
    return ["mlflow", "run", project, *chosen, "--env-manager", env_manager]


def mlflow_run_environment(project: Path, tracking_uri: str | None) -> dict[str, str]:
    """The environment `mlflow run` is given: a user's, with this venv first on PATH, the
    session's environment root and `tracking_uri` (None: MLflow's default)."""
    env = users_environment() | {
        "MLFLOW_ENV_ROOT": str(session_env_root(project)),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    # What an in-process test may have left (mlflow.set_experiment sets it), a shell not.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    return env | ({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})


def users_environment() -> dict[str, str]:
    """This environment as a user's shell has it. PYTHONDONTWRITEBYTECODE (set on some CI
    machines) is dropped: uv installs environments without bytecode, so with it every
    process in a uv environment would compile each module it imports, every time (about
    10 s a process)."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def session_env_root(project: Path) -> Path:
    """MLFLOW_ENV_ROOT of the whole test session: each environment is built once."""
    return project.parent / "mlflow-envs"


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def use_store(tracking_uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient()


# Serving helpers: `mlflow models serve` and HTTP calls to it.


@contextmanager
def served(
    store: str,
    env_manager: str,
    env_root: Path,
    log_dir: Path,
    model_uri: str = SERVICE_URI,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """`mlflow models serve -m <model_uri>` on a loopback port."""
    environment = (
        users_environment()
        | {
            "MLFLOW_TRACKING_URI": store,
            "MLFLOW_ENV_ROOT": str(env_root),
        }
        | (extra_env or {})
    )
    log = log_dir / f"serve-{env_manager}.log"
    with model_server(model_uri, env_manager, log, environment) as url:
        yield url


def post(url: str, body: bytes, content_type: str) -> tuple[int, Any]:
    """POST to /invocations: the status and the JSON answer (or the text, if not JSON)."""
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()
