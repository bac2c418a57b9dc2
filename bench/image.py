"""The serving image's path against `mlflow models serve`, on the same model, in one run.

    python -m bench.image [--requests N] [--huge-mb 1024] [--rss-cap-gb 12]

In a temporary store: `train_basic` and `custom_model` on the shipped config, then the
champion's build context (tabular_mlops.cli.image) installed in a fresh environment
(test_support.image, as the tests run it). Served side by side:
- `mlflow models serve --env-manager local` (one worker, its default);
- the image's entrypoint in that environment (its ENV: one uvicorn worker);
- the same as deploy/serving runs it (two workers) behind nginx with its configuration.
Each is measured on single-row and 100-row requests, one at a time and 8 at once, servers
taking turns round by round: p50 and requests/s, and the ratios to `mlflow models serve`.

`--huge-mb`: a request of that many MB of valid JSON rows, streamed to `mlflow models
serve` and to the proxy: status, seconds, the server's peak memory (its processes' RSS
summed, sampled every 50 ms) and whether it still answers /ping after. A server past
`--rss-cap-gb` is stopped there (this machine is shared), and the table says so.
"""

import argparse
import http.client
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from bench.pages import page
from bench.serving import bench_config, load, request_body, temporary_store
from tabular_mlops.cli import image
from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core import data
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.jobs.wrap import custom_model
from tabular_mlops.mlflow.model_trust import LoadPolicy
from test_support.image import clean_environment, entrypoint_server, nginx_proxy
from test_support.servers import model_server

logger = logging.getLogger("bench.image")
SERVICE_URI = "models:/churn-service@champion"
CONCURRENCY = 8
ROUNDS = 3
BATCH = 100
MAX_CONCURRENT = 16  # the proxy's limit here: above the bench's concurrency


def measure(urls: dict[str, str], rows: pd.DataFrame, requests: int) -> pd.DataFrame:
    singles = [request_body(rows.iloc[[i]]) for i in range(min(len(rows), 200))]
    batches = [request_body(rows.sample(BATCH, replace=True, random_state=i)) for i in range(8)]
    for url in urls.values():  # warm up
        load(url, singles, 20, 1)
        load(url, batches, 4, 1)
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in urls}
    for _ in range(ROUNDS):
        for name, url in urls.items():
            for label, bodies, count in (
                ("1 row", singles, requests),
                (f"{BATCH} rows", batches, requests // 4),
            ):
                for concurrency in (1, CONCURRENCY):
                    served = load(url, bodies, count, concurrency)
                    key = f"{label}, c={concurrency}"
                    figures[name].setdefault(f"{key} p50 ms", []).append(served.p50_ms)
                    figures[name].setdefault(f"{key} req/s", []).append(served.requests_per_second)
    table = pd.DataFrame(
        {
            name: {k: statistics.median(v) for k, v in values.items()}
            for name, values in figures.items()
        }
    ).T
    return table


def ratios(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each path against the reference: p50 as a ratio (lower is better) and req/s as a
    ratio (higher is better)."""
    return table / table.loc[reference]


def huge_rows(columns: list[str], row: list[object], megabytes: int) -> Iterator[bytes]:
    """A dataframe_split body of about `megabytes` MB: the same row, again and again."""
    head = json.dumps({"columns": columns})[:-1] + ', "data": ['
    one = json.dumps(row).encode()
    yield b'{"dataframe_split": ' + head.encode()
    count = megabytes * 2**20 // (len(one) + 1)
    chunk = b",".join([one] * 10_000)
    for start in range(0, count, 10_000):
        yield (b"," if start else b"") + (
            chunk if start + 10_000 <= count else b",".join([one] * (count - start))
        )
    yield b"]}}"


def process_group_rss(pid: int) -> int:
    """Bytes of memory held by the processes of `pid`'s process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pid:  # the group id
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def huge_request(
    url: str, group: int, body: Iterator[bytes], length: int, cap: int
) -> dict[str, object]:
    """POST `body` to `url` while sampling the server's memory; stops the server past `cap`."""
    peak = [process_group_rss(group)]
    done = threading.Event()
    capped = [False]

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(process_group_rss(group))
            if peak[-1] > cap:
                capped[0] = True
                os.killpg(group, 9)
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=1800)
    started = time.monotonic()
    status: object
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        for chunk in body:
            connection.send(chunk)
        status = connection.getresponse().status
    except OSError as error:
        status = f"connection ended ({type(error).__name__})"
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    try:
        alive = _ping(url)
    except OSError:
        alive = False
    return {
        "status": "stopped at the cap" if capped[0] else status,
        "seconds": round(seconds, 1),
        "peak RSS GB": round(max(peak) / 2**30, 2),
        "answers /ping after": alive,
    }


def _ping(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{url}/ping", timeout=10) as answer:
        return answer.status == 200


@page("The serving image behind its proxy")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per server, round and kind")
    parser.add_argument("--huge-mb", type=int, default=0, help="also send a request this big")
    parser.add_argument("--rss-cap-gb", type=float, default=12.0)
    args = parser.parse_args(argv)
    configure_logging()
    started = time.monotonic()
    with temporary_store("bench-image-") as directory:
        config = bench_config(directory)
        logger.info("training and wrapping the champion in %s", directory)
        train_basic(config)
        custom_model(config)
        project = Path(__file__).resolve().parents[1]
        home = Path.cwd()
        os.chdir(project)
        try:
            image.write_context(
                SERVICE_URI, directory / "context", LoadPolicy(project / "custom_model", False)
            )
        finally:
            os.chdir(home)
        logger.info("installing the image's requirements in a fresh environment")
        installed = time.monotonic()
        python = clean_environment(directory / "context", directory / "venv")
        install_seconds = time.monotonic() - installed
        rows = data.split(data.load_table(config.data), config.split).X_test.reset_index(drop=True)
        with ExitStack() as stack:
            reference = stack.enter_context(
                model_server(SERVICE_URI, "local", directory / "serve.log")
            )
            model_dir = directory / "context" / "model"
            entry = stack.enter_context(
                entrypoint_server(python, model_dir, directory / "entry.log")
            )
            behind = stack.enter_context(
                entrypoint_server(python, model_dir, directory / "behind.log", compose=True)
            )
            proxy = stack.enter_context(nginx_proxy(behind, directory / "nginx", MAX_CONCURRENT))
            urls = {
                "mlflow models serve": reference,
                "image entrypoint": entry,
                "image behind nginx": proxy,
            }
            logger.info("measuring %s", urls)
            table = measure(urls, rows, args.requests)
            huge = None
            if args.huge_mb:
                columns = list(rows.columns)
                row = json.loads(rows.head(1).to_json(orient="values"))[0]
                length = sum(len(chunk) for chunk in huge_rows(columns, row, args.huge_mb))
                cap = int(args.rss_cap_gb * 2**30)
                huge = {}
                for name, url in (
                    ("image behind nginx", proxy),
                    ("mlflow models serve", reference),
                ):
                    group = _group_of(url)
                    logger.info("sending %d MB to %s", length // 2**20, name)
                    huge[name] = huge_request(
                        url, group, huge_rows(columns, row, args.huge_mb), length, cap
                    )
    print(
        f"\nfresh environment installed in {install_seconds:.0f} s; {os.cpu_count()} CPUs; "
        f"medians of {ROUNDS} rounds"
    )
    print("\nServed (the same champion)\n" + table.to_markdown(floatfmt=".1f"))
    print(
        "\nRatios to mlflow models serve (p50: lower is better; req/s: higher)\n"
        + ratios(table, "mlflow models serve").to_markdown(floatfmt=".2f")
    )
    if huge is not None:
        print(f"\nA {args.huge_mb} MB request\n" + pd.DataFrame(huge).T.to_markdown())
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return 0


def _group_of(url: str) -> int:
    """The process group of whoever listens on `url`'s port (Linux's /proc)."""
    port = urlsplit(url).port
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except OSError:
            continue
    raise LookupError(f"no process listens on {url}")


if __name__ == "__main__":
    raise SystemExit(main())
