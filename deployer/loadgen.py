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
import select as _select
from typing import Callable, Mapping

_IN = getattr(_select, "EPOLLIN", getattr(_select, "POLLIN", 1))
_OUT = getattr(_select, "EPOLLOUT", getattr(_select, "POLLOUT", 4))
_ERR = getattr(_select, "EPOLLERR", 8) | getattr(_select, "EPOLLHUP", 16)


@dataclasses.dataclass
class HttpRequest:
    """One request, sent again and again by the load generator.

    ``url`` is ``http://`` or ``https://`` host, port and path (with query). ``headers`` are
    sent as given (``Host`` and ``Content-Length`` are added). ``fresh``, when given, returns
    headers that expire (a bearer token, a request signature): it is called in the calling
    process before the load and again every ``refresh`` seconds while it runs, and what it
    returns goes to the workers over a pipe (never printed, logged or written). ``refused``,
    when given, is called after the endpoint answered 401 (the next ``fresh`` should fetch a
    new credential). An answer other than 200 is a failed request of kind ``http-STATUS``, or
    of the kind the answer's ``error_header`` names when it has one (SageMaker's
    ``x-amzn-ErrorType: ThrottlingException:...`` → ``ThrottlingException``)."""

    url: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    fresh: Callable[[], Mapping[str, str]] | None = None
    refresh: float = 60.0
    refused: Callable[[], None] | None = None
    error_header: str | None = None


#: a request sent this long after its intended time is counted late (open-loop)
LATE = 0.002
#: an answer that takes longer fails as ``timeout``
TIMEOUT = 60.0
#: connections a worker opens at once (hundreds of handshakes at once overflow a server's
#: listen backlog; its dropped SYNs come back seconds later)
CONNECTING = 32


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


class _Window:
    """What one window's requests came to, in this worker."""

    def __init__(self) -> None:
        import array

        self.latencies = array.array("d")
        self.errors: dict[str, int] = {}
        self.dispatched = self.finished = self.late = self.dropped = 0
        self.first = self.last = self.ended = 0.0

    def report(self, number: int, completed: int) -> dict:
        return {"window": number, "latencies": self.latencies.tobytes(),
                "errors": self.errors, "late": self.late, "dropped": self.dropped,
                "sent": self.dispatched - self.dropped, "first": self.first,
                "last": self.last, "ended": self.ended, "completed": completed}


class _Connection:
    """One keep-alive connection and the request it carries (at most one at a time)."""

    __slots__ = ("sock", "fd", "state", "buffer", "need", "status", "keep", "busy", "began",
                 "sent_at", "window", "out", "generation", "retried", "kind")

    def __init__(self) -> None:
        self.sock = None
        self.fd = -1
        self.state = "waiting"      # waiting (for a connect slot), connecting, tls, open
        self.buffer = b""
        self.need = None            # body bytes expected; -1 chunked; -2 to the close
        self.status = 0
        self.keep = True
        self.busy = False
        self.began = self.sent_at = 0.0
        self.window = 0
        self.out = b""
        self.generation = 0         # of the headers it was sent with
        self.retried = False
        self.kind = None            # a failed answer's kind, from the error header


def _wants_io(exc: OSError) -> bool:
    """A TLS socket's "try again when readable/writable" (not a failure)."""
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")


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


class _Worker:
    """A worker process: one poll loop over its connections and the parent's pipe, no
    threads, no asyncio (the fewest instructions between two requests)."""

    def __init__(self, out) -> None:
        import time

        self.out = out
        self.clock = time.monotonic
        self.poller = _select.epoll() if hasattr(_select, "epoll") else _Poll()
        self.conns: dict[int, _Connection] = {}     # by fd, once connecting
        self.pool: set[_Connection] = set()         # every connection, any state
        self.idle: list[_Connection] = []
        self.waiting: list[_Connection] = []        # for a connect slot
        self.connecting = 0
        self.windows: dict[int, _Window] = {}
        self.mode = "idle"
        self.completed = 0
        self.closed_left = 0
        self.connections = 0
        self.tick = 0.0
        self.next_tick = 0.0
        self.next_sweep = 0.0
        self.timeout = TIMEOUT
        self.request = b""
        self.ssl = None
        self.inbox = b""
        self.quit = False
        self.buffer = bytearray(65536)   # every read lands here first
        self.retry = False               # a 401 goes again with newer headers
        self.error_header = None
        self.generation = 0         # of the headers: each "headers" message is the next
        self.asked = 0              # the generation a 401 last asked the parent for
        self.parked: list[_Connection] = []   # 401s waiting for new headers

    # --- messages from the parent
    def setup(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
              tick: float = 0, retry: bool = False, error_header: str | None = None) -> None:
        import socket

        self.url, self.body, self.timeout, self.tick = url, body, timeout, tick
        self.retry = retry
        self.error_header = f"\r\n{error_header.lower()}:".encode() if error_header else None
        self.request, (host, port, tls, self.name) = _request_bytes(url, body, headers)
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        self.family, self.address = family, address
        if tls:
            import os
            import ssl

            self.ssl = ssl.create_default_context()
            # the bundle the SDKs would trust (requests', botocore's), besides the system's
            for name in ("REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE", "CURL_CA_BUNDLE"):
                if os.environ.get(name) and os.path.isfile(os.environ[name]):
                    self.ssl.load_verify_locations(os.environ[name])

    def on_message(self, message) -> None:
        kind, args = message
        if kind == "setup":
            self.setup(**args)
            self.send(("ready", None))
        elif kind == "headers":
            self.request, _ = _request_bytes(self.url, self.body, args)
            self.generation += 1
            parked, self.parked = self.parked, []
            for conn in parked:
                if conn.busy and conn.state == "open":
                    self.resend(conn)
        elif kind == "closed":
            self.start_closed(**args)
        elif kind == "open":
            self.start_open(**args)
        elif kind == "stop":
            self.mode = "idle"
            self.windows.clear()
            self.send(("stopped", None))
        elif kind == "quit":
            self.quit = True

    def send(self, message) -> None:
        self.out.write(framed(message))
        self.out.flush()

    def read_inbox(self, fd: int) -> None:
        import os
        import pickle
        import struct

        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            self.quit = True
            return
        self.inbox += chunk
        while len(self.inbox) >= 4:
            size = struct.unpack(">I", self.inbox[:4])[0]
            if len(self.inbox) < 4 + size:
                return
            message, self.inbox = pickle.loads(self.inbox[4:4 + size]), self.inbox[4 + size:]
            self.on_message(message)

    # --- connections
    def new_connection(self) -> _Connection:
        conn = _Connection()
        self.pool.add(conn)
        if self.connecting < CONNECTING:
            self.connect(conn)
        else:
            self.waiting.append(conn)
        return conn

    def connect(self, conn: _Connection) -> None:
        import socket

        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock, conn.fd, conn.state = sock, sock.fileno(), "connecting"
        self.connecting += 1
        self.conns[conn.fd] = conn
        sock.connect_ex(self.address)
        self.poller.register(conn.fd, _OUT)

    def connected(self, conn: _Connection) -> None:
        import socket

        if conn.state == "connecting":
            error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.lost(conn, "connection")
                return
            if self.ssl is not None:
                conn.sock = self.ssl.wrap_socket(conn.sock, server_hostname=self.name,
                                                 do_handshake_on_connect=False)
                conn.state = "tls"
        if conn.state == "tls":
            import ssl

            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.poller.modify(conn.fd, _IN)
                return
            except ssl.SSLWantWriteError:
                self.poller.modify(conn.fd, _OUT)
                return
            except (OSError, ValueError):
                self.lost(conn, "connection")
                return
        conn.state = "open"
        self.connecting -= 1
        self.next_waiting()
        self.poller.modify(conn.fd, _IN)
        if conn.busy:
            self.write(conn, self.request)
        else:
            self.ready(conn)

    def next_waiting(self) -> None:
        while self.waiting and self.connecting < CONNECTING:
            self.connect(self.waiting.pop())

    def write(self, conn: _Connection, data: bytes) -> None:

        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if not _wants_io(exc):
                self.lost(conn, "connection")
                return
            sent = 0
        if sent < len(data):
            conn.out = data[sent:]
            self.poller.modify(conn.fd, _IN | _OUT)

    def flush(self, conn: _Connection) -> None:

        data, conn.out = conn.out, b""
        self.poller.modify(conn.fd, _IN)
        self.write(conn, data)

    def lost(self, conn: _Connection, kind: str) -> None:
        """The connection is gone: fail what it carried; the loop carries on without it."""
        if conn in self.waiting:
            self.waiting.remove(conn)
        if conn.fd in self.conns:
            del self.conns[conn.fd]
            try:
                self.poller.unregister(conn.fd)
            except (OSError, ValueError):
                pass
        if conn.state in ("connecting", "tls"):
            self.connecting -= 1
        if conn.sock is not None:
            conn.sock.close()
        conn.sock, conn.state = None, "closed"
        self.pool.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.next_waiting()
        if conn.busy:
            conn.busy = False
            if conn.need == -2 and kind == "closed":   # an answer that ends at the close
                self.finished(conn, None if conn.status == 200 else
                              conn.kind or f"http-{conn.status}")
            else:
                self.finished(conn, kind)

    def readable(self, conn: _Connection) -> None:
        try:
            self.read(conn)
        except ValueError:   # a status, length or chunk size that is not a number
            self.lost(conn, "bad-answer")

    def read(self, conn: _Connection) -> None:
        buffer = self.buffer
        try:
            size = conn.sock.recv_into(buffer)
            if self.ssl is None and size and conn.busy and conn.need is None and \
                    not conn.buffer and self.whole(conn, buffer, size):
                return
            data = bytes(buffer[:size])
            if self.ssl is not None:
                while conn.sock.pending():
                    data += conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if not _wants_io(exc):
                self.lost(conn, "connection")
            return
        if not data:
            self.lost(conn, "closed" if conn.busy and conn.need == -2 else "connection")
            return
        if not conn.busy:
            return
        if conn.buffer:
            data, conn.buffer = conn.buffer + data, b""
        if conn.need is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                conn.buffer = data
                return
            data_head = data[:end]
            head = data_head.lower()
            data = data[end + 4:]
            conn.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                conn.need = int(head[at + 17:stop if stop > 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                conn.need = -1
            else:
                conn.need = -2
            conn.keep = b"\r\nconnection: close" not in head and (
                not head.startswith(b"http/1.0") or b"\r\nconnection: keep-alive" in head)
            conn.kind = None
            if conn.status != 200 and self.error_header:
                at = head.find(self.error_header)
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    value = data_head[at + len(self.error_header):stop if stop > 0 else None]
                    conn.kind = value.decode("latin-1").strip().split(":")[0] or None
        if conn.need >= 0:
            if len(data) < conn.need:
                conn.buffer = data
                return
        elif conn.need == -1:
            if not _chunks_end(data):
                conn.buffer = data
                return
        else:
            return   # to the close
        if conn.status == 401 and not conn.retried and conn.keep:
            self.refused(conn)
            return
        conn.busy = False
        if not conn.keep or conn.out:   # the server closes, or the request was not all sent
            conn.busy = True
            conn.need = -2
            self.lost(conn, "closed")
            return
        self.finished(conn, None if conn.status == 200 else conn.kind or f"http-{conn.status}")

    def whole(self, conn: _Connection, buffer: bytearray, size: int) -> bool:
        """The common answer, read in place: all of it in one read, ``Content-Length`` spelt
        so, no ``Connection`` header; else False (the general reader takes it)."""
        end = buffer.find(b"\r\n\r\n", 0, size)
        if end < 0 or buffer.find(b"onnection:", 0, end) >= 0 or \
                not buffer.startswith(b"HTTP/1.1 "):
            return False
        at = buffer.find(b"\r\nContent-Length:", 0, end)
        if at < 0:
            return False
        stop = buffer.find(b"\r\n", at + 2, end + 2)
        if size - end - 4 != int(buffer[at + 17:stop]):
            return False
        conn.status = status = int(buffer[9:12])
        if status != 200 and self.error_header:
            return False   # the general reader reads the kind
        if status == 401 and not conn.retried:
            self.refused(conn)
            return True
        if conn.out:   # answered before the request was all sent: this stream is done
            conn.busy, conn.need = True, -2
            self.lost(conn, "closed")
            return True
        conn.busy = False
        self.finished(conn, None if status == 200 else f"http-{status}")
        return True

    # --- a 401: once, the request goes again with new headers
    def refused(self, conn: _Connection) -> None:
        """The endpoint refused the credential: send again with newer headers (asking the
        parent for them, once per generation); a second 401 is the request's error."""
        conn.retried = True
        if not self.retry or conn.out:   # nothing newer can come / the stream is out of step
            conn.busy = False
            if conn.out:
                conn.busy, conn.need = True, -2
                conn.status = 401
                self.lost(conn, "closed")
            else:
                self.finished(conn, "http-401")
            return
        if conn.generation < self.generation:
            self.resend(conn)
            return
        self.parked.append(conn)
        if self.asked <= self.generation:
            self.asked = self.generation + 1
            self.send(("refused", None))

    def resend(self, conn: _Connection) -> None:
        conn.need, conn.buffer, conn.generation = None, b"", self.generation
        self.write(conn, self.request)

    # --- outcomes
    def finished(self, conn: _Connection, error: str | None) -> None:
        now = self.clock()
        window = self.windows.get(conn.window)
        if window is not None:
            if error is None:
                window.latencies.append(now - conn.began)
            else:
                window.errors[error] = window.errors.get(error, 0) + 1
            window.finished += 1
            window.ended = now
            self.completed += 1
        if conn.state == "open":
            self.ready(conn)
        elif self.mode == "closed" and self.closed_left > 0:
            self.closed_left -= 1
            self.carry(self.new_connection(), now, now)   # the one lost: another
        if window is not None and self.mode == "open":
            self.complete(conn.window)
        elif self.mode == "closed":
            self.closed_check()

    def ready(self, conn: _Connection) -> None:
        """An open connection with nothing to carry: the next request, or idle."""
        if self.mode == "closed" and self.closed_left > 0:
            self.closed_left -= 1
            now = self.clock()
            self.carry(conn, now, now)
        else:
            self.idle.append(conn)

    def carry(self, conn: _Connection, began: float, now: float) -> None:
        window = self.windows[self.current]
        window.dispatched += 1
        if not window.first:
            window.first = now
        window.last = now
        conn.busy, conn.began, conn.sent_at, conn.window = True, began, now, self.current
        conn.need, conn.buffer, conn.out = None, b"", b""
        conn.generation, conn.retried = self.generation, False
        if conn.state == "open":
            self.write(conn, self.request)   # else: sent once connected

    # --- closed loop: ``count`` requests over ``connections`` connections
    def start_closed(self, count: int, connections: int) -> None:
        self.mode, self.current = "closed", 0
        self.windows = {0: _Window()}
        self.closed_left, self.connections = count, connections
        while len(self.pool) < connections and self.closed_left > 0:
            self.closed_left -= 1
            now = self.clock()
            self.carry(self.new_connection(), now, now)
        while self.idle and self.closed_left > 0:
            self.ready(self.idle.pop())
        self.closed_check()

    def closed_check(self) -> None:
        if self.mode == "closed" and self.closed_left <= 0 and \
                not any(c.busy for c in self.pool):
            self.mode = "idle"
            self.send(("window", self.windows.pop(0).report(0, self.completed)))

    # --- open loop: request i (every ``step``-th from ``first``) leaves at t0 + i / rate
    def start_open(self, rate: float, t0: float, first: int, step: int, cap: int, warm: int,
                   size: int) -> None:
        """Window 0 is the warm-up (``warm`` requests), then windows of ``size``; the schedule
        runs until ``stop``; each window is reported once all its requests have finished."""
        self.mode = "open"
        self.rate, self.t0, self.index, self.step = rate, t0, first, step
        self.cap, self.warm, self.size = cap, warm, size
        self.scheduled_past = -1
        self.windows = {}

    def due(self, now: float) -> float | None:
        """Send what the schedule wants by ``now``; the seconds to the next send."""
        while True:
            intended = self.t0 + self.index / self.rate
            if intended > now:
                return intended - now
            index = self.index
            number = 0 if index < self.warm else 1 + (index - self.warm) // self.size
            window = self.windows.get(number)
            if window is None:
                window = self.windows[number] = _Window()
                self.scheduled_past = number - 1
                self.complete(number - 1)
            self.current = number
            if self.idle or len(self.pool) < self.cap:
                if now - intended > LATE:
                    window.late += 1
                self.carry(self.idle.pop() if self.idle else self.new_connection(),
                           intended, now)
            else:
                window.dispatched += 1
                window.dropped += 1
                window.finished += 1
            self.index += self.step

    def complete(self, number: int) -> None:
        window = self.windows.get(number)
        if window is None or number > self.scheduled_past:
            return
        if window.finished >= window.dispatched:
            self.send(("window", window.report(number, self.completed)))
            del self.windows[number]

    # --- the loop
    def sweep(self, now: float) -> None:
        for conn in list(self.pool):
            if conn.busy and now - conn.sent_at > self.timeout:
                self.lost(conn, "timeout")

    def run(self, inbox: int) -> None:
        import os

        os.set_blocking(inbox, False)
        self.poller.register(inbox, _IN)
        conns, clock = self.conns, self.clock
        while not self.quit:
            now = clock()
            wait = 1.0
            if self.mode == "open":
                wait = min(wait, self.due(now))
            if self.tick and self.mode != "idle":
                if now >= self.next_tick:
                    self.next_tick = now + self.tick
                    self.send(("tick", self.completed))
                wait = min(wait, max(0.0, self.next_tick - now))
            if now >= self.next_sweep:
                self.next_sweep = now + 1.0
                self.sweep(now)
            for fd, event in self.poller.poll(wait):
                if fd == inbox:
                    self.read_inbox(fd)
                    continue
                conn = conns.get(fd)
                if conn is None:
                    continue
                if conn.state != "open":
                    self.connected(conn)
                elif event & _IN:
                    self.readable(conn)
                elif event & _ERR:
                    self.lost(conn, "connection")
                if conn.out and conn.state == "open" and event & _OUT:
                    self.flush(conn)
        for conn in list(self.pool):
            if conn.sock is not None:
                conn.sock.close()


class _Poll:
    """select.poll with epoll's seconds (where there is no epoll)."""

    def __init__(self) -> None:
        import select

        self._poll = select.poll()
        self.register, self.modify, self.unregister = (self._poll.register, self._poll.modify,
                                                       self._poll.unregister)

    def poll(self, timeout: float):
        return self._poll.poll(max(0, int(timeout * 1000 + 0.999)))


def framed(message) -> bytes:
    """A message between the deployer and a worker: its length, then its pickle."""
    import pickle
    import struct

    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">I", len(data)) + data


def _read_message(stream):
    import pickle
    import struct

    size = stream.read(4)
    if len(size) < 4:
        return None
    return pickle.loads(stream.read(struct.unpack(">I", size)[0]))


def _worker_main() -> None:
    """A worker process: messages in on stdin, results out on stdout (length-prefixed
    pickles, between this module and its parent only). Ctrl-C is the parent's to handle: it
    ends the workers by closing their stdin."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr   # nothing else may write to the pipe
    _Worker(stdout).run(sys.stdin.fileno())


if __name__ == "__main__":
    _worker_main()
