"""How the test step talks to a deployment, whatever the target.

``EndpointClient`` is the interface; ``KServeClient`` speaks KServe v2 over HTTP with
``tritonclient.http`` (local, docker, and any Triton behind TLS and headers).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .loadgen import HttpRequest

if TYPE_CHECKING:
    import numpy as np


class EndpointError(Exception):
    """A request to the deployment failed; ``kind`` groups errors in load results."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass
class StreamAnswer:
    """What a decoupled model sent back for one request."""

    #: each response's outputs, in arrival order (an empty final response is not one)
    responses: list[dict[str, Any]]
    #: seconds from sending the request to each response
    times: list[float]
    #: whether the end was marked: gRPC's final flag, or the end of an HTTP event stream
    final: bool
    #: whether the outputs carry their datatype and shape (gRPC); False for JSON events
    #: (HTTP ``generate_stream``: numbers, text or flat lists)
    typed: bool = True

    def outputs(self) -> dict[str, np.ndarray]:
        """Every output concatenated over the responses along the first axis (a scalar
        counts as one element)."""
        import numpy as np

        names = list(dict.fromkeys(n for response in self.responses for n in response))
        return {n: np.concatenate([np.atleast_1d(np.asarray(r[n])) for r in self.responses
                                   if n in r]) for n in names}


@dataclasses.dataclass(frozen=True)
class Credential:
    """What an endpoint wants after ``Bearer``: a key (``expires_on`` None, never refreshed)
    or a token with its expiry (seconds since the epoch). Its repr hides the secret."""

    secret: str = dataclasses.field(repr=False)
    expires_on: float | None = None

    @property
    def is_token(self) -> bool:
        return self.expires_on is not None


class BearerAuth:
    """The ``Authorization`` header from ``fetch`` (a target's credential: anything with
    ``.secret``, ``.expires_on`` and ``.is_token``, as :class:`Credential`). A token is
    fetched again before a request within ``margin`` seconds of its expiry (a quarter of its
    lifetime when that is shorter), and on demand after a 401 (:meth:`renew`); a key never
    is. ``clock`` reads seconds since the epoch (tests hand in their own). Thread-safe (the
    load sender's threads share it); held in memory only.

    The first fetch happens here: its failure is the deployer error ``fetch`` raised. A later
    one, mid-test and maybe in a load thread, becomes an EndpointError of kind ``token``."""

    def __init__(self, fetch: Callable[[], Any], clock: Callable[[], float] | None = None,
                 margin: float = 300.0):
        import time

        self._fetch, self._lock = fetch, threading.Lock()
        self._clock = clock or time.time
        self._margin = margin
        self.fetches = self.generation = 0
        self._use(fetch())

    def _renew(self) -> None:
        from .errors import DeployerError

        try:
            credential = self._fetch()
        except DeployerError as exc:
            raise EndpointError(f"fetching a new token: {exc}", kind="token") from None
        self._use(credential)

    def _use(self, credential) -> None:
        self._header = f"Bearer {credential.secret}"
        self._expires = credential.expires_on
        if credential.is_token:
            lifetime = max(0.0, credential.expires_on - self._clock())
            self._refresh_at = credential.expires_on - min(self._margin, lifetime / 4)
        self.fetches += 1
        self.generation += 1

    def header(self) -> str:
        """``Bearer <secret>``, fetched again first when a token is near its expiry."""
        if self._expires is not None and self._clock() >= self._refresh_at:
            self.renew(self.generation)
        return self._header

    def renew(self, seen: int) -> bool:
        """Fetch a new token unless one came since generation ``seen``; False for a key."""
        if self._expires is None:
            return False
        with self._lock:
            if self.generation == seen:
                self._renew()
        return True

    def again_on_401(self, send: Callable[[], Any]) -> Any:
        """``send()``; when it fails with an HTTP 401 and the credential is a token, fetch a
        new one (unless another thread just did) and send once more."""
        seen = self.generation
        try:
            return send()
        except EndpointError as exc:
            if exc.kind != "http-401" or not self.renew(seen):
                raise
        return send()


class EndpointClient:
    """One interface for the test step across targets.

    ``metadata``, ``infer`` and ``sender`` take two keywords, passed only where a client
    says it can carry them: ``version`` (a model version in the route) where
    ``routes_versions`` is true, and ``sequence`` (``{"sequence_id": int, "sequence_start":
    bool, "sequence_end": bool}``, the KServe v2 request parameters of a stateful model)
    where ``passes_sequences`` is true. A client written for neither keeps the two-argument
    signatures.

    A client whose endpoint has no metadata route sets ``serves_metadata`` false and says why
    in ``no_metadata``: the test step reports the metadata check as skipped with that reason
    (the outputs check, on every target, still compares what comes back with the config)."""

    #: requests can name a version: ``/v2/models/MODEL/versions/V/...``
    routes_versions = False
    #: requests can carry a sequence's correlation id and start/end flags
    passes_sequences = False
    #: decoupled models can be called (:meth:`stream`)
    streams = False
    #: :meth:`metadata` asks the server (false: the endpoint has no metadata route)
    serves_metadata = True
    #: why there is no metadata, for the report (where ``serves_metadata`` is false)
    no_metadata = ""

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

    def load_request(self, model: str, inputs: Mapping[str, np.ndarray],
                     **route: Any) -> HttpRequest | None:
        """The request of :meth:`sender` described as plain HTTP, for the load generator's
        engine (:mod:`deployer.loadgen`: many in flight from several processes, or a fixed
        rate); ``route`` as for :meth:`sender`. None (the default): load calls :meth:`sender`
        from threads of one process instead."""
        return None

    def stream(self, model: str, inputs: Mapping[str, np.ndarray], *,
               version: str | None = None) -> StreamAnswer:
        """Call a decoupled model; wait for the end of its responses. Raises EndpointError
        (an error response, or no end within the client's timeout)."""
        raise NotImplementedError

    def stream_sender(self, model: str, inputs: Mapping[str, np.ndarray],
                      **route: Any) -> Callable[[], list[float]]:
        """For load on a decoupled model: each call is one streamed request; returns the
        seconds to each of its responses."""
        return lambda: self.stream(model, inputs, **route).times

    def sequence_sender(self, model: str, steps: list[Mapping[str, np.ndarray]],
                        **route: Any) -> Callable[[], list[float]]:
        """For load on a stateful model: each call runs one whole sequence (every step, in
        order, under a correlation id no other call uses), so none is left open between
        calls. Returns each step's seconds."""
        import itertools
        import random
        import time

        ids = itertools.count(random.randrange(1, 2 ** 40))

        def send() -> list[float]:
            correlation, took = next(ids), []
            for index, inputs in enumerate(steps):
                began = time.perf_counter()
                self.infer(model, inputs, sequence={
                    "sequence_id": correlation, "sequence_start": index == 0,
                    "sequence_end": index == len(steps) - 1}, **route)
                took.append(time.perf_counter() - began)
            return took

        return send

    def close(self) -> None:
        pass


def _json_value(array: np.ndarray) -> Any:
    """An input as Triton's generate routes take it: a scalar, or a flat list."""
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in array.reshape(-1).tolist()]
    return flat[0] if len(flat) == 1 else flat


def _named(model: str, version: str | None) -> str:
    return f"{model} version {version}" if version else model


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


class KServeClient(EndpointClient):
    """KServe v2 over HTTP(S). ``headers`` go on every request (auth, routing); a callable
    returning them is called before each request instead (credentials that expire).

    Decoupled models stream over gRPC (``stream_infer``) when ``grpc`` names Triton's gRPC
    address (``host:port``), else over HTTP with Triton's ``generate_stream`` route (Server-Sent
    Events: inputs travel as JSON scalars or 1-D lists, outputs come back flattened)."""

    routes_versions = True
    passes_sequences = True
    streams = True

    def __init__(self, url: str,
                 headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                 timeout: float = 60.0, grpc: str | None = None):
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
        self._grpc = grpc
        self._local = threading.local()
        self._grpc_clients: list = []

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

    def metadata(self, model: str, *, version: str | None = None) -> dict[str, Any]:
        return self._call(f"metadata of {_named(model, version)}",
                          lambda: self._client.get_model_metadata(
                              model, model_version=version or "", headers=self.headers()))

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> list:
        built = []
        for name, array in inputs.items():
            item = self._httpclient.InferInput(name, list(array.shape), _datatype(array))
            item.set_data_from_numpy(array, binary_data=True)
            built.append(item)
        return built

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: str | None = None,
              sequence: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        sequence = sequence or {}
        result = self._call(f"inference on {_named(model, version)}", lambda: self._client.infer(
            model, self._inputs(inputs), model_version=version or "", headers=self.headers(),
            sequence_id=sequence.get("sequence_id", 0),
            sequence_start=bool(sequence.get("sequence_start")),
            sequence_end=bool(sequence.get("sequence_end"))))
        response = result.get_response()
        return {out["name"]: result.as_numpy(out["name"]) for out in response.get("outputs", [])}

    def sender(self, model: str, inputs: Mapping[str, np.ndarray], *,
               version: str | None = None) -> Callable[[], None]:
        """Encode the request once; each thread keeps its own persistent connection."""
        body, json_size = self._httpclient.InferenceServerClient.generate_request_body(
            self._inputs(inputs))
        fixed = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        if json_size is not None:
            fixed["Inference-Header-Content-Length"] = str(json_size)
        source = self._header_source
        headers: Any = {**self._headers, **fixed} if source is None else \
            (lambda: {**source(), **fixed})  # static headers: the request stays prebuilt
        path = self._route(model, version, "infer")
        return post_sender(self._netloc, path, headers, body, self._timeout, self._ssl)

    def load_request(self, model: str, inputs: Mapping[str, np.ndarray], *,
                     version: str | None = None) -> HttpRequest:
        body, json_size = self._httpclient.InferenceServerClient.generate_request_body(
            self._inputs(inputs))
        fixed = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            fixed["Inference-Header-Content-Length"] = str(json_size)
        source = self._header_source
        scheme = "https" if self._ssl else "http"
        return HttpRequest(f"{scheme}://{self._netloc}{self._route(model, version, 'infer')}",
                           bytes(body), {**self._headers, **fixed},
                           fresh=None if source is None else source)

    def _route(self, model: str, version: str | None, action: str) -> str:
        return f"{self._prefix}/v2/models/{urllib.parse.quote(model)}" + (
            f"/versions/{urllib.parse.quote(version)}" if version else "") + f"/{action}"

    def stream(self, model: str, inputs: Mapping[str, np.ndarray], *,
               version: str | None = None) -> StreamAnswer:
        if self._grpc:
            return self._grpc_stream(model, inputs, version)
        return self._http_stream(model, inputs, version)

    def _grpc_stream(self, model, inputs, version) -> StreamAnswer:
        import queue
        import time

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = getattr(self._local, "grpc", None)
        if client is None:   # one per thread: a stream belongs to its client
            client = self._local.grpc = grpcclient.InferenceServerClient(self._grpc)
            self._grpc_clients.append(client)
        built = []
        for name, array in inputs.items():
            item = grpcclient.InferInput(name, list(array.shape), _datatype(array))
            item.set_data_from_numpy(array)
            built.append(item)
        arrived: queue.Queue = queue.Queue()
        answer = StreamAnswer([], [], False)
        what = f"stream from {_named(model, version)}"
        try:
            client.start_stream(callback=lambda result, error: arrived.put(
                (time.perf_counter(), result, error)))
            began = time.perf_counter()
            client.async_stream_infer(model, built, model_version=version or "",
                                      enable_empty_final_response=True)
            while not answer.final:
                try:
                    at, result, error = arrived.get(timeout=self._timeout)
                except queue.Empty:
                    raise EndpointError(f"{what}: no final response within "
                                        f"{self._timeout:.0f}s", kind="timeout") from None
                if error is not None:
                    said = error.message() if hasattr(error, "message") else error
                    raise EndpointError(f"{what}: {said}", kind="stream-error")
                response = result.get_response()
                answer.final = response.parameters["triton_final_response"].bool_param
                outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
                if outputs:
                    answer.responses.append(outputs)
                    answer.times.append(at - began)
        except InferenceServerException as exc:
            raise EndpointError(f"{what}: {exc.message() or exc}", kind="stream-error") \
                from None
        finally:
            client.stop_stream()
        return answer

    def _http_stream(self, model, inputs, version) -> StreamAnswer:
        import time

        import numpy as np

        what = f"stream from {_named(model, version)}"
        body = json.dumps({name: _json_value(array) for name, array in inputs.items()})
        kind = http.client.HTTPSConnection if self._ssl else http.client.HTTPConnection
        conn = kind(self._netloc, timeout=self._timeout)
        answer = StreamAnswer([], [], False, typed=False)
        try:
            began = time.perf_counter()
            conn.request("POST", self._route(model, version, "generate_stream"), body=body,
                         headers={**self.headers(), "Content-Type": "application/json",
                                  "Accept": "text/event-stream"})
            reply = conn.getresponse()
            if reply.status != 200:
                raise EndpointError(f"{what}: HTTP {reply.status}: "
                                    f"{reply.read()[:300].decode('utf-8', 'replace')}",
                                    kind=f"http-{reply.status}")
            while True:
                line = reply.readline()
                if not line:
                    break
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:   # an error mid-stream: the status stayed 200
                    raise EndpointError(f"{what}: {event['error']}", kind="stream-error")
                answer.times.append(time.perf_counter() - began)
                answer.responses.append({k: np.asarray(v) for k, v in event.items()
                                         if k not in ("model_name", "model_version", "id")})
            answer.final = True   # the event stream ended as Triton ends it
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise EndpointError(f"{what}: {exc}", kind="connection") from None
        finally:
            conn.close()
        return answer

    def sequence_sender(self, model: str, steps: list[Mapping[str, np.ndarray]], *,
                        version: str | None = None) -> Callable[[], list[float]]:
        """As :meth:`EndpointClient.sequence_sender`, each thread on its own keep-alive
        connection (the tritonclient connection pool is not for threads)."""
        import itertools
        import random
        import time

        generate = self._httpclient.InferenceServerClient.generate_request_body
        built = [self._inputs(inputs) for inputs in steps]
        path = self._route(model, version, "infer")
        post = _Poster(self._netloc, self._ssl, self._timeout)
        ids = itertools.count(random.randrange(1, 2 ** 40))

        def send() -> list[float]:
            correlation, took = next(ids), []
            for index, inputs in enumerate(built):
                body, json_size = generate(inputs, sequence_id=correlation,
                                           sequence_start=index == 0,
                                           sequence_end=index == len(built) - 1)
                headers = {**self.headers(), "Content-Type": "application/octet-stream"}
                if json_size is not None:
                    headers["Inference-Header-Content-Length"] = str(json_size)
                began = time.perf_counter()
                post(path, headers, body)
                took.append(time.perf_counter() - began)
            return took

        return send

    def close(self) -> None:
        self._client.close()
        for client in self._grpc_clients:
            client.close()


class _Poster:
    """POST on a keep-alive connection of the calling thread's own; EndpointError unless the
    answer is 200."""

    def __init__(self, netloc: str, ssl: bool, timeout: float):
        self.netloc, self.ssl, self.timeout = netloc, ssl, timeout
        self.local = threading.local()

    def __call__(self, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self.ssl else http.client.HTTPConnection
            conn = self.local.conn = kind(self.netloc, timeout=self.timeout)
        try:
            conn.request("POST", path, body=body, headers=dict(headers))
            answer = conn.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self.local.conn = None
            raise EndpointError(str(exc) or type(exc).__name__, kind="connection") from None
        if answer.status != 200:
            raise EndpointError(payload[:200].decode("utf-8", "replace"),
                                kind=f"http-{answer.status}")
        return payload


def post_sender(netloc: str, path: str, headers: Any, body: bytes, timeout: float,
                ssl: bool = False) -> Callable[[], None]:
    """For load: a function that POSTs ``body`` to ``path`` on ``netloc`` again and again, over
    one keep-alive connection per thread (plain HTTP: the request prebuilt as bytes).
    ``headers`` is a dict, or a callable returning one before each request (credentials that
    expire). Raises EndpointError: ``http-STATUS`` for an answer other than 200, ``connection``
    when unreachable."""
    if ssl:
        return _https_sender(netloc, path, headers, body, timeout)
    return _RawSender(netloc, path, headers, body, timeout)


def _https_sender(netloc: str, path: str, headers: Any, body: bytes,
                  timeout: float) -> Callable[[], None]:
    post = _Poster(netloc, True, timeout)

    def send() -> None:
        post(path, headers() if callable(headers) else headers, body)

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
