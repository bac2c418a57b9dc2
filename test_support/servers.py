"""Run a model behind `mlflow models serve` (the project's checked way) on loopback, for as
long as a block lasts (used by the end-to-end tests and the benches; not part of the library)."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from tabular_mlops.mlflow.descriptions import SERVE_MODULE

LOOPBACK = "127.0.0.1"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_port_block(1)


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free loopback ports, below the kernel's ephemeral
    range: a port from that range can be taken, between this check and a server's bind, as
    the local end of any outgoing connection (a stack's SeaweedFS then failed to start)."""
    ephemeral_start = _ephemeral_ports()[0]
    for _ in range(100):
        first = random.randrange(10_000, ephemeral_start - size)
        try:
            with ExitStack() as probes:
                for port in range(first, first + size):
                    probes.enter_context(socket.socket()).bind((LOOPBACK, port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {size} consecutive free ports")


def _ephemeral_ports() -> tuple[int, int]:
    """Linux's range of ports for outgoing connections (its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


@contextmanager
def background_server(
    command: list[str],
    ready_url: str,
    log_path: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[None]:
    """Run `command` (in `cwd`) until the block ends, once `ready_url` answers; its log goes
    to `log_path`, and its child processes go down with it."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"{command[:5]} exited: {log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} did not answer in {timeout} s")
                try:
                    with urllib.request.urlopen(ready_url, timeout=5):
                        break
                except OSError:
                    time.sleep(0.5)
            yield
        finally:
            with suppress(ProcessLookupError):  # it exited on its own
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


@contextmanager
def model_server(
    model_uri: str,
    env_manager: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,  # uv builds the model's environment first
    options: Sequence[str] = (),  # of SERVE_MODULE: --config ...
) -> Iterator[str]:
    """`mlflow models serve` with one worker on a free loopback port, as the project
    documents it (SERVE_MODULE: the model checked first); yields its base URL.
    `--env-manager local` runs it with this interpreter's packages."""
    port = free_port()
    command = [sys.executable, "-m", SERVE_MODULE, model_uri, *options]
    command += ["-h", LOOPBACK, "-p", str(port), "-w", "1", "--env-manager", env_manager]
    # `--env-manager local` starts uvicorn from PATH: this interpreter's first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    environment = (env if env is not None else dict(os.environ)) | {"PATH": path}
    url = f"http://{LOOPBACK}:{port}"
    # From the project's directory, as a user types it: the shipped config and its code.
    with background_server(command, f"{url}/ping", log_path, timeout, environment, PROJECT_DIR):
        yield url
