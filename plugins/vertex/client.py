"""The Vertex test-step client: every call is a POST to the endpoint's ``:rawPredict`` URL,
routed inside the container by Triton's Vertex frontend with the ``X-Vertex-Ai-Triton-Redirect``
header (``v2/health/ready``, ``v2/models/NAME[/versions/V]``, ``.../infer``). Inputs travel
binary, with the frontend's Content-Type
``application/vnd.vertex-ai-triton.binary+json;json-header-size=N``; outputs come back as JSON.
The bearer token (google.auth's, or the twin's) is refreshed before it expires and once after a
401. Imported only when a client is built.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from typing import Any, Callable, Mapping

from deployer.triton import BearerAuth, EndpointClient, EndpointError, HttpRequest, post_sender
from deployer.errors import Unavailable

#: Triton's Vertex frontend (server src/vertex_ai_server.cc): the header that routes a
#: predict-route request to another Triton route, and the Content-Type of a binary body
REDIRECT_HEADER = "X-Vertex-Ai-Triton-Redirect"
BINARY_TYPE = "application/vnd.vertex-ai-triton.binary+json;json-header-size="

#: a token is fetched again this close to its expiry (seconds; a quarter of its lifetime when
#: that is shorter). google.auth's tokens live an hour.
REFRESH_MARGIN = 300.0
#: seconds since the epoch, the clock token expiries are read on (tests hand in their own)
CLOCK: Callable[[], float] = time.time
#: seconds between two reads of the token during a load (it is renewed REFRESH_MARGIN before
#: its expiry)
LOAD_REFRESH = 30.0


def redirect(model: str, version: str | None = None, action: str | None = None) -> str:
    """The redirect header's value for a model route (no leading slash, as the frontend
    prepends one)."""
    return f"v2/models/{model}" + (f"/versions/{version}" if version else "") + (
        f"/{action}" if action else "")


def encode(inputs: Mapping[str, Any], sequence: Mapping[str, Any] | None = None
           ) -> tuple[bytes, str]:
    """A KServe v2 inference body with binary inputs, every output asked for as JSON (no
    output named, ``binary_data_output`` false), and its Vertex Content-Type."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    built = []
    for name, array in inputs.items():
        item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=True)
        built.append(item)
    sequence = sequence or {}
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        built, sequence_id=sequence.get("sequence_id", 0),
        sequence_start=bool(sequence.get("sequence_start")),
        sequence_end=bool(sequence.get("sequence_end")))
    size = len(body) if json_size is None else json_size
    header = json.loads(body[:size])
    header.setdefault("parameters", {})["binary_data_output"] = False  # outputs as JSON
    encoded = json.dumps(header, separators=(",", ":")).encode()
    body = encoded + bytes(body[size:])
    kind = "application/json" if json_size is None else f"{BINARY_TYPE}{len(encoded)}"
    return body, kind


def _said(payload: bytes) -> str:
    """The message of an error body: Triton's ``{"error": "..."}``, Google's ``{"error":
    {"message": ...}}``, or the text itself (empty: the frontend's bare 400 and 405)."""
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        return payload[:300].decode("utf-8", "replace")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or "")


#: what a bare status from the frontend means
_BARE = {400: "the container's Vertex frontend knows no such redirect route",
         405: "the container's Vertex frontend takes POST only"}


class VertexClient(EndpointClient):
    """KServe v2 through ``:rawPredict`` and the redirect header."""

    routes_versions = True
    passes_sequences = True
    streams = False
    serves_metadata = True

    def __init__(self, url: str, fetch: Callable[[], Any], endpoint: str = "",
                 clock: Callable[[], float] | None = None, timeout: float = 60.0):
        self.auth = BearerAuth(fetch, clock or CLOCK, REFRESH_MARGIN)
        parsed = urllib.parse.urlsplit(url)
        self.url, self._ssl, self._netloc = url, parsed.scheme == "https", parsed.netloc
        self._path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        self._timeout = timeout
        self._local = threading.local()
        self._refused = (f"endpoint {endpoint or url} refused the credentials (HTTP 401): the "
                         "token is wrong or expired, or the account may not predict")

    # -- one request -----------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._ssl else http.client.HTTPConnection
            conn = self._local.conn = kind(self._netloc, timeout=self._timeout)
        return conn

    def _post(self, route: str, body: bytes = b"", kind: str = "application/json",
              timeout: float | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
        """(status, body, the answer: its headers) of one POST with the redirect ``route``; a
        kept-alive connection closed meanwhile is opened again once. OSError when
        unreachable."""
        headers = {"Authorization": self.auth.header(), REDIRECT_HEADER: route,
                   "Content-Type": kind, "Content-Length": str(len(body))}
        for attempt in (1, 2):
            conn = self._conn()
            conn.timeout = timeout or self._timeout
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                answer = conn.getresponse()
                return answer.status, answer.read(), answer
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _checked(self, what: str, route: str, body: bytes = b"",
                 kind: str = "application/json") -> tuple[bytes, int | None]:
        """The body of a 200 answer and its Inference-Header-Content-Length (binary outputs);
        EndpointError otherwise (a 401 after one new token)."""
        def send() -> tuple[int, bytes, Any]:
            try:
                return self._post(route, body, kind)
            except (OSError, http.client.HTTPException) as exc:
                raise EndpointError(f"{what}: {exc}", kind="connection") from None

        seen = self.auth.generation
        status, payload, answer = send()
        if status == 401 and self.auth.renew(seen):
            status, payload, answer = send()
        if status == 401:
            raise EndpointError(f"{what}: {self._refused}", kind="http-401")
        if status != 200:
            said = _said(payload) or _BARE.get(status, "")
            raise EndpointError(f"{what}: HTTP {status}" + (f": {said}" if said else ""),
                                kind=f"http-{status}")
        size = answer.getheader("Inference-Header-Content-Length")
        return payload, int(size) if size and size.isdigit() else None

    # -- the interface ---------------------------------------------------------------------
    def ready(self) -> bool:
        seen = self.auth.generation
        try:
            status = self._post("v2/health/ready", timeout=min(self._timeout, 10))[0]
            if status == 401 and self.auth.renew(seen):
                status = self._post("v2/health/ready", timeout=min(self._timeout, 10))[0]
        except (OSError, http.client.HTTPException):
            return False
        if status in (401, 403):
            raise EndpointError(self._refused if status == 401 else
                                f"the endpoint refused the credentials (HTTP {status})",
                                kind=f"http-{status}")
        return status == 200

    def metadata(self, model: str, *, version: str | None = None) -> dict[str, Any]:
        what = f"metadata of {model}" + (f" version {version}" if version else "")
        payload = self._checked(what, redirect(model, version))[0]
        try:
            return json.loads(payload)
        except ValueError:
            raise EndpointError(f"{what}: unreadable answer", kind="bad-answer") from None

    def infer(self, model: str, inputs: Mapping[str, Any], *, version: str | None = None,
              sequence: Mapping[str, Any] | None = None) -> dict[str, Any]:
        import tritonclient.http as httpclient

        what = f"inference on {model}" + (f" version {version}" if version else "")
        body, kind = encode(inputs, sequence)
        payload, size = self._checked(what, redirect(model, version, "infer"), body, kind)
        try:
            result = httpclient.InferenceServerClient.parse_response_body(
                payload, header_length=size)
        except Exception as exc:  # noqa: BLE001 - a malformed answer is the endpoint's failure
            raise EndpointError(f"{what}: unreadable answer: {exc}", kind="bad-answer") \
                from None
        return {out["name"]: result.as_numpy(out["name"])
                for out in result.get_response().get("outputs", [])}

    def sender(self, model: str, inputs: Mapping[str, Any], *,
               version: str | None = None) -> Callable[[], None]:
        """Encode the request once; each thread keeps its own connection
        (:func:`deployer.triton.post_sender`); a 401 fetches a new token and sends once
        more."""
        body, kind = encode(inputs)
        fixed = {REDIRECT_HEADER: redirect(model, version, "infer"), "Content-Type": kind,
                 "Content-Length": str(len(body))}
        headers = lambda: {"Authorization": self.auth.header(), **fixed}  # noqa: E731
        send = post_sender(self._netloc, self._path, headers, body, self._timeout, self._ssl)

        return lambda: self.auth.again_on_401(send)

    def load_request(self, model: str, inputs: Mapping[str, Any], *,
                     version: str | None = None) -> HttpRequest:
        """:meth:`sender`'s request as plain HTTP; the token read again every
        :data:`LOAD_REFRESH` s; after a 401, the next read fetches a new one."""
        body, kind = encode(inputs)
        scheme = "https" if self._ssl else "http"
        handed, refused = [self.auth.generation], []

        def fresh() -> dict[str, str]:
            if refused:
                refused.clear()
                self.auth.renew(handed[0])  # once, however many requests met the 401
            header = self.auth.header()
            handed[0] = self.auth.generation
            return {"Authorization": header}

        return HttpRequest(f"{scheme}://{self._netloc}{self._path}", body,
                           {REDIRECT_HEADER: redirect(model, version, "infer"),
                            "Content-Type": kind},
                           fresh=fresh, refresh=LOAD_REFRESH,
                           refused=lambda: refused.append(True))

    def probe(self) -> None:
        """Raise Unavailable at once when the endpoint refuses the token, rather than
        waiting for a ready that never comes."""
        try:
            self.ready()
        except EndpointError as exc:
            raise Unavailable(str(exc), hint="for a cloud endpoint: gcloud auth "
                              "application-default login (the account needs "
                              "roles/aiplatform.user); then run the test again") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def connect(endpoint: dict, fetch: Callable[[], Any]) -> VertexClient:
    """The probed client of a recorded endpoint (``url``: its rawPredict URL; ``endpoint``:
    its resource name), its bearer token from ``fetch`` (a Credential)."""
    client = VertexClient(endpoint["url"], fetch, endpoint.get("endpoint", ""))
    client.probe()
    return client
