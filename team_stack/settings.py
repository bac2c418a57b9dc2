"""The team stack's settings (ports, folder, bucket), its services, its secrets and where
PostgreSQL's binaries are: what `team_stack.stack` starts and stops."""

import glob
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabular_mlops.core.errors import UserInputError

LOOPBACK = "127.0.0.1"
ADMIN = "admin"
ADMIN_PASSWORD_VARIABLE = "MLFLOW_AUTH_ADMIN_PASSWORD"
SUPERUSER = "postgres"  # the cluster's owner: used by `up` alone, to create the rest
DATABASE_USER = "mlflow"  # the tracking server's: owns its databases, not a superuser
DATABASES = ("mlflow", "mlflow_auth")  # tracking store, auth store
OPTUNA_DATABASE = "optuna"  # shared Optuna studies; its own role, for trainers
SEAWEEDFS_PORTS = 7  # master, volume, filer and their gRPC ports, the S3 gRPC port
# SeaweedFS's signing keys (its security.toml, by environment) -> the stack's secret names.
SEAWEEDFS_KEYS = {
    "WEED_JWT_SIGNING_KEY": "seaweedfs_volume_write",
    "WEED_JWT_SIGNING_READ_KEY": "seaweedfs_volume_read",
    "WEED_JWT_FILER_SIGNING_KEY": "seaweedfs_filer_write",
    "WEED_JWT_FILER_SIGNING_READ_KEY": "seaweedfs_filer_read",
}
# Under <root>/secrets/: the certificates SeaweedFS's internal ports demand (certificates.py).
SEAWEEDFS_TLS = "seaweedfs-tls"
# All a service takes from the environment of whoever starts the stack (and LC_*).
PASSED_THROUGH = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME"})
AUTH_CACHE_SECONDS = 60
# Without it, MLflow clients download artifacts from the store by presigned URLs, which
# only work where the store is reachable (not from outside deploy/docker-compose.yml).
PROXIED_DOWNLOADS = "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"
# Gunicorn, not MLflow's default uvicorn: with several workers, uvicorn's sockets miss
# TCP_NODELAY and a request on a kept-alive connection took ~45 ms here (~10 ms under
# gunicorn), and a chain makes ~550 of them (Kludex/uvicorn issue 3149, open; uvicorn as
# MLflow 3.17.2 installs it; canary: tests/test_workarounds.py::
# test_uvicorn_workers_still_delay_kept_alive_answers). No control socket in the home folder.
GUNICORN_OPTIONS = "--no-control-socket"
START_TIMEOUT = 180.0  # the tracking server alone takes ~20 s on 2 cores


class StackError(UserInputError):
    """What keeps the stack from starting or stopping, in one line."""


@dataclass(frozen=True)
class StackSettings:
    """Where the stack lives and listens; each has an environment variable."""

    root: Path  # STACK_DIR
    mlflow_port: int = 5000  # STACK_MLFLOW_PORT
    postgres_port: int = 15432  # STACK_POSTGRES_PORT
    s3_port: int = 18333  # STACK_S3_PORT; SeaweedFS also takes the next 7 ports
    bucket: str = "mlflow-artifacts"  # STACK_BUCKET
    workers: int = 2  # STACK_WORKERS: the tracking server's processes
    # STACK_SERVER_TIMEOUT: seconds before the server gives a request up (gunicorn kills its
    # worker; its database transaction is rolled back). Shorter than MLflow clients' 120 s
    # (MLFLOW_HTTP_REQUEST_TIMEOUT), so that a client retrying a write knows the first try
    # either happened or never will (tabular_mlops.mlflow.registry._create_version).
    server_timeout: int = 60

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "StackSettings":
        def port(variable: str, default: int) -> int:
            text = environ.get(variable, str(default))
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise StackError(f"{variable}={text!r} is not a whole number from 1 to 65535")
            return int(text)

        return cls(
            root=Path(environ.get("STACK_DIR", ".stack")).resolve(),
            mlflow_port=port("STACK_MLFLOW_PORT", cls.mlflow_port),
            postgres_port=port("STACK_POSTGRES_PORT", cls.postgres_port),
            s3_port=port("STACK_S3_PORT", cls.s3_port),
            bucket=environ.get("STACK_BUCKET", cls.bucket),
            workers=port("STACK_WORKERS", cls.workers),
            server_timeout=port("STACK_SERVER_TIMEOUT", cls.server_timeout),
        )

    @property
    def gunicorn_options(self) -> str:
        return f"{GUNICORN_OPTIONS} --timeout {self.server_timeout}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    def database_uri(self, database: str, user: str = DATABASE_USER) -> str:
        """A SQLAlchemy URL without password (libpq takes it from PGPASSWORD)."""
        return f"postgresql+psycopg://{user}@{LOOPBACK}:{self.postgres_port}/{database}"

    @property
    def optuna_storage(self) -> str:
        return self.database_uri(OPTUNA_DATABASE, user=OPTUNA_DATABASE)


class Secrets:
    """Generated secrets, one file each under <root>/secrets/ (a folder and files only the
    owner can read). A file is written whole or not at all (a temporary file renamed); an
    empty one is refused rather than used."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "secrets"

    def __getitem__(self, name: str) -> str:
        path = self.folder / name
        if not path.exists():
            private_folder(self.folder)
            partial = path.with_name(f".{name}.{os.getpid()}.partial")
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(24))
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(partial, path)  # never replaces a secret another process wrote
            except FileExistsError:
                pass
            finally:
                partial.unlink()
        value = path.read_text().strip()
        if not value:
            raise StackError(f"secret file {path} is empty: delete it to get a new secret")
        return value


def private_folder(folder: Path, group: str | None = None) -> None:
    """`folder` (and its parents) made if missing, then only its owner's: mode 0700, or
    0710 with `group` (who may then pass through it, and see nothing in it)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if group:
        shutil.chown(folder, group=group)
    os.chmod(folder, 0o710 if group else 0o700)


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack."""

    name: str
    port_variable: str  # what to change when its port is taken
    stop_signal: signal.Signals
    stop_grace: float  # seconds before SIGKILL


POSTGRES = Service("postgres", "STACK_POSTGRES_PORT", signal.SIGINT, 30)  # SIGINT: fast stop
# SeaweedFS gets 5 s: asked to stop, it writes nothing more, but its filer then waits 15 s
# for its own S3 gateway's stream to close (the tracking server, its only client, has
# stopped by then). Its data survives a SIGKILL: append-only volumes, a logged metadata store.
OBJECT_STORE = Service("seaweedfs", "STACK_S3_PORT", signal.SIGTERM, 5)
TRACKING_SERVER = Service("mlflow", "STACK_MLFLOW_PORT", signal.SIGTERM, 15)
SERVICES = (POSTGRES, OBJECT_STORE, TRACKING_SERVER)  # in starting order


@dataclass(frozen=True)
class ServiceState:
    service: Service
    pid: int | None  # None: not running
    ports: tuple[int, ...]

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.pid else "stopped"
        return f"{self.service.name:<10} {state:<22} {LOOPBACK}:{self.ports[0]}"


def postgres_bin_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of PostgreSQL's server binaries: STACK_PG_BIN, PATH or Debian's place."""
    if configured := environ.get("STACK_PG_BIN"):
        candidates = [str(Path(configured) / "initdb")]
    else:
        candidates = [
            shutil.which("initdb") or "",
            *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate).parent
    raise StackError(
        "PostgreSQL's initdb not found: install the `postgresql` package (Debian) or set "
        "STACK_PG_BIN to its bin folder"
    )


def postgres_user() -> str | None:
    """As root, PostgreSQL runs as `postgres` (it refuses to run as root)."""
    return "postgres" if os.geteuid() == 0 else None


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess options that run a process as `user` and its group only (without them,
    a process root starts keeps root's groups)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def reachable_by(user: str, folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["test", "-x", str(folder)], **as_user(user)).returncode == 0


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing any older one whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    partial.replace(path)
