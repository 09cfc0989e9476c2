"""How the test step talks to a deployment, whatever the target.

``EndpointClient`` is the interface; ``KServeClient`` speaks KServe v2 over HTTP with
``tritonclient.http`` (local, docker, and any Triton behind TLS and headers).
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np


class EndpointError(Exception):
    """A request to the deployment failed; ``kind`` groups errors in load results."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class EndpointClient:
    """One interface for the test step across targets."""

    def ready(self) -> bool:
        """Whether the server answers ready. False while it cannot be reached; raises
        EndpointError when it refuses our credentials (waiting would not help)."""
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> bool:
        """Poll :meth:`ready` until it answers True (then True) or ``timeout`` seconds pass
        (then False). EndpointError from ``ready`` ends the wait at once."""
        import time

        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def metadata(self, model: str) -> dict[str, Any]:
        """KServe v2 model metadata: ``{"name", "versions", "platform", "inputs": [{"name",
        "datatype", "shape"}], "outputs": [...]}``. Raises EndpointError."""
        raise NotImplementedError

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; return every output as a numpy array. Raises EndpointError."""
        raise NotImplementedError

    def sender(self, model: str, inputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A function that sends the same request again, for load; thread-safe, raises
        EndpointError. The default calls ``infer``; clients override it to encode once."""
        return lambda: self.infer(model, inputs)

    def close(self) -> None:
        pass


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


class KServeClient(EndpointClient):
    """KServe v2 over HTTP(S). ``headers`` go on every request (auth, routing); a callable
    returning them is called before each request instead (credentials that expire)."""

    def __init__(self, url: str,
                 headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 timeout: float = 60.0):
        import tritonclient.http as httpclient

        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        self.url = parsed.geturl().rstrip("/")
        self._ssl = parsed.scheme == "https"
        self._netloc = parsed.netloc
        self._prefix = parsed.path.rstrip("/")
        self._header_source = headers if callable(headers) else None
        self._headers = {} if callable(headers) else dict(headers or {})
        self._timeout = timeout
        self._httpclient = httpclient
        self._client = httpclient.InferenceServerClient(
            url=self._netloc + self._prefix, ssl=self._ssl, connection_timeout=timeout,
            network_timeout=timeout)

    def headers(self) -> dict[str, str]:
        """The headers for the next request."""
        return dict(self._header_source()) if self._header_source else self._headers

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as exc:
            status = exc.status() or "error"
            raise EndpointError(f"{what}: {exc.message() or exc}", kind=f"http-{status}"
                                if str(status).isdigit() else str(status)) from None
        except (ConnectionError, OSError) as exc:
            raise EndpointError(f"{what}: {exc}", kind="connection") from None

    def ready(self) -> bool:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.url}/v2/health/ready", headers=self.headers())
        try:
            with urllib.request.urlopen(request, timeout=min(self._timeout, 10)) as answer:
                return answer.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise EndpointError(f"the endpoint refused the credentials (HTTP {exc.code})",
                                    kind=f"http-{exc.code}") from None
            return False
        except (OSError, ValueError):
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        return self._call(f"metadata of {model}",
                          lambda: self._client.get_model_metadata(model, headers=self.headers()))

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> list:
        built = []
        for name, array in inputs.items():
            item = self._httpclient.InferInput(name, list(array.shape), _datatype(array))
            item.set_data_from_numpy(array, binary_data=True)
            built.append(item)
        return built

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._call(f"inference on {model}", lambda: self._client.infer(
            model, self._inputs(inputs), headers=self.headers()))
        response = result.get_response()
        return {out["name"]: result.as_numpy(out["name"]) for out in response.get("outputs", [])}

    def sender(self, model: str, inputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Encode the request once; each thread keeps its own persistent connection."""
        body, json_size = self._httpclient.InferenceServerClient.generate_request_body(
            self._inputs(inputs))
        fixed = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        if json_size is not None:
            fixed["Inference-Header-Content-Length"] = str(json_size)
        source = self._header_source
        headers: Any = {**self._headers, **fixed} if source is None else \
            (lambda: {**source(), **fixed})  # static headers: the request stays prebuilt
        path = f"{self._prefix}/v2/models/{urllib.parse.quote(model)}/infer"
        if self._ssl:
            return _https_sender(self._netloc, path, headers, body, self._timeout)
        return _RawSender(self._netloc, path, headers, body, self._timeout)

    def close(self) -> None:
        self._client.close()


def _https_sender(netloc: str, path: str, headers: Any, body: bytes,
                  timeout: float) -> Callable[[], None]:
    local = threading.local()

    def send() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPSConnection(netloc, timeout=timeout)
        try:
            conn.request("POST", path, body=body,
                         headers=headers() if callable(headers) else headers)
            answer = conn.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            local.conn = None
            raise EndpointError(str(exc), kind="connection") from None
        if answer.status != 200:
            raise EndpointError(payload[:200].decode("utf-8", "replace"),
                                kind=f"http-{answer.status}")

    return send


class _RawSender:
    """Plain-HTTP keep-alive sender: the whole request is bytes built once, and the answer is
    read by Content-Length with no header parsing beyond that, so the generator is not the
    bottleneck (http.client's header parsing costs more than Triton's answer). ``headers`` as
    a callable: the request is encoded again for each send."""

    def __init__(self, netloc: str, path: str, headers: Any, body: bytes, timeout: float):
        host, _, port = netloc.rpartition(":")
        self.address = (host.strip("[]") or netloc, int(port) if port.isdigit() else 80)
        self.start, self.body = f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\n", body
        self.headers = headers if callable(headers) else None
        self.request = None if self.headers else self._encode(headers)
        self.timeout = timeout
        self.local = threading.local()

    def _encode(self, headers: Mapping[str, str]) -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return f"{self.start}{head}\r\n".encode() + self.body

    def _connect(self):
        import socket

        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local.sock, self.local.buffer = sock, b""
        return sock

    def __call__(self) -> None:
        sock = getattr(self.local, "sock", None)
        try:
            sock = sock or self._connect()
            sock.sendall(self.request or self._encode(self.headers()))
            status, payload = self._read(sock)
        except (OSError, ValueError) as exc:
            if sock is not None:
                sock.close()
            self.local.sock = None
            raise EndpointError(str(exc) or type(exc).__name__, kind="connection") from None
        if status != 200:
            raise EndpointError(payload[:200].decode("utf-8", "replace"), kind=f"http-{status}")

    def _read(self, sock) -> tuple[int, bytes]:
        data = self.local.buffer
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed by the server")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError("answer without Content-Length")
        length = int(lowered[at + 17:lowered.find(b"\r\n", at + 2)
                             if lowered.find(b"\r\n", at + 2) > 0 else None])
        while len(rest) < length:
            chunk = sock.recv(max(65536, length - len(rest)))
            if not chunk:
                raise ValueError("connection closed by the server")
            rest += chunk
        self.local.buffer = rest[length:]
        return status, rest[:length]
