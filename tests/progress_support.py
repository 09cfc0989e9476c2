"""A progress sink that records what the targets report: plain lines, and every transfer and
wait they open on its live view (``sink.live``, as the CLI's terminal sink has), with each
call made on them. Pass it as ``Deployer(progress=...)``; the targets run unchanged."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


class Recorded:
    """One transfer or wait: ``calls`` in order, ``history`` (units done after each transfer
    call), ``states`` (each wait poll's state), ``parts`` (per key: done after each call)."""

    def __init__(self, kind: str, what: str, total: int | None = None, unit: str | None = None):
        self.kind, self.what, self.total, self.unit = kind, what, total, unit
        self.calls: list[tuple] = []
        self.history: list[int] = []
        self.states: list[str] = []
        self.parts: dict[str, list[tuple[int, int | None]]] = {}
        self.done = 0
        self.entered = self.exited = False
        self.error: type | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Recorded":
        self.entered = True
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.exited, self.error = True, kind

    def advance(self, count: int) -> None:
        with self._lock:
            self.calls.append(("advance", count))
            self.done += count
            self.history.append(self.done)

    def update(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self.calls.append(("update", done, total))
            self.done = done
            if total is not None:
                self.total = total
            self.history.append(done)

    def part(self, key: str, done: int, total: int | None) -> None:
        with self._lock:
            self.calls.append(("part", key, done, total))
            self.parts.setdefault(key, []).append((done, total))
            self.done = sum(p[-1][0] for p in self.parts.values())
            totals = [p[-1][1] for p in self.parts.values()]  # the whole, as Transfer.part
            self.total = None if None in totals else sum(totals)  # type: ignore[arg-type]
            self.history.append(self.done)

    def state(self, text: str) -> None:
        with self._lock:
            self.calls.append(("state", text))
            self.states.append(text)

    def end(self, text: str) -> None:
        """The final state (a Wait's ``end``): recorded as the last state seen."""
        with self._lock:
            self.calls.append(("end", text))
            self.states.append(text)

    def changes(self) -> list[str]:
        """The states without repeats (one per change)."""
        return [s for i, s in enumerate(self.states) if i == 0 or self.states[i - 1] != s]

    def __repr__(self) -> str:
        return (f"Recorded({self.kind} {self.what!r}, total={self.total}, done={self.done}, "
                f"states={self.changes()}, calls={len(self.calls)})")


class RecordingSink:
    """``sink(line)`` records plain lines; ``sink.live`` opens recorded transfers and waits."""

    def __init__(self):
        self.lines: list[str] = []
        self.tasks: list[Recorded] = []
        self.live = self

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def transfer(self, what: str, total: int | None, unit: str) -> Recorded:
        task = Recorded("transfer", what, total, unit)
        self.tasks.append(task)
        return task

    def waiting(self, what: str) -> Recorded:
        task = Recorded("wait", what)
        self.tasks.append(task)
        return task

    def transfers(self) -> list[Recorded]:
        return [t for t in self.tasks if t.kind == "transfer"]

    def waits(self, containing: str = "") -> list[Recorded]:
        return [t for t in self.tasks if t.kind == "wait" and containing in t.what]


def rises_to(task: Recorded, total: int) -> bool:
    """The transfer ended at ``total``, never went back, and showed some step in between."""
    history = task.history
    return (bool(history) and history[-1] == total
            and all(a <= b for a, b in zip(history, history[1:]))
            and any(0 < value < total for value in history))


def heavy_repository(root: Path, size: int) -> Path:
    """A copy of tests/repos/add_sub under ``root`` with ``size`` random (incompressible)
    bytes beside its model: an upload with something to count."""
    copy = root / "heavy"
    shutil.copytree(Path(__file__).parent / "repos" / "add_sub", copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "add_sub" / "1" / "weights.bin").write_bytes(os.urandom(size))
    return copy
