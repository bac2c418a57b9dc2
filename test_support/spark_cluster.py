"""A Spark standalone cluster on this machine, from the PySpark package's own scripts: a
master and workers, each a JVM of its own, on 127.0.0.1, started and stopped within bounds
(tests and benches; not part of the library)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from test_support.servers import LOOPBACK, free_port

START_SECONDS = 90


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


@contextmanager
def standalone_cluster(directory: Path, workers: int = 2, memory: str = "1g") -> Iterator[str]:
    """A master and `workers` workers (one core each) under `directory`; yields the master's
    URL once every worker has registered. Every JVM is gone when the block ends."""
    home = spark_class().parent.parent
    environment = os.environ | {
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": LOOPBACK,  # every daemon, its web UI included, on loopback
        "SPARK_LOG_DIR": str(directory / "logs"),
        "SPARK_WORKER_DIR": str(directory / "work"),
        "PYSPARK_PYTHON": sys.executable,  # executors' Python workers: this environment
    }
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    master_url = f"spark://{LOOPBACK}:{port}"
    daemons: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(name: str, *arguments: str) -> Path:
        log = directory / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(spark_class()), *arguments],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        daemons.append((process, log))
        return log

    with ExitStack() as stop:
        stop.callback(_stop_all, daemons)
        master_log = start(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", LOOPBACK, "--port", str(port), "--webui-port", str(free_port()),
        )  # fmt: skip
        _wait_for(lambda: _listening(port), f"the master on {port}", master_log)
        for index in range(workers):
            log = start(
                f"worker-{index}", "org.apache.spark.deploy.worker.Worker",
                "--host", LOOPBACK, "--cores", "1", "--memory", memory,
                "--webui-port", str(free_port()), "--work-dir", str(directory / f"work-{index}"),
                master_url,
            )  # fmt: skip
            _wait_for(partial(_registered, log), f"worker {index}", log)
        yield master_url


def _registered(worker_log: Path) -> bool:
    return "Successfully registered with master" in worker_log.read_text()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


def _wait_for(ready: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} did not start in {START_SECONDS} s: {log.read_text()[-2000:]}"
            )
        time.sleep(0.5)


def _stop_all(daemons: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Workers first, then the master: SIGTERM to each JVM's group, SIGKILL after 20 s."""
    for process, _ in reversed(daemons):
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process, _ in reversed(daemons):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
