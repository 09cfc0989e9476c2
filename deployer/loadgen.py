"""The load generator's engine: many requests in flight from several processes.

A client that can describe its request as plain HTTP (:class:`HttpRequest`, from
``EndpointClient.load_request``) is measured by this engine: worker processes (``python -m
deployer.loadgen``), each one event loop holding its share of the keep-alive connections, sent
the request as bytes. Closed-loop, each connection sends again when its answer arrives;
open-loop (a fixed rate), requests leave on a schedule whatever the answers do, and each
latency is measured from its intended send time. Workers return their raw latencies, so the
caller's percentiles are exact. This module imports only the standard library: a worker starts
in tens of milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping


@dataclasses.dataclass
class HttpRequest:
    """One request, sent again and again by the load generator.

    ``url`` is ``http://`` or ``https://`` host, port and path (with query). ``headers`` are
    sent as given (``Host`` and ``Content-Length`` are added). ``fresh``, when given, returns
    headers that expire (a bearer token, a request signature): it is called in the calling
    process before the load and again every ``refresh`` seconds while it runs, and what it
    returns goes to the workers over a pipe (never printed, logged or written). ``refused``,
    when given, is called after the endpoint answered 401 (the next ``fresh`` should fetch a
    new credential). An answer other than 200 is a failed request of kind ``http-STATUS``."""

    url: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fresh: Callable[[], Mapping[str, str]] | None = None
    refresh: float = 60.0
    refused: Callable[[], None] | None = None


#: a request sent this long after its intended time is counted late (open-loop)
LATE = 0.002
#: an answer that takes longer fails as ``timeout``
TIMEOUT = 60.0


# --- the worker process: one asyncio loop, its share of the connections -----------------------

def _request_bytes(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[bytes, tuple]:
    """The whole request as bytes, and (host, port, tls, server name) to connect to."""
    import urllib.parse

    parsed = urllib.parse.urlsplit(url)
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    fields = {"Host": parsed.netloc, **headers, "Content-Length": str(len(body))}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (f"POST {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body,
            (parsed.hostname, port, tls, parsed.hostname))


class _Connection:
    """One keep-alive connection (an asyncio protocol): writes the request, reads the answer
    by Content-Length (or chunks, or to the close), and hands the outcome to the engine."""

    def __init__(self, engine: "_Worker"):
        self.engine = engine
        self.transport = None
        self.buffer = b""
        self.need: int | None = None      # body bytes still expected; -1 chunked; -2 to close
        self.status = 0
        self.keep = True
        self.busy = False
        self.began = self.sent_at = 0.0
        self.window = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.busy and self.need == -2:   # an answer that ends at the close
            self._done()
        elif self.busy:
            self.busy = False
            self.engine.failed(self, "timeout" if self.engine.expired(self) else "connection")
        self.engine.lost(self)

    def eof_received(self):
        return None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def send(self, request: bytes, began: float, window: int, now: float) -> None:
        self.busy, self.began, self.sent_at, self.window = True, began, now, window
        self.need, self.buffer = None, b""
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        if not self.busy:
            return
        if self.need is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            head = data[:end].lower()
            data = data[end + 4:]
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self.need = int(head[at + 17:stop if stop > 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.need = -1
            else:
                self.need = -2
            self.keep = b"\r\nconnection: close" not in head and (
                not head.startswith(b"http/1.0") or b"\r\nconnection: keep-alive" in head)
        if self.need >= 0:
            if len(data) < self.need:
                self.buffer = data
                return
        elif self.need == -1:
            if not self._chunks_end(data):
                self.buffer = data
                return
        else:
            return   # read to the close
        self._done()

    @staticmethod
    def _chunks_end(data: bytes) -> bool:
        at = 0
        while True:
            line = data.find(b"\r\n", at)
            if line < 0:
                return False
            size = int(data[at:line].split(b";")[0], 16)
            if size == 0:
                return data.find(b"\r\n\r\n", line) >= 0 or data.endswith(b"0\r\n\r\n")
            at = line + 2 + size + 2
            if at > len(data):
                return False

    def _done(self) -> None:
        self.busy = False
        if not self.keep and self.transport is not None:
            self.transport.close()
            self.transport = None   # connection_lost opens another when one is needed
        if self.status == 200:
            self.engine.answered(self)
        else:
            self.engine.failed(self, f"http-{self.status}")


class _Window:
    """What one window's requests came to, in this worker."""

    def __init__(self) -> None:
        import array
        from collections import Counter

        self.latencies = array.array("d")
        self.errors: Counter = Counter()
        self.dispatched = self.finished = self.late = self.dropped = 0
        self.first = self.last = self.ended = 0.0

    def report(self, number: int) -> dict:
        return {"window": number, "latencies": self.latencies.tobytes(),
                "errors": dict(self.errors), "late": self.late, "dropped": self.dropped,
                "sent": self.dispatched - self.dropped, "first": self.first,
                "last": self.last, "ended": self.ended}


class _Worker:
    def __init__(self, loop, out) -> None:
        self.loop, self.out = loop, out
        self.request = b""
        self.address: tuple = ()
        self.ssl = None
        self.connections: set[_Connection] = set()
        self.idle: list[_Connection] = []
        self.opening = 0
        self.windows: dict[int, _Window] = {}
        self.closed_left = 0
        self.closed_done = None
        self.mode = "closed"
        self.completed = 0
        self.timeout = TIMEOUT
        self.running = None

    # --- messages from the parent
    def setup(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
              tick: float = 0) -> None:
        self.url, self.body, self.timeout = url, body, timeout
        self.request, self.address = _request_bytes(url, body, headers)
        if self.address[2]:
            import ssl

            self.ssl = ssl.create_default_context()

    def headers(self, headers: Mapping[str, str]) -> None:
        self.request, _ = _request_bytes(self.url, self.body, headers)

    # --- connections
    async def _open(self) -> _Connection | None:
        host, port, tls, name = self.address
        self.opening += 1
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), host, port, ssl=self.ssl,
                server_hostname=name if tls else None)
        except OSError:
            return None
        finally:
            self.opening -= 1
        self.connections.add(conn)
        return conn

    def lost(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.mode == "closed" and self.closed_left > 0:
            self.loop.create_task(self._closed_connection())

    def expired(self, conn: _Connection) -> bool:
        return self.loop.time() - conn.sent_at > self.timeout

    async def _sweep(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.busy and now - conn.sent_at > self.timeout and conn.transport:
                    conn.transport.abort()

    # --- outcomes
    def answered(self, conn: _Connection) -> None:
        now = self.loop.time()
        window = self.windows.get(conn.window)
        if window is None:    # after a stop
            if conn.transport is not None:
                self.idle.append(conn)
            return
        window.latencies.append(now - conn.began)
        self._finished(conn, window, now)

    def failed(self, conn: _Connection, kind: str) -> None:
        window = self.windows.get(conn.window)
        if window is None:
            return
        window.errors[kind] += 1
        self._finished(conn, window, self.loop.time())
        if self.mode == "closed":
            self._closed_check()

    def _finished(self, conn: _Connection, window: _Window, now: float) -> None:
        self.completed += 1
        window.finished += 1
        window.ended = now
        if self.mode == "closed":
            if conn.transport is None or conn.busy:
                return   # lost: lost() opens another while requests are left
            if self.closed_left > 0:
                self.closed_left -= 1
                self._dispatch(conn, now, now)
            else:
                self.idle.append(conn)
                self._closed_check()
        else:
            if conn.transport is not None and not conn.busy:
                self.idle.append(conn)
            self._complete(conn.window)

    def _dispatch(self, conn: _Connection, began: float, now: float) -> None:
        window = self.windows[self.current]
        window.dispatched += 1
        if not window.first:
            window.first = now
        window.last = now
        conn.send(self.request, began, self.current, now)

    def _closed_check(self) -> None:
        if self.closed_left <= 0 and not self.opening and self.closed_done is not None \
                and not self.closed_done.done() and not any(c.busy for c in self.connections):
            self.closed_done.set_result(None)

    # --- closed loop: ``count`` requests over ``connections`` connections
    async def closed(self, count: int, connections: int) -> dict:
        import asyncio

        self.mode, self.current = "closed", 0
        self.windows = {0: _Window()}
        self.closed_done = self.loop.create_future()
        self.closed_left = count
        missing = connections - len(self.connections)
        if missing > 0:
            opened = await asyncio.gather(*(self._open() for _ in range(missing)))
            for conn in opened:
                if conn is None:
                    self.windows[0].errors["connection"] += 1
                    self.closed_left -= 1
                else:
                    self.idle.append(conn)
            if not self.connections and self.closed_left > 0:
                self.loop.create_task(self._closed_connection())
        starting, self.idle = self.idle[:connections], self.idle[connections:]
        for conn in starting:
            if self.closed_left <= 0:
                self.idle.append(conn)
                continue
            self.closed_left -= 1
            now = self.loop.time()
            self._dispatch(conn, now, now)
        self._closed_check()
        await self.closed_done
        return self.windows.pop(0).report(0)

    async def _closed_connection(self) -> None:
        import asyncio

        conn = await self._open()
        if self.closed_left <= 0:
            if conn is not None:
                self.idle.append(conn)
            return
        if conn is None:
            self.windows[0].errors["connection"] += 1
            self.closed_left -= 1
            if self.closed_left > 0 and not self.connections:
                await asyncio.sleep(0.05)   # nothing answers: fail the requests left slowly
                self.loop.create_task(self._closed_connection())
            self._closed_check()
            return
        self.closed_left -= 1
        now = self.loop.time()
        self._dispatch(conn, now, now)

    # --- open loop: request i (of every ``step``-th from ``first``) leaves at t0 + i / rate
    async def open(self, rate: float, t0: float, first: int, step: int, cap: int,
                   warm: int, size: int) -> None:
        """Window 0 is the warm-up (``warm`` requests), then windows of ``size``; the schedule
        runs until ``stop``; each window is reported once all its requests have finished."""
        import asyncio

        self.mode = "open"
        self.scheduled_past = -1
        index = first
        loop = self.loop
        while self.running:
            intended = t0 + index / rate
            now = loop.time()
            if intended > now:
                await asyncio.sleep(intended - now)
                continue
            number = 0 if index < warm else 1 + (index - warm) // size
            window = self.windows.get(number)
            if window is None:
                window = self.windows[number] = _Window()
                self.scheduled_past = number - 1
                self._complete(number - 1)
            self.current = number
            if now - intended > LATE:
                window.late += 1
            if self.idle:
                self._dispatch(self.idle.pop(), intended, now)
            elif len(self.connections) + self.opening < cap:
                window.dispatched += 1
                loop.create_task(self._open_and_send(intended, number))
            else:
                window.dispatched += 1
                window.dropped += 1
                window.finished += 1
            index += step

    async def _open_and_send(self, intended: float, number: int) -> None:
        conn = await self._open()
        window = self.windows.get(number)
        if window is None:
            return
        if conn is None:
            window.errors["connection"] += 1
            window.finished += 1
            self._complete(number)
            return
        now = self.loop.time()
        if not window.first:
            window.first = now
        window.last = max(window.last, now)
        conn.send(self.request, intended, number, now)

    def _complete(self, number: int) -> None:
        window = self.windows.get(number)
        if window is None or number > self.scheduled_past:
            return
        if window.finished >= window.dispatched:
            self._send(("window", window.report(number)))
            del self.windows[number]

    # --- the pipe
    def _send(self, message) -> None:
        import pickle
        import struct

        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.out.write(struct.pack(">I", len(data)) + data)
        self.out.flush()

    async def _tick(self, every: float) -> None:
        import asyncio

        while True:
            await asyncio.sleep(every)
            self._send(("tick", self.completed))


def _read_message(stream):
    import pickle
    import struct

    size = stream.read(4)
    if len(size) < 4:
        return None
    return pickle.loads(stream.read(struct.unpack(">I", size)[0]))


def _worker_main() -> None:
    """A worker process: messages in on stdin, results out on stdout (length-prefixed
    pickles, between this module and its parent only)."""
    import asyncio
    import os
    import sys
    import threading

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr   # nothing else may write to the pipe

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def read() -> None:
            while True:
                message = _read_message(stdin)
                loop.call_soon_threadsafe(inbox.put_nowait, message)
                if message is None:
                    return

        threading.Thread(target=read, daemon=True).start()
        worker = _Worker(loop, stdout)
        background = [loop.create_task(worker._sweep())]
        while True:
            message = await inbox.get()
            if message is None or message[0] == "quit":
                break
            kind, args = message
            if kind == "setup":
                worker.setup(**args)
                if args.get("tick"):
                    background.append(loop.create_task(worker._tick(args["tick"])))
                worker._send(("ready", None))
            elif kind == "headers":
                worker.headers(args)
            elif kind == "closed":
                worker._send(("window", await worker.closed(**args)))
            elif kind == "open":
                worker.running = loop.create_task(worker.open(**args))
            elif kind == "stop":
                task, worker.running = worker.running, None
                if task is not None:
                    await asyncio.wait([task])
                worker.windows.clear()
                worker._send(("stopped", None))
        for conn in list(worker.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in background:
            task.cancel()

    asyncio.run(serve())
    sys.stderr.flush()
    os._exit(0)   # the stdin reader thread may still hold its lock


if __name__ == "__main__":
    _worker_main()
