"""A team's MLflow stack on one machine, without Docker: PostgreSQL (the tracking, auth and
Optuna databases), SeaweedFS (the S3-compatible artifact store) and `mlflow server` with
basic auth in front of them. Every port is on 127.0.0.1 and all state is under one folder.

    python -m team_stack.stack up | down | status          (scripts/stack.sh)

`up` starts what is not running, waits until each service answers and prints what a user
sets; `down` stops what `up` started (its PID files), keeping the data; both can be
repeated. Settings come from the environment (see `StackSettings`). The admin's password is
MLFLOW_AUTH_ADMIN_PASSWORD, never a default; the other secrets (database and object-store
passwords, Flask's key) are generated at the first `up` and kept in <root>/secrets/ (mode
600). Clients get only the tracking URI: the object-store keys stay with the server.

deploy/docker-compose.yml runs the same stack on a host with Docker.
"""

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from tabular_mlops.runtime import processes
from team_stack import postgres, seaweedfs
from team_stack.settings import (
    ADMIN,
    ADMIN_PASSWORD_VARIABLE,
    AUTH_CACHE_SECONDS,
    LOOPBACK,
    OBJECT_STORE,
    OPTUNA_DATABASE,
    PASSED_THROUGH,
    POSTGRES,
    PROXIED_DOWNLOADS,
    SEAWEEDFS_PORTS,
    SERVICES,
    START_TIMEOUT,
    TRACKING_SERVER,
    Secrets,
    Service,
    ServiceState,
    StackError,
    StackSettings,
    as_user,
    postgres_bin_dir,
    postgres_user,
    private_folder,
    write_private,
)

logger = logging.getLogger(__name__)


class LocalStack:
    """The stack under `settings.root`: start, stop and inspect it."""

    def __init__(self, settings: StackSettings, environ: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.secrets = Secrets(settings.root)
        self.run_dir = settings.root / "run"
        self.log_dir = settings.root / "logs"

    # What runs.

    def ports(self, service: Service) -> tuple[int, ...]:
        settings = self.settings
        if service is POSTGRES:
            return (settings.postgres_port,)
        if service is OBJECT_STORE:
            return tuple(range(settings.s3_port, settings.s3_port + 1 + SEAWEEDFS_PORTS))
        return (settings.mlflow_port,)

    def running_pid(self, service: Service) -> int | None:
        """The pid `up` recorded for `service` if that process still runs; a PID file left
        by a process that ended (or whose pid was reused) is removed, with one line."""
        path = self._pid_file(service)
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except FileNotFoundError:
            return None
        except ValueError:
            pid, started = 0, ""
        if pid and processes.is_alive(pid) and processes.start_time(pid) == started:
            return pid
        logger.warning(
            "%s: stale PID file %s (pid %s no longer runs): removed", service.name, path, pid
        )
        path.unlink(missing_ok=True)
        return None

    def status(self) -> list[ServiceState]:
        return [ServiceState(s, self.running_pid(s), self.ports(s)) for s in SERVICES]

    # Up.

    def up(self) -> float:
        """Start what is not running and wait until all of it answers: the seconds taken."""
        started = time.monotonic()
        # Only its owner (and, as root, PostgreSQL's user, to reach its data) may enter.
        private_folder(self.settings.root, group=postgres_user())
        admin_password = self.environ.get(ADMIN_PASSWORD_VARIABLE)
        if not admin_password:
            raise StackError(
                f"{ADMIN_PASSWORD_VARIABLE} is not set: the stack's admin password comes from "
                "the environment (there is no default)"
            )
        commands: dict[Service, Callable[[], None]] = {
            POSTGRES: self._start_postgres,
            OBJECT_STORE: self._start_object_store,
            TRACKING_SERVER: lambda: self._start_tracking_server(admin_password),
        }
        for service in SERVICES:
            if pid := self.running_pid(service):
                logger.info("%s: already running (pid %d)", service.name, pid)
            else:
                self._check_ports_free(service)
                commands[service]()
        self._wait_for_postgres()
        self._create_databases()
        self._create_bucket()
        self._wait_for_tracking_server()
        return time.monotonic() - started

    def _start_postgres(self) -> None:
        bin_dir = postgres_bin_dir(self.environ)
        data = self.settings.root / "postgres"
        as_postgres = postgres_user()
        if (data / "PG_VERSION").exists() and not (
            self.secrets.folder / "mlflow_database"
        ).exists():
            raise StackError(
                f"the PostgreSQL cluster in {data} was made by an older scripts/stack.sh, whose "
                "tracking server connected as its superuser: run `scripts/stack.sh down`, move "
                f"{self.settings.root} aside, and `up` again"
            )
        if not (data / "PG_VERSION").exists():
            self.secrets["mlflow_database"]  # made first: it marks a cluster of this layout
            postgres.init_cluster(bin_dir, data, as_postgres, self.secrets["postgres"])
        command = [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.settings.postgres_port),
        ]
        command += ["-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories="]
        self._spawn(POSTGRES, command, user=as_postgres)

    def _start_object_store(self) -> None:
        command = seaweedfs.server_command(self.settings, self.secrets, self.ports(OBJECT_STORE))
        environment = self._inherited_environment() | seaweedfs.environment(self.secrets)
        self._spawn(OBJECT_STORE, command, env=environment)

    def _start_tracking_server(self, admin_password: str) -> None:
        settings = self.settings
        auth_config = settings.root / "basic_auth.ini"
        # NO_PERMISSIONS: a user sees only what they were granted (team_stack.access).
        # The credential cache: checking a password costs ~0.1 s of CPU (scrypt), paid on
        # every request without it; with it, a password changed or a user deleted may
        # still work for up to a minute on the other worker.
        write_private(
            auth_config,
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {settings.database_uri('mlflow_auth')}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n",
        )
        command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
        command += ["--host", LOOPBACK, "--port", str(settings.mlflow_port)]
        command += [
            "--workers",
            str(settings.workers),
            "--gunicorn-opts",
            settings.gunicorn_options,
        ]
        command += ["--backend-store-uri", settings.database_uri("mlflow")]
        command += ["--artifacts-destination", f"s3://{settings.bucket}/", "--serve-artifacts"]
        # Secrets by environment, not on the command line (which `ps` shows to everyone).
        env = self._server_environment() | {
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            ADMIN_PASSWORD_VARIABLE: admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secrets["flask"],
            # MLflow 3's job runner (GenAI scorers) starts five processes this stack never uses.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self._spawn(TRACKING_SERVER, command, env=env)

    def _inherited_environment(self) -> dict[str, str]:
        """What every service starts from: the caller's locale, paths and home, nothing
        else (no login, key or password of the caller's reaches a service)."""
        return {
            key: value
            for key, value in self.environ.items()
            if key in PASSED_THROUGH or key.startswith("LC_")
        }

    def _server_environment(self) -> dict[str, str]:
        """What the tracking server (and only it) holds: database and object-store access."""
        return self._inherited_environment() | {
            "PGPASSWORD": self.secrets["mlflow_database"],
            "MLFLOW_S3_ENDPOINT_URL": self.settings.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.secrets["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": self.secrets["s3_secret_key"],
            "AWS_DEFAULT_REGION": seaweedfs.REGION,
        }

    def _spawn(
        self,
        service: Service,
        command: list[str],
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        with log_path.open("a") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or self._inherited_environment(),
                **as_user(user),
                start_new_session=True,  # its own group: `down` stops it with its children
            )
        started = processes.start_time(process.pid) or ""
        self._pid_file(service).write_text(f"{process.pid} {started}\n")
        logger.info("%s: started (pid %d), log %s", service.name, process.pid, log_path)

    def _check_ports_free(self, service: Service) -> None:
        for port in self.ports(service):
            with socket.socket() as probe:
                # As servers bind: connections of a stopped server (TIME_WAIT) do not count.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((LOOPBACK, port))
                except OSError:
                    raise StackError(
                        f"{service.name}: port {port} is in use by another process: "
                        f"set {service.port_variable} to a free port"
                    ) from None

    # Waiting until each answers.

    def _wait(self, service: Service, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if self.running_pid(service) is None:
                log = self.log_dir / f"{service.name}.log"
                raise StackError(f"{service.name} exited: {_last_line(log)} (log: {log})")
            if time.monotonic() > deadline:
                raise StackError(f"{service.name} did not answer in {START_TIMEOUT:.0f} s")
            time.sleep(0.5)

    def _wait_for_postgres(self) -> None:
        import psycopg

        def ready() -> bool:
            try:
                postgres.connect(self.settings, self.secrets).close()
            except psycopg.OperationalError:
                return False
            return True

        self._wait(POSTGRES, ready)

    def _create_databases(self) -> None:
        postgres.create_databases(self.settings, self.secrets)

    def _create_bucket(self) -> None:
        environment = self._server_environment()
        client = seaweedfs.s3_client(
            self.settings, environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]
        )
        self._wait(OBJECT_STORE, lambda: seaweedfs.bucket_ready(client, self.settings.bucket))

    def _wait_for_tracking_server(self) -> None:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.settings.tracking_uri}/health", timeout=5):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        self._wait(TRACKING_SERVER, ready)

    # Down.

    def down(self) -> None:
        """Stop what `up` started, last started first; the data stays."""
        for service in reversed(SERVICES):
            self.stop(service)

    def stop(self, service: Service) -> None:
        """Stop one service, if `up` started it (`up` starts it again)."""
        pid = self.running_pid(service)
        if pid is None:
            logger.info("%s: not running", service.name)
            return
        logger.info("%s: stopping (pid %d)", service.name, pid)
        started = time.monotonic()
        _stop_group(pid, service)
        self._pid_file(service).unlink(missing_ok=True)
        logger.info("%s: stopped in %.1f s", service.name, time.monotonic() - started)

    def _pid_file(self, service: Service) -> Path:
        return self.run_dir / f"{service.name}.pid"

    def user_variables(self) -> str:
        """What a user sets to work against the stack (as the admin, until users exist)."""
        optuna_password = self.secrets.folder / OPTUNA_DATABASE
        return (
            f"export MLFLOW_TRACKING_URI={self.settings.tracking_uri}\n"
            f"export {PROXIED_DOWNLOADS}=false  # artifacts through the server, not the store\n"
            f"export MLFLOW_TRACKING_USERNAME={ADMIN}  # or a user of `scripts/stack.sh user`\n"
            "export MLFLOW_TRACKING_PASSWORD=...  # that user's password\n"
            "# Optuna studies shared by several `track` processes:\n"
            f"#   tuning.storage: {self.settings.optuna_storage}\n"
            f"#   export PGPASSWORD=$(cat {optuna_password})\n"
        )


def _stop_group(pid: int, service: Service) -> None:
    """Signal the process group `pid` leads; SIGKILL it if it outlives the grace period."""
    try:
        os.killpg(pid, service.stop_signal)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + service.stop_grace
    while processes.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):  # what is left: workers, a stuck server
        os.killpg(pid, signal.SIGKILL)
    while processes.is_alive(pid):
        time.sleep(0.1)


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1][-300:] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="stack: %(message)s")
    try:
        stack = LocalStack(StackSettings.from_environment())
        if args.command == "up":
            seconds = stack.up()
            print(f"stack: healthy in {seconds:.1f} s; tracking URI {stack.settings.tracking_uri}")
            print(stack.user_variables(), end="")
        elif args.command == "down":
            stack.down()
        else:
            states = stack.status()
            print("\n".join(state.line() for state in states))
            return 0 if all(state.pid for state in states) else 3
    except StackError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
