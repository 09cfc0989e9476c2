"""An HTTP proxy in front of moto's server that answers chosen operations with AWS's own wire
errors, so real boto3 meets the errors a real account returns and moto never raises.

Everything else is forwarded to moto unchanged. Point ``AWS_ENDPOINT_URL_SAGEMAKER``, ``_S3``,
``_IAM``, ``_CLOUDWATCH_LOGS`` and ``_CLOUDWATCH`` at :attr:`FaultProxy.url`. Operations are
matched as AWS routes them: JSON services (SageMaker, CloudWatch Logs, CloudWatch: JSON 1.0,
which botocore prefers to its CBOR) by the ``X-Amz-Target`` header
(``SageMaker.CreateEndpoint``, ``GraniteServiceVersion20100801.GetMetricData``), query services (IAM) by the signing name and the form's
``Action`` (``iam.GetRole``), S3 (REST-XML) by method and path. The bodies are what those
protocols send: ``{"__type": CODE, "message": ...}`` with ``X-Amzn-ErrorType`` for JSON,
``<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`` for
query (botocore's QueryParser), and ``<Error><Code>...</Code><Message>...</Message>...</Error>``
for S3 (no body for HEAD).
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import re
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

import pytest

#: headers that belong to one hop, not to the message
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer",
       "upgrade", "content-length"}


@dataclasses.dataclass
class Fault:
    """Answer ``status``/``headers``/``body`` to requests ``match`` accepts, ``times`` times
    (None: every time). ``hits`` counts the answers given."""

    match: object
    status: int
    headers: dict[str, str]
    body: bytes
    times: int | None = None
    hits: int = 0


class FaultProxy:
    """``FaultProxy(upstream_url)``; ``seen[operation]`` counts every request by operation
    (``SageMaker.CreateEndpoint``, ``iam.GetRole``, or ``PUT /bucket/key`` for S3), failed or
    forwarded, and ``log`` lists them in order (a test may swap in a list of its own, to
    interleave them with its client's calls). ``errors`` lists what went wrong in the proxy
    itself (answered 502): a test that uses it checks it is empty."""

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.faults: list[Fault] = []
        self.hooks: list[tuple[str, object]] = []
        self.seen: collections.Counter[str] = collections.Counter()
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.errors: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def handle_one(self):
                try:
                    status, headers, answer = proxy.answer(self.command, self.path,
                                                           self.headers, self._body())
                except Exception as exc:  # noqa: BLE001 - shown by the test that uses it
                    proxy.errors.append(f"{self.command} {self.path}: {exc!r}")
                    status, headers, answer = 502, {}, repr(exc).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    # -- what a test asks for ------------------------------------------------------------------
    def json_error(self, target: str, code: str, message: str, *, status: int = 400,
                   times: int | None = None, version: str = "1.1",
                   headers: dict[str, str] | None = None) -> Fault:
        """Fail the JSON operation ``target`` (e.g. ``SageMaker.CreateModel``; CloudWatch
        speaks JSON 1.0: ``GraniteServiceVersion20100801.GetMetricData``, and, query
        compatible, adds ``x-amzn-query-error: CODE;Sender`` in ``headers``)."""
        body = json.dumps({"__type": code, "message": message}).encode()
        return self._add(Fault(lambda method, path, headers, _: headers.get("X-Amz-Target")
                               == target,
                               status, {"Content-Type": f"application/x-amz-json-{version}",
                                        "X-Amzn-ErrorType": code,
                                        "x-amzn-RequestId": str(uuid.uuid4()),
                                        **(headers or {})}, body, times))

    def before(self, operation: str, call) -> None:
        """Run ``call()`` before answering each request for ``operation`` (as :attr:`seen`
        names it), outside the proxy's lock: e.g. publish what an emulator holds before a
        read of it, so the read sees everything sent so far."""
        with self.lock:
            self.hooks.append((operation, call))

    def json_answer(self, target: str, answer: dict, *, times: int | None = None) -> Fault:
        """Answer the JSON 1.1 operation ``target`` with 200 and ``answer``: an operation
        moto lacks (Service Quotas' ``ServiceQuotasV20190624.ListServiceQuotas``)."""
        return self._add(Fault(lambda method, path, headers, _: headers.get("X-Amz-Target")
                               == target,
                               200, {"Content-Type": "application/x-amz-json-1.1",
                                     "x-amzn-RequestId": str(uuid.uuid4())},
                               json.dumps(answer).encode(), times))

    def s3_error(self, method: str, path: str, code: str, message: str, *, status: int,
                 times: int | None = None, headers: dict[str, str] | None = None,
                 **fields: str) -> Fault:
        """Fail S3 requests ``method`` on a path matching the regular expression ``path``
        (query string included) with S3's XML error; ``fields`` add elements (``Region``,
        ``Endpoint``, ``BucketName``...). HEAD answers carry the status and headers only."""
        extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items())
        request_id = uuid.uuid4().hex[:16].upper()
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{escape(message)}</Message>{extra}<RequestId>{request_id}"
                f"</RequestId><HostId>proxy</HostId></Error>").encode()
        pattern = re.compile(path)
        return self._add(Fault(
            lambda m, p, h, _: m == method and pattern.search(p) is not None, status,
            {"Content-Type": "application/xml", "x-amz-request-id": request_id,
             **(headers or {})}, b"" if method == "HEAD" else body, times))

    def query_error(self, operation: str, code: str, message: str, *, status: int = 400,
                    times: int | None = None) -> Fault:
        """Fail the query-protocol operation ``operation`` (e.g. ``iam.GetRole``: the signing
        name, then the Action) with AWS's XML ErrorResponse (Type Sender)."""
        request_id = str(uuid.uuid4())
        namespace = "https://iam.amazonaws.com/doc/2010-05-08/"
        body = (f'<ErrorResponse xmlns="{namespace}"><Error><Type>Sender</Type>'
                f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>").encode()
        return self._add(Fault(
            lambda m, p, h, b: self.operation(m, p, h, b) == operation, status,
            {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, body, times))

    def _add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.hooks.clear()
            self.seen.clear()
            self.log = []

    # -- the proxy -----------------------------------------------------------------------------
    @staticmethod
    def operation(method: str, path: str, headers, body: bytes = b"") -> str:
        if headers.get("X-Amz-Target"):
            return headers["X-Amz-Target"]
        if "x-www-form-urlencoded" in headers.get("Content-Type", ""):  # the query protocol
            action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action")
            scope = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/",
                              headers.get("Authorization", ""))
            if action and scope:
                return f"{scope.group(1)}.{action[0]}"
        return f"{method} {path.split('?')[0]}"

    def answer(self, method: str, path: str, headers, body: bytes):
        operation = self.operation(method, path, headers, body)
        with self.lock:
            hooks = [call for name, call in self.hooks if name == operation]
        for call in hooks:
            call()
        with self.lock:
            self.seen[operation] += 1
            self.log.append(operation)
            for fault in self.faults:
                if (fault.times is None or fault.hits < fault.times) and \
                        fault.match(method, path, headers, body):
                    fault.hits += 1
                    return fault.status, fault.headers, fault.body
        return self._forward(method, path, headers, body)

    def _forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP}
            sent["Content-Length"] = str(len(body))
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            return response.status, {k: v for k, v in response.getheaders()
                                     if k.lower() not in HOP}, data
        finally:
            connection.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the fault proxy did not stop"


@pytest.fixture(scope="module")
def proxy(moto_url):
    """A FaultProxy in front of moto for one test module (import it with ``moto_url``)."""
    proxy = FaultProxy(moto_url)
    yield proxy
    proxy.close()
