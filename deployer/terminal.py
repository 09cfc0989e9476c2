"""What the CLI draws at a terminal, with ``rich``: the live view of long work (bars for
transfers, spinners for waits) and tables that fit the terminal's width.

Imported only when there is a terminal to draw on (the CLI's start does not pay for rich).
"""

from __future__ import annotations

import shutil
import textwrap
import threading
from typing import Any, Sequence

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, TaskProgressColumn,
                           TimeElapsedColumn)
from rich.table import Column, Table
from rich.text import Text

from . import progress as plain
from .progress import amount


class _Amount(ProgressColumn):
    """``120.0 MB / 300.0 MB``, or ``1,234 requests`` when the total is unknown."""

    def render(self, task) -> Text:
        unit = task.fields["unit"]
        done = amount(int(task.completed), unit)
        if task.total is None:
            return Text(done)
        return Text(f"{done.split()[0] if unit != 'bytes' else done} / "
                    f"{amount(int(task.total), unit)}")


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.speed
        if not speed:
            return Text("")
        unit = task.fields["unit"]
        return Text(f"{amount(int(speed), unit)}/s" if unit == "bytes" else f"{speed:,.0f}/s")


class _Eta(ProgressColumn):
    def render(self, task) -> Text:
        left = task.time_remaining
        if task.total is None or left is None:
            return Text("")
        return Text(f"ETA {plain.elapsed(left)}")


class _State(ProgressColumn):
    def render(self, task) -> Text:
        state = task.fields["state"]
        return Text(f"· {state}", style="bold") if state else Text("")


class _Description(ProgressColumn):
    """The task's description, shortened in its middle ("…") to leave ``others`` columns of
    the terminal to the columns after it: one line per task, whatever the width."""

    def __init__(self, console: Console, others: int):
        super().__init__(table_column=Column(no_wrap=True))
        self.console, self.others = console, others

    def render(self, task) -> Text:
        return Text(shorten(task.description, max(20, self.console.width - self.others)))


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle replaced by "…" when too long."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 3
    return text[:width - 1 - tail] + "…" + text[len(text) - tail:]


class _Area:
    """The live area: the bars, then the spinners; nothing when neither has a task."""

    def __init__(self, view: "LiveView"):
        self.view = view

    def __rich__(self) -> Group:
        parts = [p for p in (self.view.transfers, self.view.waits) if p.tasks]
        return Group(*parts)


class LiveView:
    """The CLI's progress sink at a terminal. Lines print above a live area that shows a bar
    per transfer (done, total, percentage, rate, ETA) and a spinner per wait (the state and the
    time elapsed). A finished task leaves one line; the area is drawn only while a task runs,
    so the screen ends clean. Safe to use from several threads (compare's cloud targets)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live = self
        self.transfers = Progress(_Description(self.console, others=66),
                                  BarColumn(bar_width=20), TaskProgressColumn(), _Amount(),
                                  _Rate(), _Eta(), console=self.console)
        self.waits = Progress(SpinnerColumn(), _Description(self.console, others=40), _State(),
                              TimeElapsedColumn(), console=self.console)
        # stdout is not redirected: a result printed meanwhile must stay on stdout
        self._live = Live(_Area(self), console=self.console, refresh_per_second=8,
                          redirect_stdout=False, redirect_stderr=True)
        self._lock = threading.RLock()
        self._running = 0

    def __call__(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def transfer(self, what: str, total: int | None, unit: str) -> plain.Transfer:
        return _Transfer(self, what, total, unit)

    def waiting(self, what: str) -> plain.Wait:
        return _Wait(self, what)

    def close(self) -> None:
        """Stop drawing (the command ends; a task left open is dropped)."""
        with self._lock:
            self._running = 0
            for bars in (self.transfers, self.waits):
                for task in list(bars.task_ids):
                    bars.remove_task(task)
            self._live.stop()

    def _add(self, bars: Progress, what: str, total: int | None, **fields: Any):
        with self._lock:
            task = bars.add_task(what, total=total, **fields)
            self._running += 1
            if self._running == 1:
                self._live.start(refresh=True)
            return task

    def _update(self, bars: Progress, task, **fields: Any) -> None:
        """A task's new figures; nothing once it has ended or the view was closed (an SDK's
        upload thread may report after a Ctrl-C)."""
        with self._lock:
            if task is not None and task in bars.task_ids:
                bars.update(task, **fields)

    def _end(self, bars: Progress, task, line: str | None) -> None:
        with self._lock:
            if task not in bars.task_ids:   # closed already
                return
            bars.remove_task(task)
            self._running -= 1
            if line:
                self(line)
            if self._running == 0:
                self._live.stop()


#: seconds between two pushes of one transfer's figures to the view (uploads report every 16 kB)
PUSH = 0.05


class _Transfer(plain.Transfer):
    """A bar on the live view; the same figures as the plain lines."""

    def __init__(self, view: LiveView, what: str, total: int | None, unit: str):
        super().__init__(view, what, total, unit)
        self.view, self.task = view, None

    def __enter__(self) -> "_Transfer":
        self.task = self.view._add(self.view.transfers, self.what, self.total, unit=self.unit)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()
        else:   # quietly: the error says the rest
            self.view._end(self.view.transfers, self.task, None)

    def _moved(self) -> None:
        # under the transfer's lock: the figures of this change, in the order they happened;
        # drawn 8 times a second, so pushed at most every PUSH seconds (and when complete)
        now = self.clock()
        if now - self.last >= PUSH or (self.total is not None and self.done >= self.total):
            self.last = now
            self.view._update(self.view.transfers, self.task, completed=self.done,
                              total=self.total)

    def finish(self) -> None:
        self.view._end(self.view.transfers, self.task, self.finished())


class _Wait(plain.Wait):
    """A spinner on the live view with the current state and the time elapsed."""

    def __init__(self, view: LiveView, what: str):
        super().__init__(view, what)
        self.view, self.task = view, None

    def __enter__(self) -> "_Wait":
        self.task = self.view._add(self.view.waits, self.what, None, state="")
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()
        else:
            self.view._end(self.view.waits, self.task, None)

    def state(self, text: str) -> None:
        self.current = text
        self.view._update(self.view.waits, self.task, state=text)

    def finish(self) -> None:
        self.view._end(self.view.waits, self.task, self.finished())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """The table drawn for a terminal ``width`` columns wide (default: this one's), never wider.
    Each column gets its natural width when all fit; else headers wrap at their words, long
    text wraps, and a short cell (a name, a figure) stays on one line. When even that does not
    fit, each row is printed as a record (:func:`records`)."""
    width = width or shutil.get_terminal_size().columns
    columns = [[row[i] for row in rows] for i in range(len(headers))]
    sizes = widths(headers, columns, width - 2 * (len(headers) - 1))
    if sizes is None:
        return records(headers, rows, width)
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                 header_style="bold")
    for header, cells, size in zip(headers, columns, sizes):
        grid.add_column(Text(header), width=size)
    short = [max(map(len, cells), default=0) <= SHORT for cells in columns]
    for row in rows:
        grid.add_row(*(Text(cell, no_wrap=short[i], overflow="ellipsis" if short[i] else "fold")
                       for i, cell in enumerate(row)))
    console = Console(width=width, force_terminal=True, highlight=False, emoji=False)
    with console.capture() as captured:
        console.print(grid, markup=False)
    return "\n".join(line.rstrip() for line in captured.get().rstrip("\n").splitlines())


#: a column whose cells are all at most this long keeps each on one line
SHORT = 24


def widths(headers: Sequence[str], columns: Sequence[Sequence[str]],
           room: int) -> list[int] | None:
    """Each column's width in ``room`` characters (the gaps left out); None when the columns
    cannot fit with each short cell on one line."""
    longest = [max(map(len, cells), default=0) for cells in columns]
    natural = [max(len(h), n) for h, n in zip(headers, longest)]
    if sum(natural) <= room:
        return natural
    words = [max((len(w) for w in h.split()), default=1) for h in headers]
    least = [max(w, n) if n <= SHORT else max(w, 12) for w, n in zip(words, longest)]
    spare = room - sum(least)
    if spare < 0:
        return None
    # what is left goes to the columns that wrap, by how much more they want
    wants = [nat - low for nat, low in zip(natural, least)]
    total = sum(wants) or 1
    return [low + spare * want // total for low, want in zip(least, wants)]


def records(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> str:
    """A table too wide for the terminal, one block per row: its first cell, then
    ``header: cell`` lines, wrapped to ``width``."""
    blocks = []
    for row in rows:
        lines = textwrap.wrap(f"{headers[0]}: {row[0]}", width) or [""]
        for header, cell in zip(headers[1:], row[1:]):
            lines += textwrap.wrap(f"{header}: {cell}", width, initial_indent="  ",
                                   subsequent_indent="    ") if cell else []
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
