"""The benchmark pages of the documentation (docs/benchmarks/), each written by its bench
when it finishes: what it printed, under the command, date, commit and machine it ran on,
and the digest of the bench's own code (tests/test_docs.py calls a page stale once its bench
has changed since: run the bench again)."""

import contextlib
import functools
import hashlib
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tabular_mlops.core.files import write_atomically

PAGES = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
DIGEST_MARK = "bench digest:"


def bench_digest(module: str) -> str:
    """The digest of `bench/<module>.py` as it is now."""
    source = Path(__file__).with_name(f"{module}.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:16]


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cores = len(os.sched_getaffinity(0))
    return (
        f"{cores} cores ({cpu}), {memory_kb / 2**20:.0f} GiB, {platform.system()}, "
        f"Python {platform.python_version()}"
    )


def write(
    module: str, name: str, title: str, argv: Sequence[str], body: str, seconds: float
) -> Path:
    """Write docs/benchmarks/`name`.md: `body` (markdown) under the run's particulars."""
    command = " ".join(["python -m", f"bench.{module}", *argv])
    page = PAGES / f"{name}.md"
    text = (
        f"# {title}\n\n"
        f"<!-- Written by `{command}`: do not edit, run it again. "
        f"{DIGEST_MARK} {bench_digest(module)} -->\n\n"
        "| this run | |\n| --- | --- |\n"
        f"| command | `{command}` |\n"
        f"| date | {datetime.now(UTC):%Y-%m-%d %H:%M} UTC |\n"
        f"| commit | {_commit()} |\n"
        f"| machine | {_machine()} |\n"
        f"| took | {seconds:.0f} s |\n\n"
        f"{body.strip()}\n"
    )
    page.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(page, text)
    print(f"\nwritten: {page}", file=sys.stderr)
    return page


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


Main = Callable[[list[str] | None], int]


def page(title: str) -> Callable[[Main], Main]:
    """A bench's `main` whose printed report, when it succeeds, is also written as the page
    docs/benchmarks/<bench>.md (shown as usual meanwhile)."""

    def decorate(main: Main) -> Main:
        module = Path(sys.modules[main.__module__].__file__ or main.__module__).stem

        @functools.wraps(main)
        def recorded(argv: list[str] | None = None) -> int:
            printed = io.StringIO()
            started = time.monotonic()
            with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
                code = main(argv)
            if code == 0:
                given = sys.argv[1:] if argv is None else argv
                write(module, module, title, given, printed.getvalue(), time.monotonic() - started)
            return code

        return recorded

    return decorate
