"""The azure-twin's gateway passes a decoupled model's ``generate_stream`` (Server-Sent Events)
on as it arrives: the real tritonserver serving tests/repos/stream behind the real gateway.

Whether an event passes before the rest exists is shown by order, not by the clock: a relay
between the gateway and Triton holds Triton's answer back after its first event until the
client has read that event through the gateway. A gateway that waits for the whole answer
never shows the client that event, and the relay's log says so."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest

from deployer_plugins.azure.twin import update_routes

pytestmark = pytest.mark.usefixtures("tritonserver")
STREAM = Path(__file__).parent / "repos" / "stream"
ROUTE = "/v2/models/stream/generate_stream"
HOLD = 60  # how long the relay holds the rest back when nobody reads the first event


class Relay:
    """TCP between the gateway and Triton. The first answer's bytes after its first SSE event
    are held until ``go`` is set (``cut``: the connection is closed there instead). What its
    threads raise is kept in ``failures`` for the test."""

    def __init__(self, upstream: str, cut: bool = False):
        self.upstream = urllib.parse.urlparse(upstream).netloc.rsplit(":", 1)
        self.cut, self.go = cut, threading.Event()
        self.log: list[str] = []
        self.failures: list[BaseException] = []
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread(self._accept)

    def _thread(self, body, *args) -> None:
        def run():
            try:
                body(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.failures.append(exc)
        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self.go.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._thread(self._pair, client)

    def _pair(self, client: socket.socket) -> None:
        host, port = self.upstream
        upstream = socket.create_connection((host, int(port)))
        self._thread(self._pump, client, upstream)
        held = b""
        try:
            while data := upstream.recv(65536):
                if self.log:  # the first event has passed: everything else flows
                    client.sendall(data)
                    continue
                held += data
                start = held.find(b"data:")
                end = held.find(b"\n\n", start) if start >= 0 else -1
                if end < 0:
                    continue
                # logged before it is sent: the client cannot read it before the log says so
                self.log.append("relay passed the first event")
                client.sendall(held[:end + 2])
                if self.cut:
                    return
                if not self.go.wait(HOLD):
                    self.log.append(f"relay gave up after {HOLD} s waiting for the client")
                self.log.append("relay passed the rest")
                client.sendall(held[end + 2:])
        except OSError:
            pass
        finally:
            for sock in (client, upstream):  # shutdown: the pump's recv holds the socket
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # the gateway hung up: so does Triton's side
        except OSError:
            pass


def read_events(answer: http.client.HTTPResponse, each=lambda event: None) -> list[dict]:
    """The SSE events of an answer, read as they come; ``each`` is called on every event."""
    events, buffer = [], b""
    while piece := answer.read1(65536):
        buffer += piece
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            assert block.startswith(b"data: "), block
            events.append(json.loads(block[len(b"data: "):]))
            each(events[-1])
    assert buffer == b""
    return events


def test_generate_stream_passes_the_gateway_as_it_comes(cli):
    deployed = cli("deploy", STREAM, "-t", "azure-twin", "--name", "gws", "--json")
    assert deployed.code == 0, deployed
    relays = []
    try:
        record = deployed.json()
        gateway = urllib.parse.urlparse(record["endpoint"]["url"]).netloc
        key = Path(record["endpoint"]["key_file"]).read_text().strip()
        data = {r["kind"]: r["data"] for r in record["resources"]}
        routes, triton = Path(data["endpoint"]["routes"]), data["deployment"]["url"]

        def connect() -> http.client.HTTPConnection:
            return http.client.HTTPConnection(gateway, timeout=2 * HOLD)

        def ask(conn, path, body=None, key=key, deployment=None):
            headers = {"Authorization": f"Bearer {key}"}
            if deployment:
                headers["azureml-model-deployment"] = deployment
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request("GET" if body is None else "POST", path,
                         body=None if body is None else json.dumps(body), headers=headers)
            return conn.getresponse()

        # straight through: chunked to the client, OUT 0..4 in order
        conn = connect()
        answer = ask(conn, ROUTE, {"N": 5})
        assert answer.status == 200
        assert answer.getheader("Transfer-Encoding") == "chunked"
        assert answer.getheader("Content-Length") is None
        assert answer.getheader("Content-Type").startswith("text/event-stream")
        assert answer.getheader("azureml-model-deployment") == "blue"
        events = read_events(answer)
        assert [e["OUT"] for e in events] == [0, 1, 2, 3, 4]
        assert {e["model_name"] for e in events} == {"stream"}
        # the same client connection serves a non-streamed route next, as before
        answer = ask(conn, "/v2/models/stream")
        body = answer.read()
        assert answer.status == 200 and answer.getheader("Content-Length") == str(len(body))
        assert answer.getheader("Transfer-Encoding") is None
        assert json.loads(body)["name"] == "stream"
        conn.close()

        # a wrong key: 401 on the stream route, no event
        conn = connect()
        answer = ask(conn, ROUTE, {"N": 5}, key="nope")
        assert answer.status == 401 and b"data:" not in answer.read()
        conn.close()

        # held back after its first event: the client reads that event before the rest exists
        held, cut = Relay(triton), Relay(triton, cut=True)
        relays += [held, cut]
        update_routes(routes, "held", held.url)
        update_routes(routes, "cut", cut.url)
        conn = connect()
        answer = ask(conn, ROUTE, {"N": 5}, deployment="held")

        def first(event):
            if event["OUT"] == 0:
                held.log.append("client read the first event")
                held.go.set()

        assert [e["OUT"] for e in read_events(answer, first)] == [0, 1, 2, 3, 4]
        assert held.log == ["relay passed the first event", "client read the first event",
                            "relay passed the rest"], "the gateway held the stream back"
        # a stream read to its end leaves the upstream connection to serve the next request
        answer = ask(conn, "/v2/models/stream", deployment="held")
        assert answer.status == 200 and json.loads(answer.read())["name"] == "stream"
        assert held.accepted == 1
        conn.close()

        # cut short upstream after its first event: cut short for the client too
        conn = connect()
        answer = ask(conn, ROUTE, {"N": 5}, deployment="cut")
        seen = []
        with pytest.raises(http.client.IncompleteRead):
            read_events(answer, seen.append)
        assert [e["OUT"] for e in seen] == [0]
        conn.close()
        assert held.failures == [] and cut.failures == []
        # and the gateway serves on
        conn = connect()
        assert [e["OUT"] for e in read_events(ask(conn, ROUTE, {"N": 2}))] == [0, 1]
        conn.close()
    finally:
        for relay in relays:
            relay.close()
        torn = cli("teardown", "gws")
        assert torn.code == 0, torn
