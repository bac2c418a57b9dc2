"""Facts about processes on this machine: alive, started when, children. From /proc on
Linux; elsewhere (macOS) from `os.kill(pid, 0)` and `ps`, without start times. And an
environment variable set for a while."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, None if there is none."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """Running (a zombie has ended)."""
    if PROC.is_dir():
        stat = _stat(pid)
        return stat is not None and stat[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def start_time(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (tells a recycled pid from the
    process that had it); None if it is gone or this system does not say."""
    stat = _stat(pid) if PROC.is_dir() else None
    return stat[19] if stat else None


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    if PROC.is_dir():
        found = []
        for entry in PROC.iterdir():
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
                with contextlib.suppress(ValueError):
                    if int(stat[1]) == pid:
                        found.append(int(entry.name))
        return found
    listing = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True)
    pairs = (line.split() for line in listing.stdout.splitlines())
    return [int(child) for child, parent in pairs if int(parent) == pid]


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` in this process's environment (and its children's started
    meanwhile) until the block ends, then as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
