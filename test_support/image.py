"""What the serving image runs, run here without a container engine (tests and
`python -m bench.image`): the Dockerfile read, its installs in a fresh virtual environment,
its entrypoint started on the model directory, and Debian's nginx in front of it with the
serving proxy's own configuration (deploy/serving/nginx.conf.template)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

from test_support.servers import LOOPBACK, PROJECT_DIR, background_server, free_port

DOCKERFILE = PROJECT_DIR / "deploy" / "model" / "Dockerfile"
PROXY_TEMPLATE = PROJECT_DIR / "deploy" / "serving" / "nginx.conf.template"
SERVING_COMPOSE = PROJECT_DIR / "deploy" / "serving" / "docker-compose.yml"
NGINX = Path("/usr/sbin/nginx")


@dataclass(frozen=True)
class Dockerfile:
    """A Dockerfile's instructions, in order: (INSTRUCTION, its arguments as written)."""

    instructions: list[tuple[str, str]]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> "Dockerfile":
        text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines joined
        instructions = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, arguments = line.partition(" ")
                instructions.append((keyword.upper(), arguments.strip()))
        return cls(instructions)

    def all(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]

    def one(self, keyword: str) -> str:
        (found,) = self.all(keyword)
        return found

    def environment(self) -> dict[str, str]:
        """Every ENV, as KEY=VALUE pairs."""
        pairs: dict[str, str] = {}
        for arguments in self.all("ENV"):
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                pairs[key] = value
        return pairs

    def entrypoint(self) -> list[str]:
        import json

        return list(json.loads(self.one("ENTRYPOINT")))


def clean_environment(context: Path, venv: Path) -> Path:
    """A new virtual environment with exactly what the image installs (the context's
    requirements at the lock's versions), by uv from its cache; its python."""
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [*uv, "pip", "install", "-q", "--python", str(python)]
    install += ["-r", "requirements.txt", "-c", "constraints.txt"]
    subprocess.run(install, cwd=context, check=True, timeout=600)
    return python


@contextmanager
def entrypoint_server(
    python: Path, model_dir: Path, log: Path, compose: bool = False
) -> Iterator[str]:
    """The image's ENTRYPOINT with the image's ENV (and, with `compose`, the serving compose
    file's environment of the model service), run by `python` on `model_dir`; yields its
    URL. Two assignments go before the entrypoint's own code: the model directory (the
    image's is /opt/ml/model) and the port (the image's is 8000, taken here maybe)."""
    image = Dockerfile.read()
    command = image.entrypoint()
    assert command[:2] == ["python", "-c"], command
    port = free_port()
    patched = (
        "import mlflow.models.container as container; "
        f"container.MODEL_PATH = {str(model_dir)!r}; "
        f"container.DEFAULT_INFERENCE_SERVER_PORT = {port}; " + command[2]
    )
    environment = {"PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    environment |= {"HOME": os.environ.get("HOME", "/tmp")}
    environment |= image.environment() | (compose_environment() if compose else {})
    environment |= {"UVICORN_HOST": LOOPBACK}  # loopback here
    url = f"http://{LOOPBACK}:{port}"
    with background_server([str(python), "-c", patched], f"{url}/ping", log, 120, environment):
        yield url


def compose_environment() -> dict[str, str]:
    """The serving compose file's environment of the model service."""
    import yaml

    services = yaml.safe_load(SERVING_COMPOSE.read_text())["services"]
    return {key: str(value) for key, value in services["model"].get("environment", {}).items()}


def proxy_configuration(upstream: str, listen: str, max_concurrent: int) -> str:
    """The serving proxy's template with what the nginx image would substitute."""
    values = {"MODEL_UPSTREAM": upstream, "LISTEN": listen, "MAX_CONCURRENT": str(max_concurrent)}
    return Template(PROXY_TEMPLATE.read_text()).safe_substitute(values)


@contextmanager
def nginx_proxy(upstream_url: str, directory: Path, max_concurrent: int) -> Iterator[str]:
    """Debian's nginx with deploy/serving's configuration in front of `upstream_url`, in
    `directory` (its main file is what the official image's is: this process's logs and
    temporary files); yields its URL."""
    if not NGINX.exists():
        raise FileNotFoundError(NGINX)
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "serving.conf").write_text(
        proxy_configuration(
            upstream_url.removeprefix("http://"), f"{LOOPBACK}:{port}", max_concurrent
        )
    )
    temporary = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (directory / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\n"
        # As root, nginx would run its worker as nobody, who cannot reach this folder.
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {directory / 'access.log'};\n"
        f"  client_body_temp_path {temporary['body']};\n"
        f"  proxy_temp_path {temporary['proxy']};\n"
        f"  fastcgi_temp_path {temporary['fastcgi']};\n"
        f"  uwsgi_temp_path {temporary['uwsgi']};\n"
        f"  scgi_temp_path {temporary['scgi']};\n"
        f"  include {directory / 'serving.conf'};\n"
        "}\n"
    )
    url = f"http://{LOOPBACK}:{port}"
    command = [str(NGINX), "-p", str(directory), "-c", str(directory / "nginx.conf")]
    with background_server(command, f"{url}/ping", directory / "nginx.out", 30):
        yield url


def nginx_missing() -> bool:
    return not NGINX.exists() and shutil.which("nginx") is None
