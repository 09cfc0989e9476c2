"""Progress of long work: a live view at a terminal, a few plain lines everywhere else.

Every target and core step reports through ``progress``, a callable taking one line. For long
work it uses the helpers here instead of printing lines in a loop:

- :func:`transfer` — bytes (or other units) moved towards a known or unknown total: packing,
  uploads, image pulls (with :meth:`Transfer.part` per layer), a load level's requests;
- :func:`waiting` — a wait on the cloud, with the cloud's own current state
  (:meth:`Wait.state`: ``Creating``, ``InService``, an Azure provisioning state ...).

When the sink has a live view (:class:`Live`: the CLI's at a terminal, drawn with ``rich``) they
draw bars and spinners on it. Otherwise they print plain lines through the sink: one when the
work starts, a state change when it happens, at most one line every :data:`EVERY` seconds in
between, and one when it ends. Both are context managers; leaving one by an exception ends
it quietly (the error says the rest).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Protocol

#: seconds between plain lines of one transfer or wait (state changes are printed at once)
EVERY = 30.0


class Live(Protocol):
    """What a sink with a live view offers (``progress.live``)."""

    def transfer(self, what: str, total: int | None, unit: str) -> "Transfer": ...

    def waiting(self, what: str) -> "Wait": ...


class Transfer:
    """Work measured in units towards a total (None: unknown). Plain lines by default; its
    methods may be called from several threads (boto3 reports an upload from its own)."""

    def __init__(self, say: Callable[[str], None], what: str, total: int | None,
                 unit: str = "bytes", clock: Callable[[], float] = time.monotonic):
        self.say, self.what, self.total, self.unit, self.clock = say, what, total, unit, clock
        self.done = 0
        self.parts: dict[str, tuple[int, int | None]] = {}
        self.started = self.last = clock()
        self._lock = threading.Lock()

    def __enter__(self) -> "Transfer":
        self.say(f"{self.what}" + (f" ({amount(self.total, self.unit)})"
                                   if self.total is not None else ""))
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()

    def advance(self, count: int) -> None:
        """``count`` more units done."""
        with self._lock:
            self.done += count
            line = self._moved()
        self._say(line)

    def update(self, done: int, total: int | None = None) -> None:
        """The units done so far (and the total, when it becomes known)."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            line = self._moved()
        self._say(line)

    def part(self, key: str, done: int, total: int | None) -> None:
        """One named part's progress (an image layer); the whole is the sum of the parts."""
        with self._lock:
            self.parts[key] = (done, total)
            self.done = sum(d for d, _ in self.parts.values())
            totals = [t for _, t in self.parts.values()]
            self.total = sum(totals) if totals and None not in totals else None
            line = self._moved()
        self._say(line)

    def finish(self) -> None:
        self.say(self.finished())

    def finished(self) -> str:
        """``uploading ...: done, 300.0 MB in 4.1 s, 73.2 MB/s`` — the line that ends it."""
        seconds = max(self.clock() - self.started, 1e-9)
        rate = (f", {amount(int(self.done / seconds), self.unit)}/s"
                if self.unit == "bytes" and self.done else "")
        return f"{self.what}: done, {amount(self.done, self.unit)} in {seconds:.1f} s{rate}"

    def status(self) -> str:
        """``120.0 MB of 300.0 MB (40%), 12.0 MB/s`` — what a plain line says."""
        text = amount(self.done, self.unit)
        if self.total:
            text += f" of {amount(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        seconds = self.clock() - self.started
        if self.unit == "bytes" and seconds > 0 and self.done:
            text += f", {amount(int(self.done / seconds), self.unit)}/s"
        if self.parts:
            text += f", {len(self.parts)} part(s)"
        return text

    def _moved(self) -> str | None:
        """Called under the lock after each change, with the figures of that change: the line
        to say, when one is due (at most one per :data:`EVERY` seconds)."""
        now = self.clock()
        if now - self.last < EVERY:
            return None
        self.last = now
        return f"{self.what}: {self.status()}"

    def _say(self, line: str | None) -> None:
        if line:
            self.say(line)


class Wait:
    """A wait on something with a state. Plain lines by default."""

    def __init__(self, say: Callable[[str], None], what: str,
                 clock: Callable[[], float] = time.monotonic):
        self.say, self.what, self.clock = say, what, clock
        self.current: str | None = None
        self.started = self.last = clock()

    def __enter__(self) -> "Wait":
        self.say(self.what)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()

    def state(self, text: str) -> None:
        """The state now (call it on every poll): printed when it changes, else at most once
        every :data:`EVERY` seconds."""
        now = self.clock()
        if text != self.current or now - self.last >= EVERY:
            changed = text != self.current
            self.current, self.last = text, now
            self.say(f"{self.what}: {text}" + ("" if changed else
                                               f" ({elapsed(now - self.started)})"))

    def end(self, text: str) -> None:
        """The final state: said once, by the line that ends the wait (not a line of its own)."""
        self.current = text

    def finish(self) -> None:
        self.say(self.finished())

    def finished(self) -> str:
        """``waiting for ...: InService after 5m03s`` — the line that ends it."""
        return (f"{self.what}: {self.current or 'done'} after "
                f"{elapsed(self.clock() - self.started)}")


def _live(progress: Callable[[str], None]) -> Live | None:
    return getattr(progress, "live", None)


def transfer(progress: Callable[[str], None], what: str, total: int | None, *,
             unit: str = "bytes") -> Transfer:
    """A :class:`Transfer` on the sink's live view, else in plain lines through it."""
    live = _live(progress)
    return live.transfer(what, total, unit) if live else Transfer(progress, what, total, unit)


def waiting(progress: Callable[[str], None], what: str) -> Wait:
    """A :class:`Wait` on the sink's live view, else in plain lines through it."""
    live = _live(progress)
    return live.waiting(what) if live else Wait(progress, what)


@contextlib.contextmanager
def counting(progress: Callable[[str], None], what: str) -> Iterator[Callable[[int], None]]:
    """A :func:`transfer` of requests (total unknown: a load runs until it is steady): yields
    the function a load calls with the requests done so far (``deployer.load.run``'s
    ``done``)."""
    with transfer(progress, what, None, unit="requests") as moving:
        yield moving.update


class Prefixed:
    """A sink that puts ``prefix`` before each line and keeps the live view of the one it
    wraps (``compare``'s ``TARGET: ...``)."""

    def __init__(self, progress: Callable[[str], None], prefix: str):
        self.progress, self.prefix = progress, prefix
        self.live = _PrefixedLive(_live(progress), prefix) if _live(progress) else None

    def __call__(self, line: str) -> None:
        self.progress(f"{self.prefix}{line}")


class _PrefixedLive:
    def __init__(self, live: Live, prefix: str):
        self._live, self._prefix = live, prefix

    def transfer(self, what: str, total: int | None, unit: str) -> Transfer:
        return self._live.transfer(f"{self._prefix}{what}", total, unit)

    def waiting(self, what: str) -> Wait:
        return self._live.waiting(f"{self._prefix}{what}")


def amount(count: int | None, unit: str) -> str:
    """``314572800`` bytes → ``300.0 MB``; other units as a plain count."""
    if count is None:
        return "?"
    if unit != "bytes":
        return f"{count:,} {unit}"
    size = float(count)
    for name in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or name == "TB":
            break
        size /= 1000
    return f"{size:.0f} B" if name == "B" else f"{size:.1f} {name}"


def elapsed(seconds: float) -> str:
    """``125`` → ``2m05s``."""
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
