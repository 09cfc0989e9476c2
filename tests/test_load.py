"""The load generator: keep-alive raw sender, windows until stable, exact percentiles, errors."""

from __future__ import annotations

import http.server
import itertools
import threading

import pytest

from deployer import load
from deployer.client import EndpointError, _RawSender


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counter = itertools.count(1)
    connections: set = set()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).connections.add(self.client_address)
        n = next(self.counter)
        status = 500 if n % 10 == 0 else 200
        answer = b'{"error":"every tenth fails"}' if status == 500 else body[::-1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.counter = itertools.count(1)
    _Handler.connections = set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_errors_are_counted_by_kind_and_connections_reused(server):
    send = _RawSender(server, "/v2/models/m/infer", {"Content-Length": "5"}, b"hello", 5)
    result = load.run("m", send, requests=300, concurrency=3, warmup=0, max_windows=3)
    total = result.requests
    assert total == 300 and result.windows == 3
    assert result.errors == {"http-500": 30}
    assert result.throughput_rps > 0 and result.latency_ms["p50"] <= result.latency_ms["p99"]
    assert len(_Handler.connections) == 3, "one keep-alive connection per worker"


def test_refused_connection_is_an_error_of_its_own():
    send = _RawSender("127.0.0.1:9", "/", {}, b"", 1)  # discard port: refused
    with pytest.raises(EndpointError) as caught:
        send()
    assert caught.value.kind == "connection"


def test_percentiles_are_exact_nearest_rank():
    ordered = [float(x) for x in range(1, 101)]
    assert [load.percentile(ordered, p) for p in (50, 90, 95, 99, 100)] == [50, 90, 95, 99, 100]
    assert load.percentile([7.0], 99) == 7.0


def test_windows_repeat_until_stable():
    now = [0.0]  # a clock only the requests move: no scheduler can make this flaky
    delays = iter([0.03] * 20 + [0.008] * 200)  # slow start, then steady

    def send():
        now[0] += next(delays, 0.008)

    result = load.run("m", send, requests=30, concurrency=1, warmup=0, max_windows=10,
                      clock=lambda: now[0])
    assert result.stable and result.windows > 3
    assert result.latency_ms["max"] == 8.0, "the slow (30 ms) windows are not in the figures"
