"""End to end on the team stack (scripts/stack.sh: PostgreSQL, SeaweedFS, `mlflow server`
with basic auth): users and permissions; the whole chain as the trainer with
`--env-manager local`, with no secret leaked; the champion
served as the viewer; a study shared by two `track` workers; eight `train_basic` runs at
once; `down` and `up` keeping the data. The tests run in file order on one stack (the
session's `team_stack`)."""

import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
)

from tabular_mlops.core.config import load_config
from tabular_mlops.core.names import Tag
from tabular_mlops.runtime import processes
from team_stack.access import grant_role
from team_stack.certificates import Certificates
from team_stack.settings import (
    ADMIN,
    DATABASE_USER,
    OBJECT_STORE,
    OPTUNA_DATABASE,
    POSTGRES,
    SEAWEEDFS_TLS,
    SERVICES,
    SUPERUSER,
)
from test_support.stack import bucket_keys, scan_stack
from tests.conftest import (
    CHURN_CONFIG,
    E2E_EXPERIMENT,
    FAST_CONFIG,
    FAST_CONFIG_FILE,
    SERVICE_URI,
    STACK_SERVER_TIMEOUT,
    TRAINER,
    VIEWER,
    TeamStack,
    churn_frame,
    copy_of_project,
    mlflow_run,
    post,
    served,
    session_env_root,
)

pytestmark = [pytest.mark.system, pytest.mark.postgres]

CLASSIFIER = "churn-classifier"  # config/churn.yaml's registered models
STEPS = ("train_basic", "track", "register", "custom_model")
# Runs at once in the suite; `python -m bench.stack --concurrent 8` runs the figure the
# team stack was built for (8).
CONCURRENT_RUNS = 2
DENIED = r"PERMISSION_DENIED|403|[Pp]ermission denied"  # how MLflow reports a 403
SPARK_CANARY = "canary-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def stack_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the project for this module: it must end with no artifact on its disk."""
    return copy_of_project(tmp_path_factory.mktemp("stack-project"))


@pytest.fixture
def as_user(team_stack: TeamStack, monkeypatch: pytest.MonkeyPatch):
    """Switch this process's MLflow client to one of the stack's users."""

    def switch(user: str) -> mlflow.MlflowClient:
        for name, value in team_stack.as_user(user).items():
            monkeypatch.setenv(name, value)
        mlflow.set_tracking_uri(team_stack.tracking_uri)
        return mlflow.MlflowClient()

    return switch


def stack_run(
    team_stack: TeamStack,
    project: Path,
    user: str,
    entry_point: str,
    *parameters: str,
    env_manager: str = "local",
    experiment: str = E2E_EXPERIMENT,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`mlflow run` as `user` with the variables `scripts/stack.sh up` prints (and `env`)."""
    return mlflow_run(
        project,
        team_stack.tracking_uri,
        entry_point,
        *parameters,
        env_manager=env_manager,
        experiment=experiment,
        extra_env=team_stack.as_user(user) | env,
    )


def test_up_is_healthy_idempotent_and_on_loopback_only(team_stack: TeamStack) -> None:
    assert team_stack.up_seconds < 180
    again = team_stack.script("up")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already running") == len(SERVICES)
    assert f"export MLFLOW_TRACKING_URI={team_stack.tracking_uri}" in again.stdout
    status = team_stack.script("status")
    assert status.returncode == 0 and status.stdout.count("running (pid") == len(SERVICES)
    pids = [team_stack.local.running_pid(service) for service in SERVICES]
    addresses = listening_addresses(pids)
    assert team_stack.local.settings.mlflow_port in {port for _, port in addresses}
    assert {host for host, _ in addresses} == {"127.0.0.1"}


def test_anonymous_requests_get_401_everywhere_but_health(team_stack: TeamStack) -> None:
    uri = team_stack.tracking_uri
    assert status_of(f"{uri}/health") == 200
    for path in (
        "/",
        "/api/2.0/mlflow/experiments/search?max_results=1",
        "/api/2.0/mlflow/registered-models/search",
        f"/api/2.0/mlflow/registered-models/alias?name={CLASSIFIER}&alias=champion",
        "/api/2.0/mlflow-artifacts/artifacts/1",
        "/ajax-api/2.0/mlflow/runs/search",
    ):
        assert status_of(f"{uri}{path}") == 401, path


@pytest.fixture(scope="module")
def trainer_chain(
    team_stack: TeamStack, stack_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    """`mlflow run .` (main) as the trainer, with the Optuna database's password in
    `tuning.storage` and the trainer's in MLFLOW_TRACKING_PASSWORD."""
    optuna_password = team_stack.local.secrets[OPTUNA_DATABASE]
    storage = team_stack.local.settings.optuna_storage
    settings = {
        "extends": str(stack_project / FAST_CONFIG_FILE),
        "tuning": {"storage": storage.replace("optuna@", f"optuna:{optuna_password}@")},
        # A canary: a setting named as a secret, logged with the config.
        "batch": {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": SPARK_CANARY}}},
    }
    config = tmp_path_factory.mktemp("stack-config") / "team.yaml"
    config.write_text(yaml.safe_dump(settings))
    parameters = (f"config={config}", "n_trials=2", "check_env_manager=none")
    chain = stack_run(team_stack, stack_project, TRAINER, "main", *parameters)
    assert chain.returncode == 0, chain.stderr[-5000:]
    return chain


def test_the_chain_runs_as_the_trainer_with_artifacts_in_the_bucket(
    trainer_chain: subprocess.CompletedProcess[str],
    team_stack: TeamStack,
    stack_project: Path,
    as_user,
) -> None:
    client = as_user(TRAINER)
    experiment = client.get_experiment_by_name(E2E_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    (main,) = [run for run in runs if run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT) == "main"]
    children = [run for run in runs if run.data.tags.get(MLFLOW_PARENT_RUN_ID) == main.info.run_id]
    assert {run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT) for run in children} == set(STEPS)
    assert {run.info.status for run in (main, *children)} == {"FINISHED"}
    assert client.get_model_version_by_alias(CLASSIFIER, "champion").run_id in {
        run.info.run_id for run in runs
    }
    # Artifacts go through the server to the bucket: listed by the S3 API, none on this disk.
    assert {run.info.artifact_uri.split(":")[0] for run in runs} == {"mlflow-artifacts"}
    keys = bucket_keys(team_stack.local)
    for run in (main, *children):
        assert any(key.startswith(f"{experiment.experiment_id}/{run.info.run_id}/") for key in keys)
    assert any("/models/" in key and key.endswith("MLmodel") for key in keys)
    left = [p for p in stack_project.rglob("*") if p.name in ("mlruns", "mlartifacts", "mlflow.db")]
    assert left == []


def test_no_secret_in_params_tags_artifacts_or_output(
    trainer_chain: subprocess.CompletedProcess[str], team_stack: TeamStack, as_user
) -> None:
    local = team_stack.local
    secrets = {
        "optuna database password": local.secrets[OPTUNA_DATABASE],
        "trainer password": team_stack.passwords[TRAINER],
        "admin password": team_stack.passwords[ADMIN],
        "spark canary": SPARK_CANARY,
    }
    # And every secret the stack generated (database and store passwords, signing keys).
    secrets |= {
        f"stack secret {path.name}": local.secrets[path.name]
        for path in local.secrets.folder.iterdir()
        if path.is_file()
    }
    output = trainer_chain.stdout + trainer_chain.stderr
    admin = as_user(ADMIN)
    texts, objects, found = scan_stack(team_stack.local, admin, secrets, output)
    print(f"leak scan: {len(texts)} texts, {len(objects)} bucket objects, {len(found)} hits")
    assert found == []
    # It saw every run and every artifact.
    runs = admin.search_runs([e.experiment_id for e in admin.search_experiments()])
    assert {f"run {run.info.run_id}" for run in runs} <= set(texts)
    assert set(objects) == bucket_keys(team_stack.local) and len(objects) > 50
    # The storage is logged, its password masked.
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    storages = {run.data.params.get("tuning.storage") for run in runs}
    assert team_stack.local.settings.optuna_storage.replace("optuna@", "optuna:***@") in storages


def test_no_stack_port_answers_a_caller_without_its_credentials(
    trainer_chain: subprocess.CompletedProcess[str], team_stack: TeamStack
) -> None:
    """Every local user reaches 127.0.0.1: each port of the stack refuses one who holds none
    of its credentials, and the bucket they tried to drop is intact."""
    local = team_stack.local
    settings = local.settings
    keys_before = bucket_keys(local)
    assert keys_before
    # PostgreSQL: a password for every role (none taken from the environment or ~/.pgpass).
    for role in (SUPERUSER, DATABASE_USER, OPTUNA_DATABASE):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host="127.0.0.1",
                port=settings.postgres_port,
                user=role,
                dbname="postgres",
                password="",
                passfile=str(settings.root / "no-such-pgpass"),
                connect_timeout=10,
            )
    # S3: signed requests only.
    bucket_url = f"{settings.s3_endpoint}/{settings.bucket}"
    assert requests.get(f"{bucket_url}?list-type=2", timeout=10).status_code == 403
    assert requests.delete(f"{bucket_url}/{min(keys_before)}", timeout=10).status_code == 403
    # SeaweedFS's master, volume, filer and gRPC ports: a client certificate, whatever else.
    master = local.ports(OBJECT_STORE)[1]
    drop_bucket = f"/col/delete?collection={settings.bucket}"
    for port in local.ports(OBJECT_STORE)[1:]:
        plain = _post(f"http://127.0.0.1:{port}{drop_bucket}")
        assert plain in ("refused", 400), (port, plain)  # 400: "HTTP request to an HTTPS server"
        assert _post(f"https://127.0.0.1:{port}{drop_bucket}") == "refused", port
    # Its local sockets: only their owner may connect.
    sockets = [
        p
        for p in Path("/tmp").glob("seaweedfs-*.sock")
        if int(p.stem.rsplit("-", 1)[1]) in local.ports(OBJECT_STORE)
    ]
    assert sockets and all(p.stat().st_mode & 0o022 == 0 for p in sockets)
    # What refused them is the credential: the stack's certificate opens the same port.
    tls_files = Certificates.in_folder(local.secrets.folder / SEAWEEDFS_TLS)
    answer = requests.get(
        f"https://127.0.0.1:{master}/dir/status",
        cert=(str(tls_files.certificate), str(tls_files.key)),
        verify=str(tls_files.authority),
        timeout=10,
    )
    assert answer.status_code == 200 and "Topology" in answer.text
    assert bucket_keys(local) == keys_before


def test_the_viewer_serves_the_champion_but_cannot_write(
    trainer_chain: subprocess.CompletedProcess[str],
    team_stack: TeamStack,
    stack_project: Path,
    tmp_path: Path,
    as_user,
) -> None:
    viewer = team_stack.as_user(VIEWER)
    env_root = session_env_root(stack_project)
    with served(team_stack.tracking_uri, "local", env_root, tmp_path, SERVICE_URI, viewer) as url:
        rows = churn_frame().drop(columns=["customer_id", "churn"]).head(2)
        body = f'{{"dataframe_split": {rows.to_json(orient="split", index=False)}}}'
        status, answer = post(url, body.encode(), "application/json")
    assert status == 200, answer
    probabilities = answer["predictions"]["probability"]  # columnar: one list per output
    assert len(probabilities) == 2 and all(0 <= p <= 1 for p in probabilities)
    client = as_user(VIEWER)
    experiment = client.get_experiment_by_name(E2E_EXPERIMENT)
    with pytest.raises(MlflowException, match=DENIED):
        client.create_run(experiment.experiment_id)
    champion = client.get_model_version_by_alias(CLASSIFIER, "champion")
    with pytest.raises(MlflowException, match=DENIED):
        client.set_registered_model_alias(CLASSIFIER, "viewer-was-here", champion.version)
    assert "viewer-was-here" not in client.get_registered_model(CLASSIFIER).aliases


def test_granting_again_changes_a_users_role(
    team_stack: TeamStack, as_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(CHURN_CONFIG)
    password = secrets.token_urlsafe(16)
    as_user(ADMIN)
    grant_role("switcher", password, "viewer", config)
    team_stack.passwords["switcher"] = password
    switcher = as_user("switcher")
    experiment_id = switcher.get_experiment_by_name(E2E_EXPERIMENT).experiment_id
    with pytest.raises(MlflowException, match=DENIED):
        switcher.create_run(experiment_id)
    as_user(ADMIN)
    grant_role("switcher", password, "trainer", config)
    run = as_user("switcher").create_run(experiment_id)
    as_user("switcher").set_terminated(run.info.run_id)


def test_two_track_workers_share_one_study_and_survive_a_postgresql_restart(
    team_stack: TeamStack, stack_project: Path, as_user
) -> None:
    """Two `track` workers add trials to one study in the stack's PostgreSQL, which is
    restarted (the study's and the tracking server's database) once a trial finished: each
    worker ends with its trials, nothing is left RUNNING."""
    local = team_stack.local
    # The password by libpq's PGPASSWORD, not in the URL: `mlflow run` logs every -P value.
    storage, password = local.settings.optuna_storage, local.secrets[OPTUNA_DATABASE]
    with_password = storage.replace("optuna@", f"optuna:{password}@")
    name = "shared-on-stack"
    parameters = (FAST_CONFIG, "n_trials=3", f"storage={storage}", f"study_name={name}")
    with ThreadPoolExecutor(2) as pool:
        workers = [
            pool.submit(
                stack_run,
                team_stack,
                stack_project,
                TRAINER,
                "track",
                *parameters,
                PGPASSWORD=password,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 300
        while not _finished_trials(with_password, name) and not any(w.done() for w in workers):
            assert time.monotonic() < deadline, "no trial finished in 5 minutes"
            time.sleep(0.5)
        local.stop(POSTGRES)
        local.up()  # starts it again, waits until it answers
        done = [worker.result() for worker in workers]
    failed = "\n\n".join(run.stderr[-3000:] for run in done if run.returncode)
    assert [run.returncode for run in done] == [0, 0], failed  # a str: pytest shows it whole
    assert _finished_trials(with_password, name) == 6
    study = optuna.load_study(study_name=name, storage=with_password)
    running = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.RUNNING]
    assert not running, [(trial.number, trial.user_attrs) for trial in running]
    client = as_user(TRAINER)
    trials = mlflow.search_runs(
        experiment_names=[E2E_EXPERIMENT],
        filter_string=f"tags.`{Tag.STUDY}` = '{name}'",
        output_format="list",
    )
    finished: dict[str, set[int]] = {}
    for trial in trials:
        if trial.info.status == "FINISHED":
            parent = trial.data.tags[MLFLOW_PARENT_RUN_ID]
            finished.setdefault(parent, set()).add(int(trial.data.tags[Tag.TRIAL]))
    assert len(finished) == 2 and all(len(numbers) == 3 for numbers in finished.values())
    first, second = finished.values()
    assert first.isdisjoint(second)  # one study: each trial number is one worker's
    parents = [client.get_run(run_id_of(run.stdout + run.stderr)) for run in done]
    assert {run.info.status for run in parents} == {"FINISHED"}
    assert {run.info.status for run in trials} <= {"FINISHED", "FAILED"}
    resumed = sum("Optuna's storage failed" in run.stderr for run in done)
    print(f"the restart met {resumed} worker(s) mid-call; {len(study.trials)} trials in all")


def test_register_survives_postgresql_frozen_past_every_timeout(
    trainer_chain: subprocess.CompletedProcess[str],
    team_stack: TeamStack,
    stack_project: Path,
    as_user,
) -> None:
    """PostgreSQL stopped (SIGSTOP, the whole cluster) while `register` reviews and
    registers a new run's model, for longer than the server's timeout and the client's
    (set here to twice the server's), then resumed: `register` ends with success or one
    clear line, the model is one version at most, and no run is left RUNNING."""
    local = team_stack.local
    name = "frozen-review"
    as_user(ADMIN)  # a registered model of its own, the trainer's to edit
    review_config = load_config(CHURN_CONFIG, {"tracking.registered_model_name": name})
    grant_role(TRAINER, team_stack.passwords[TRAINER], "trainer", review_config)
    client = as_user(TRAINER)
    experiment = client.get_experiment_by_name(E2E_EXPERIMENT).experiment_id
    trained = "tags.`mlflow.project.entryPoint` = 'train_basic'"  # the chain's
    run_id = client.search_runs([experiment], trained, max_results=1)[0].info.run_id
    client_timeout = 2 * STACK_SERVER_TIMEOUT
    parameters = (FAST_CONFIG, f"run_id={run_id}", f"registered_model_name={name}")
    environment = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(client_timeout)}
    postgres = local.running_pid(POSTGRES)
    assert postgres is not None
    with ThreadPoolExecutor(1) as pool:
        review = pool.submit(
            stack_run, team_stack, stack_project, TRAINER, "register", *parameters, **environment
        )
        filter_string = "tags.`mlflow.project.entryPoint` = 'register' and status = 'RUNNING'"
        while not client.search_runs([experiment], filter_string) and not review.done():
            time.sleep(0.2)
        os.killpg(postgres, signal.SIGSTOP)
        try:
            time.sleep(client_timeout + 1)
        finally:
            os.killpg(postgres, signal.SIGCONT)
        register = review.result()
    versions = client.search_model_versions(f"name = '{name}'")
    lines = [line for line in register.stderr.splitlines() if " ERROR " in line]
    retried = [line for line in register.stderr.splitlines() if "etry" in line]  # Retry, retry
    print(f"register exited {register.returncode}; {len(versions)} version(s); errors: {lines}")
    print(f"{len(retried)} retry lines, the first: {retried[:1]}")
    if register.returncode == 0:
        assert [int(version.version) for version in versions] == [1]
        assert versions[0].run_id == run_id
    else:
        assert len(lines) == 1 and "Traceback" not in register.stderr, register.stderr[-3000:]
        assert len(versions) <= 1
    running = client.search_runs([experiment], "status = 'RUNNING'")
    assert running == [], [run.info.run_id for run in running]


def _finished_trials(storage: str, name: str) -> int:
    """How many trials of study `name` completed or were pruned (0 before it exists)."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except (KeyError, optuna.exceptions.StorageInternalError):
        return 0
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=ended))


def test_train_basic_runs_at_once_all_register(
    team_stack: TeamStack, stack_project: Path, as_user
) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        runs = list(
            pool.map(
                lambda _: stack_run(team_stack, stack_project, TRAINER, "train_basic", FAST_CONFIG),
                range(CONCURRENT_RUNS),
            )
        )
    seconds = time.monotonic() - started
    failures = [run.stderr[-2000:] for run in runs if run.returncode != 0]
    print(f"{CONCURRENT_RUNS} train_basic at once: {seconds:.1f} s, {len(failures)} failed")
    assert failures == []
    client = as_user(TRAINER)
    run_ids = {run_id_of(run.stdout + run.stderr) for run in runs}
    assert len(run_ids) == CONCURRENT_RUNS
    assert {client.get_run(run_id).info.status for run_id in run_ids} == {"FINISHED"}
    versions = client.search_model_versions(f"name = '{CLASSIFIER}'")
    ours = [version for version in versions if version.run_id in run_ids]
    assert len({version.version for version in ours}) == CONCURRENT_RUNS


def test_down_stops_everything_and_up_keeps_the_data(team_stack: TeamStack, as_user) -> None:
    before = as_user(TRAINER).search_model_versions(f"name = '{CLASSIFIER}'")
    keys = bucket_keys(team_stack.local)
    pids = [team_stack.local.running_pid(service) for service in SERVICES]
    down = team_stack.script("down")
    assert down.returncode == 0, down.stderr
    assert not any(processes.is_alive(pid) for pid in pids if pid)
    status = team_stack.script("status")
    assert status.returncode == 3 and status.stdout.count("stopped") == len(SERVICES)
    again = team_stack.script("down")
    assert again.returncode == 0 and again.stderr.count("not running") == len(SERVICES)

    up = team_stack.script("up")
    assert up.returncode == 0, up.stderr
    after = as_user(TRAINER).search_model_versions(f"name = '{CLASSIFIER}'")
    assert {v.version for v in after} == {v.version for v in before}
    assert bucket_keys(team_stack.local) == keys
    # The users' passwords survived too: the trainer just read the registry with it.


# Helpers.


def _post(url: str) -> int | str:
    """A POST's status, or "refused" when the connection failed (TLS handshake, reset)."""
    try:
        return requests.post(url, verify=False, timeout=10).status_code
    except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
        return "refused"


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def run_id_of(output: str) -> str:
    marker = "=== Run (ID '"
    return output[output.rindex(marker) + len(marker) :].split("'")[0]


def listening_addresses(pids: list[int | None]) -> set[tuple[str, int]]:
    """The (host, port) each of these processes' groups listens on (Linux /proc)."""
    group_pids = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _group_of(int(entry.name)) in set(pids)
    ]
    inodes: set[str] = set()
    for pid in group_pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = str(fd.readlink()) if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host, port = fields[1].split(":")
                addresses.add((_host(host), int(port, 16)))
    return addresses


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _host(hexadecimal: str) -> str:
    if len(hexadecimal) == 8:  # IPv4, little-endian
        return ".".join(str(int(hexadecimal[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return "::" if set(hexadecimal) == {"0"} else hexadecimal
