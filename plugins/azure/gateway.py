"""The rehearsal's stand-in for a managed online endpoint's scoring host.

Run as ``python -m deployer_plugins.azure.gateway --key-file F --routes F --port-file F
[--requests-log F]``. It
demands ``Authorization: Bearer <key>`` (401 otherwise) and routes on the
``azureml-model-deployment`` header: a named deployment it knows (404 for an unknown one), or,
without the header, a deployment holding traffic, by weight (404 when none has any). Everything
else is proxied to that deployment's Triton unchanged; a streamed answer (Server-Sent Events
from ``generate_stream``, or any body of unknown length) is passed on piece by piece as it
arrives, chunked. ``GET /-/gateway`` answers 200 without auth: it is how the deployer waits for
the gateway, and no Azure route.

Each deployment's ``request_settings`` are enforced as a managed online endpoint does (see
:class:`Throttle`): ``concurrency`` (max_concurrent_requests_per_instance x instance_count)
requests at the model at once; past it a request waits in a queue as deep again (Azure admits at
most 2 x that many in parallel), and is refused with 429 "Too many pending requests" when the
queue is full, or when it waited the deprecated ``max_queue_wait_ms`` when that was sent; a
request not answered within ``request_timeout_ms`` (queue time included, as Azure asks to count
it) gets 408 "Request timeout". Only POSTs (inference) are throttled: GET and HEAD (health,
metadata, model config) pass, so a rehearsal's readiness and metadata checks never meet the
throttle a load test provokes.

The routes file is JSON ``{"deployments": {"blue": "http://127.0.0.1:PORT"}, "traffic":
{"blue": 100}, "limits": {"blue": {"concurrency": 16, "timeout_ms": 60000, "queue_ms": null}}}``
(no limits: no throttle); it and the key file are read again whenever they change (traffic
moves, keys are regenerated). The key file holds one accepted key or token a line, a token
followed by its expiry (seconds since the epoch): past it, the token gets 401. The key never
appears on the command line.

With ``--requests-log`` every request but the gateway's own health check appends one JSON line
``{"t": WALL, "ms": MS, "deployment": NAME or null, "status": CODE, "method": M}``: ``t`` when
its headers had been read (seconds since the epoch), ``ms`` from then to the end of its answer,
the deployment it was routed to (null when refused before routing). The line is written just
before the answer's last bytes, so a client that has read a whole answer finds its line in the
file: what a fake workspace serves as the endpoint's request metrics.
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .spec import DEPLOYMENT_HEADER

HEALTH_PATH = "/-/gateway"
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


def _streamed(method: str, answer: http.client.HTTPResponse) -> bool:
    """Whether an upstream answer comes as a stream: Server-Sent Events, or a body of unknown
    length (chunked, or until close). HEAD, 204 and 304 answers have none."""
    if method == "HEAD" or answer.status in (204, 304):
        return False
    kind = (answer.getheader("Content-Type") or "").lower()
    return answer.length is None or kind.startswith("text/event-stream")


class _Watched:
    """A file's parsed content, re-read when its mtime or size changes."""

    def __init__(self, path: Path, parse):
        self.path, self.parse = path, parse
        self._stamp = None
        self._value = None
        self._lock = threading.Lock()

    def get(self, again: bool = False):
        with self._lock:
            if again:  # a rewrite within the mtime's granularity keeps the size and mtime
                self._stamp = None
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._value = self.parse(self.path.read_text()) if stamp else None
                self._stamp = stamp
            return self._value


def parse_keys(text: str) -> list[tuple[str, float | None]]:
    """``[(key or token, expiry or None)]`` from the key file's lines."""
    keys = []
    for line in text.splitlines():
        secret, _, expiry = line.strip().partition(" ")
        if secret:
            keys.append((secret, float(expiry) if expiry else None))
    return keys


class Throttle:
    """One deployment's request limits: ``concurrency`` requests at the model at once; past
    it a request waits, at most ``concurrency`` of them (Azure admits 2 x concurrency in
    parallel and rejects the rest), for ``queue_ms`` when set, else within its deadline."""

    def __init__(self, concurrency: int, queue_ms: int | None):
        self.concurrency, self.queue_ms = concurrency, queue_ms
        self.active = self.waiting = 0
        self._cond = threading.Condition()

    def enter(self, deadline: float) -> int | None:
        """None once the request may go to the model (call :meth:`leave` after), else the
        status to answer: 429 (queue full, or queue wait over), 408 (deadline passed)."""
        with self._cond:
            if self.active < self.concurrency and not self.waiting:
                self.active += 1
                return None
            if self.waiting >= self.concurrency:
                return 429
            self.waiting += 1
            try:
                queue_end = (deadline if self.queue_ms is None
                             else min(deadline, time.monotonic() + self.queue_ms / 1000))
                while self.active >= self.concurrency:
                    left = queue_end - time.monotonic()
                    if left <= 0:
                        return 408 if queue_end >= deadline else 429
                    self._cond.wait(left)
                self.active += 1
                return None
            finally:
                self.waiting -= 1

    def leave(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify()


#: Azure's reasons for its own refusals (troubleshoot online endpoints: HTTP status codes)
REASONS = {408: "Request timeout", 429: "Too many pending requests"}
#: seconds an unthrottled upstream request may take
UPSTREAM_TIMEOUT = 180.0


class Gateway(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog (5 by default): a load of hundreds connecting at once would
    # overflow it, and a dropped SYN is sent again only a second or more later
    request_queue_size = 1024

    def __init__(self, address, key_file: Path, routes_file: Path,
                 requests_log: Path | None = None):
        super().__init__(address, Handler)
        self.key = _Watched(key_file, parse_keys)
        self.routes = _Watched(routes_file, json.loads)
        self.local = threading.local()
        self._throttles: dict[tuple, Throttle] = {}
        self._lock = threading.Lock()
        self._log = open(requests_log, "a", encoding="utf-8") if requests_log else None

    def record(self, line: dict) -> None:
        """Append one request's line to the requests log (when there is one), flushed."""
        if self._log is None:
            return
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self._lock:
            self._log.write(text)
            self._log.flush()

    def throttle(self, deployment: str, limits: dict) -> Throttle:
        """The deployment's Throttle; a new one when its limits change (an update)."""
        key = (deployment, int(limits["concurrency"]), limits.get("queue_ms"))
        with self._lock:
            if key not in self._throttles:
                self._throttles[key] = Throttle(key[1], key[2])
            return self._throttles[key]

    def upstream(self, base: str) -> http.client.HTTPConnection:
        return upstream(self.local, base)


def upstream(local: threading.local, base: str) -> http.client.HTTPConnection:
    """This thread's keep-alive connection to ``base`` (kept in ``local``)."""
    pool = local.__dict__.setdefault("pool", {})
    if base not in pool:
        parsed = urllib.parse.urlparse(base)
        pool[base] = http.client.HTTPConnection(parsed.netloc, timeout=UPSTREAM_TIMEOUT)
    return pool[base]


def bearer_ok(header: str, keys) -> bool:
    """Whether an Authorization ``header`` is ``Bearer`` one of ``keys`` (:func:`parse_keys`)
    before its expiry; compared in constant time."""
    given, now = header.encode(), time.time()
    return any(hmac.compare_digest(given, f"Bearer {secret}".encode())
               and (expiry is None or now < expiry) for secret, expiry in keys or [])


def _timeout(conn: http.client.HTTPConnection, seconds: float) -> None:
    """Set how long each wait on ``conn`` may take, connected or not."""
    conn.timeout = seconds
    if conn.sock is not None:
        conn.sock.settimeout(seconds)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Gateway

    def log_message(self, fmt, *args):  # one line per request on the gateway's log
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def _recorded(self, status: int) -> None:
        """This request is answered (but for its last bytes): its line in the requests log."""
        began = getattr(self, "_began", None)
        if began is None or self.path == HEALTH_PATH:
            return
        self._began = None  # once per request
        self.server.record({"t": round(began[0], 6),
                            "ms": round((time.monotonic() - began[1]) * 1000, 3),
                            "deployment": self._routed, "status": status,
                            "method": self.command})

    def _answer(self, status: int, message: str, extra: dict | None = None) -> None:
        body = json.dumps({"message": message}).encode()
        self.send_response(status, REASONS.get(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self._recorded(status)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self, again: bool = False) -> bool:
        return bearer_ok(self.headers.get("Authorization", ""), self.server.key.get(again))

    def _limits(self, deployment: str) -> dict | None:
        return ((self.server.routes.get() or {}).get("limits") or {}).get(deployment)

    def _route(self) -> tuple[str | None, str | None]:
        """(deployment, upstream URL), or (None, why) when there is nowhere to go."""
        routes = self.server.routes.get() or {}
        deployments = routes.get("deployments", {})
        wanted = self.headers.get(DEPLOYMENT_HEADER)
        if wanted:
            if wanted not in deployments:
                return None, f"deployment {wanted!r} not found on this endpoint"
            return wanted, deployments[wanted]
        weights = {d: w for d, w in routes.get("traffic", {}).items()
                   if w > 0 and d in deployments}
        if not weights:
            return None, ("no deployment holds traffic on this endpoint: set traffic or send "
                          f"the {DEPLOYMENT_HEADER} header")
        chosen = random.choices(list(weights), weights=list(weights.values()))[0]
        return chosen, deployments[chosen]

    def _handle(self) -> None:
        self._began, self._routed = (time.time(), time.monotonic()), None
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == HEALTH_PATH:
            return self._answer(200, "gateway up")
        if not (self._authorized() or self._authorized(again=True)):
            return self._answer(401, "Unauthorized: missing or invalid Authorization header",
                                {"WWW-Authenticate": "Bearer"})
        deployment, upstream = self._route()
        if deployment is None:
            return self._answer(404, upstream or "not found")
        self._routed = deployment
        limits = self._limits(deployment) if self.command == "POST" else None
        if not limits:
            return self._forward(deployment, upstream, body, None)
        timeout_ms = int(limits["timeout_ms"])
        deadline = time.monotonic() + timeout_ms / 1000
        throttle = self.server.throttle(deployment, limits)
        refused = throttle.enter(deadline)
        if refused == 429:
            return self._answer(429, f"Too many pending requests: deployment {deployment!r} "
                                f"serves {throttle.concurrency} requests at once "
                                "(max_concurrent_requests_per_instance x instance_count) and "
                                "queues as many")
        if refused == 408:
            return self._timed_out(deployment, timeout_ms)
        try:
            self._forward(deployment, upstream, body, (deadline, timeout_ms))
        finally:
            throttle.leave()

    def _timed_out(self, deployment: str, timeout_ms: int) -> None:
        self._answer(408, f"Request timeout: deployment {deployment!r} did not answer within "
                          f"request_timeout_ms {timeout_ms}")

    def _forward(self, deployment: str, upstream: str, body: bytes,
                 limit: tuple[float, int] | None) -> None:
        """Send the request to ``upstream`` and pass its answer on; with ``limit``
        (deadline, request_timeout_ms) an answer not complete by the deadline is a 408."""
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP and k.lower() not in ("authorization",
                                                                   DEPLOYMENT_HEADER)}
        headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            conn = self.server.upstream(upstream)
            try:
                if limit:
                    _timeout(conn, max(0.001, limit[0] - time.monotonic()))
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                streamed = _streamed(self.command, answer)
                payload = None if streamed else answer.read()
                if limit:  # a stream relays at the usual pace once it has begun
                    _timeout(conn, UPSTREAM_TIMEOUT)
                break
            except TimeoutError:
                conn.close()  # the model goes on; its answer is not awaited
                if limit:  # it waited the rest of the request's time
                    return self._timed_out(deployment, limit[1])
                return self._answer(502, f"deployment {deployment!r} did not answer in "
                                         f"{UPSTREAM_TIMEOUT:.0f}s")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == 2:
                    return self._answer(502, f"deployment {deployment!r} did not answer: {exc}")
        self.send_response(answer.status)
        for key_, value in answer.getheaders():
            if key_.lower() not in _HOP:
                self.send_header(key_, value)
        if streamed:
            return self._relay(conn, answer, deployment)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header(DEPLOYMENT_HEADER, deployment)
        self._recorded(answer.status)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _relay(self, conn: http.client.HTTPConnection, answer: http.client.HTTPResponse,
               deployment: str) -> None:
        """Pass a streamed answer on piece by piece as it arrives: chunked to an HTTP/1.1
        client, until close to an older one. A stream cut short upstream stays cut short here
        (no last chunk, connection closed), and its upstream connection is never reused."""
        chunked = self.request_version == "HTTP/1.1"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.send_header(DEPLOYMENT_HEADER, deployment)
        self.end_headers()
        try:
            while piece := answer.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.wfile.flush()
            if answer.length:  # a Content-Length the upstream did not fill
                raise http.client.IncompleteRead(b"", answer.length)
            self._recorded(answer.status)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            answer.close()  # read to its end: the connection may serve the next request
        except (OSError, http.client.HTTPException) as exc:
            self._recorded(answer.status)
            conn.close()
            self.close_connection = True
            self.log_error("stream from deployment %r cut short: %r", deployment, exc)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--routes", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, help="where to write the port once listening")
    parser.add_argument("--requests-log", type=Path,
                        help="append one JSON line per request answered (see above)")
    args = parser.parse_args(argv)
    return serve(Gateway((args.host, args.port), args.key_file, args.routes,
                         args.requests_log), args.host, args.port_file)


def serve(server: ThreadingHTTPServer, host: str, port_file: Path | None) -> int:
    """Write the port ``server`` listens on to ``port_file`` (atomically: the starter polls
    for it), then serve until interrupted."""
    if port_file:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        os.replace(tmp, port_file)
    sys.stderr.write(f"gateway listening on {host}:{server.server_address[1]}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
