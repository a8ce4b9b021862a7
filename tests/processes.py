"""The machine's processes as the end-to-end tests see them, through /proc: finding a
server's or a trial's processes, and killing a process tree at once (a crash)."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    pid: int
    parent: int
    session: int
    argv: list[bytes]

    @property
    def command(self) -> str:
        return b" ".join(self.argv).decode(errors="replace")

    def environ(self) -> list[bytes]:
        """Its NAME=value entries ([] once it has gone)."""
        try:
            return (Path("/proc") / str(self.pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            return []


def processes() -> list[Process]:
    """Every process we may read."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found.append(Process(int(entry.name), int(fields[1]), int(fields[3]), argv))
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest last."""
    children: dict[int, list[int]] = {}
    for process in processes():
        children.setdefault(process.parent, []).append(process.pid)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it at once: a process dying outright."""
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
