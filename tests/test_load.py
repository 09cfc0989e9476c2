"""The load generator: keep-alive raw sender, windows until stable, exact percentiles, errors."""

from __future__ import annotations

import http.server
import itertools
import threading
from pathlib import Path

import pytest

from deployer import load
from deployer.client import EndpointError, _RawSender
from deployer.loadgen import HttpRequest


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


# --- the engine: worker processes, many in flight, a fixed rate ------------------------------

class _Counting(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def _serve(handler):
    httpd = _Counting(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v2/models/m/infer"


def _stop(httpd):
    httpd.shutdown()
    httpd.server_close()


def test_engine_holds_512_in_flight_from_two_processes():
    """A closed loop at 512 over two worker processes: every connection used, every request
    counted once, the refusals by kind, progress to the last request."""
    _Handler.counter = itertools.count(1)
    _Handler.connections = set()
    httpd, url = _serve(_Handler)
    seen = []
    try:
        result = load.run("m", HttpRequest(url, b"hello", {"Content-Type": "text/plain"}),
                          requests=3072, concurrency=512, warmup=0, max_windows=3,
                          processes=2, done=seen.append)
    finally:
        _stop(httpd)
    assert result.processes == 2 and result.windows == 3
    assert result.requests == 3072 and result.errors == {"http-500": 307}
    assert len(_Handler.connections) == 512, "one keep-alive connection per request in flight"
    assert seen[-1] == 3072 and seen == sorted(seen)
    assert set(result.window_cv) == {"throughput", "p50"}
    assert _my_workers() == [], "the workers end with the load"


def test_percentiles_merge_exactly_across_processes():
    import array

    def report(values):
        return {"latencies": array.array("d", values).tobytes(), "errors": {"http-500": 1},
                "late": 0, "dropped": 0, "sent": len(values) + 1, "first": 1.0, "last": 2.0,
                "ended": 2.0}

    # two processes' raw latencies, interleaved: no per-process summary could give these
    latencies, errors, counts = load._merged([report([0.001 * i for i in range(1, 101, 2)]),
                                              report([0.001 * i for i in range(2, 101, 2)])])
    result = load._result("m", 2, [latencies], [1.0], errors, [], "request")
    assert result.latency_ms["p50"] == 50.0 and result.latency_ms["p99"] == 99.0
    assert result.requests == 102 and counts["sent"] == 102


def test_fixed_rate_keeps_sending_through_a_stall_and_measures_from_the_intended_time():
    """Open loop: while the server holds every answer, the schedule goes on (a closed loop
    would send nothing more), and the stall is in the latencies, measured from each request's
    intended send time (so at least what the server held it)."""
    release, enough = threading.Event(), threading.Event()
    held, lock = [], threading.Lock()

    class Stalling(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        seen = itertools.count(1)

        def do_POST(self):  # noqa: N802
            import time

            self.rfile.read(int(self.headers["Content-Length"]))
            arrived = time.monotonic()
            if next(self.seen) > 50 and not release.is_set():   # a stall in the first window
                with lock:
                    held.append(arrived)
                    if len(held) == 20:
                        enough.set()
                release.wait()
                with lock:
                    held[held.index(arrived)] = time.monotonic() - arrived
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd, url = _serve(Stalling)
    threading.Thread(target=lambda: enough.wait() and release.set(), daemon=True).start()
    try:
        result = load.run("m", HttpRequest(url, b"x"), requests=300, concurrency=64,
                          warmup=50, max_windows=3, rate=200.0)
    finally:
        release.set()
        _stop(httpd)
    assert len(held) == 20, "20 requests left while none was answered"
    assert result.rate == 200.0 and result.dropped == 0 and result.errors == {}
    assert result.requests == 600, "three windows of a second of the schedule"
    assert result.latency_ms["max"] >= max(held) * 1000


def test_fixed_rate_drops_what_finds_every_slot_busy():
    """At most 2 in flight, both held: each send the schedule wants meanwhile is dropped
    (counted, not queued), until the server answers again."""
    release, held = threading.Event(), []

    class Holding(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            if not release.is_set():
                held.append(1)
                release.wait()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    def done(count):   # a progress tick comes a quarter second of the schedule later
        if len(held) == 2:
            release.set()

    httpd, url = _serve(Holding)
    try:
        result = load.run("m", HttpRequest(url, b"x"), requests=300, concurrency=2, warmup=2,
                          max_windows=3, rate=200.0, processes=1, done=done)
    finally:
        release.set()
        _stop(httpd)
    assert len(held) == 2 and result.concurrency == 2
    assert result.dropped > 0 and result.errors == {}


def test_a_refused_credential_is_renewed_and_the_request_sent_again():
    refused = []

    class Guarded(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.headers.get("Authorization") == "Bearer new"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd, url = _serve(Guarded)
    token = ["old"]

    def fresh():
        return {"Authorization": f"Bearer {token[0]}"}

    def renew():
        refused.append(True)
        token[0] = "new"

    try:
        result = load.run("m", HttpRequest(url, b"x", fresh=fresh, refused=renew),
                          requests=300, concurrency=4, warmup=20, max_windows=3)
    finally:
        _stop(httpd)
    assert refused == [True], "the first 401 asked for one new credential"
    assert result.errors == {} and result.requests == 300, "each refused request went again"


@pytest.mark.usefixtures("tritonserver")
def test_test_step_at_a_fixed_rate_on_the_local_triton(cli, tmp_path):
    """``deployer test --rate``: the offered rate, what was sent and dropped, the windows'
    variation; a rate without a request count, or on a stateful model, is one line, exit 2."""
    from conftest import EXAMPLES

    deployed = cli("deploy", EXAMPLES / "add_sub" / "models", "--name", "paced")
    assert deployed.code == 0, deployed
    try:
        tested = cli("test", "paced", "--requests", "600", "--rate", "300", "--json")
        assert tested.code == 0, tested
        measured = tested.json()["load"][0]
        assert measured["rate"] == 300.0 and measured["concurrency"] == 512
        assert measured["errors"] == {} and measured["dropped"] == 0
        assert measured["requests"] >= 900 and measured["processes"] == 1
        assert set(measured["window_cv"]) == {"throughput", "p50"}
        text = cli("test", "paced", "--requests", "300", "--rate", "300",
                   "--concurrency", "64")
        assert "at 300/s offered (at most 64 in flight)" in text.out
        assert "variation between windows: throughput" in text.out
        alone = cli("test", "paced", "--rate", "300")
        assert alone.code == 2 and "--rate sets the pace of a load" in alone.err
        assert "Traceback" not in alone.err
    finally:
        assert cli("teardown", "paced").code == 0
    acc = cli("deploy", Path(__file__).parent / "repos" / "acc", "--name", "paced-acc")
    assert acc.code == 0, acc
    try:
        refused = cli("test", "paced-acc", "--requests", "100", "--rate", "50")
        assert refused.code == 2 and "a stateful model's sequences" in refused.err
        assert len(refused.err.strip().splitlines()) <= 2 and "Traceback" not in refused.err
    finally:
        assert cli("teardown", "paced-acc").code == 0


def test_credentials_that_cannot_be_had_stop_the_load_in_one_line():
    from deployer.errors import Unavailable

    def fresh():
        raise EndpointError("fetching a new token: the workspace refused", kind="token")

    with pytest.raises(Unavailable) as caught:
        load.run("m", HttpRequest("http://127.0.0.1:9/x", b"x", fresh=fresh), requests=10,
                 concurrency=2)
    assert str(caught.value) == ("the load cannot get its credentials: fetching a new token: "
                                 "the workspace refused")
    assert _my_workers() == [], "no worker process outlives the load"


def _my_workers() -> list[int]:
    """Load worker processes that are children of this one."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
            command = open(f"/proc/{entry}/cmdline", "rb").read()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and \
                b"deployer.loadgen" in command:
            found.append(int(entry))
    return found


def _answering(mode: str):
    """A handler answering every POST in one of the ways HTTP allows."""

    class Answer(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if mode == "http10" else "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"y" * 70_000
            self.send_response(200)
            if mode == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (body[:30_000], body[30_000:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                return
            if mode == "close":
                self.send_header("Connection", "close")
            if mode == "bad":
                self.send_header("Content-Length", "many")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Answer


@pytest.mark.parametrize("mode", ["chunked", "close", "http10", "plain"])
def test_every_way_an_answer_can_end(mode):
    """Chunks, a close after the answer (Connection: close, HTTP/1.0), or Content-Length:
    every request answered, closed-loop and at a rate."""
    httpd, url = _serve(_answering(mode))
    try:
        closed = load.run("m", HttpRequest(url, b"x"), requests=150, concurrency=3,
                          max_windows=3)
        paced = load.run("m", HttpRequest(url, b"x"), requests=60, concurrency=8, rate=60.0,
                         max_windows=3)
    finally:
        _stop(httpd)
    assert closed.errors == {} and closed.requests == 150
    assert paced.errors == {} and paced.dropped == 0 and paced.requests == 180


def test_an_answer_that_cannot_be_read_is_a_failed_request():
    httpd, url = _serve(_answering("bad"))
    try:
        result = load.run("m", HttpRequest(url, b"x"), requests=30, concurrency=2,
                          max_windows=3)
    finally:
        _stop(httpd)
    assert result.errors == {"bad-answer": 30} and _my_workers() == []


def test_https_with_the_system_trust(tmp_path, monkeypatch):
    """TLS: the non-blocking handshake and reads, the certificate checked against the trust
    store (here SSL_CERT_FILE, as a user's corporate CA would be)."""
    import datetime
    import ssl

    crypto = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = crypto.Name([crypto.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (crypto.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(crypto.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(crypto.SubjectAlternativeName([crypto.DNSName("localhost")]),
                           critical=False)
            .add_extension(crypto.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    httpd, url = _serve(_answering("plain"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    url = url.replace("http://127.0.0.1", "https://localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    try:
        closed = load.run("m", HttpRequest(url, b"x"), requests=150, concurrency=3,
                          max_windows=3)
        paced = load.run("m", HttpRequest(url, b"x"), requests=60, concurrency=8, rate=60.0,
                         max_windows=3)
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = load.run("m", HttpRequest(url, b"x"), requests=6, concurrency=2,
                             max_windows=3)
    finally:
        _stop(httpd)
    assert closed.errors == {} and closed.requests == 150
    assert paced.errors == {} and paced.requests == 180
    assert untrusted.errors == {"connection": 6}, "a certificate no one trusts is refused"


def test_a_fixed_rate_into_a_server_that_never_answers(monkeypatch):
    """Every slot held (the one request waits for its timeout): each window's sends are all
    dropped, and the figures say so (no sends, no rate sent) instead of failing."""
    monkeypatch.setattr(load, "TIMEOUT", 4.0)
    gone = threading.Event()

    class Silent(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            gone.wait()

        def log_message(self, *args):
            pass

    httpd, url = _serve(Silent)
    try:
        result = load.run("m", HttpRequest(url, b"x"), requests=20, concurrency=1, warmup=1,
                          rate=20.0, max_windows=3, processes=1)
    finally:
        gone.set()
        _stop(httpd)
    assert result.dropped == 60 and result.requests == 60 and result.sent_rps is None
    assert result.errors == {} and not result.stable


def test_a_failed_answer_is_counted_by_the_kind_its_header_names():
    """SageMaker names a refusal in ``x-amzn-ErrorType``: a throttle is ThrottlingException,
    not one more HTTP 400; without the header's name the status is the kind."""
    seen = itertools.count(1)

    class Throttling(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            refused = next(seen) % 3 == 0
            body = b'{"message": "Rate exceeded"}' if refused else b"{}"
            self.send_response(400 if refused else 200)
            if refused:
                self.send_header("x-amzn-ErrorType",
                                 "ThrottlingException:http://internal.amazon.com/coral/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd, url = _serve(Throttling)
    try:
        named = load.run("m", HttpRequest(url, b"x", error_header="x-amzn-ErrorType"),
                         requests=90, concurrency=1, warmup=0, max_windows=3)
        plain = load.run("m", HttpRequest(url, b"x"), requests=90, concurrency=1, warmup=0,
                         max_windows=3)
    finally:
        _stop(httpd)
    assert named.errors == {"ThrottlingException": 30}
    assert plain.errors == {"http-400": 30}
