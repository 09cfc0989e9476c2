"""The rehearsal's stand-in for one Vertex AI endpoint: Vertex's prediction service, in front
of each deployed model's container (the embedded tritonserver with Triton's own Vertex AI
frontend, :func:`.serving.start_model_server`).

Run as ``python -m deployer_plugins.vertex.gateway --project P --region R --tokens F --routes F
--port-file F``. The token never appears on the command line.

The one route is ``/v1/projects/P/locations/R/endpoints/ID:rawPredict``. A request without
``Authorization: Bearer <token>`` naming the token file's token, before its expiry, gets 401
(Google's error body, UNAUTHENTICATED); then any other path, project, region or endpoint id
gets 404 (NOT_FOUND). The traffic split picks the deployed model by weight (400
FAILED_PRECONDITION when none holds traffic). The method, body, Content-Type and
``X-Vertex-Ai-Triton-Redirect`` header go on to the container's predict route
(``AIP_PREDICT_ROUTE``) unchanged: what Triton's Vertex frontend answers (405, 400, the
redirect, the ``application/vnd.vertex-ai-triton.binary+json`` bodies) is its own.
``GET /-/gateway`` answers 200 without auth: how the deployer waits for the gateway (no Vertex
route); ``GET /-/gateway/health/DEPLOYED_ID`` is the container's health route
(``AIP_HEALTH_ROUTE``, what Vertex's health checks call).

The token file holds one ``TOKEN EXPIRY`` a line (:func:`..azure.gateway.parse_keys`); it and
the routes file (:func:`.serving.update_routes`) are read again whenever they change.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..azure.gateway import _HOP, _Watched, bearer_ok, parse_keys, serve, upstream

HEALTH_PATH = "/-/gateway"
CONTAINER_HEALTH = HEALTH_PATH + "/health/"

_RAW_PREDICT = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+):rawPredict$")
#: what the container never receives from the client
_DROPPED = _HOP | {"authorization"}


def google_error(code: int, status: str, message: str) -> bytes:
    """A Google API error body."""
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


class Gateway(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024   # a load of hundreds connects at once (see the azure gateway)

    def __init__(self, address, project: str, region: str, tokens_file: Path,
                 routes_file: Path):
        super().__init__(address, Handler)
        self.project, self.region = project, region
        self.tokens = _Watched(tokens_file, parse_keys)
        self.routes = _Watched(routes_file, json.loads)
        self.local = threading.local()

    def upstream(self, base: str) -> http.client.HTTPConnection:
        return upstream(self.local, base)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Gateway

    def log_message(self, fmt, *args):  # one line per request on the gateway's log
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def _send(self, status: int, body: bytes = b"", kind: str = "application/json",
              extra: dict | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self, again: bool = False) -> bool:
        return bearer_ok(self.headers.get("Authorization", ""), self.server.tokens.get(again))

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        routes = self.server.routes.get() or {}
        if path == HEALTH_PATH and self.command == "GET":
            return self._send(200, b'{"message": "gateway up"}')
        if path.startswith(CONTAINER_HEALTH) and self.command == "GET":
            deployed = (routes.get("deployed") or {}).get(path[len(CONTAINER_HEALTH):])
            if deployed is None:
                return self._send(404, google_error(404, "NOT_FOUND", "no such deployed model"))
            return self._forward(deployed["url"], "GET", deployed["health"], b"", {})
        if not (self._authorized() or self._authorized(again=True)):
            return self._send(401, google_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                "Expected OAuth 2 access token, login cookie or other valid authentication "
                "credential."), extra={"WWW-Authenticate": 'Bearer realm="https://accounts.'
                                                           'google.com/"'})
        found = _RAW_PREDICT.match(path)
        endpoint = str(routes.get("endpoint"))
        if not found:
            return self._send(404, google_error(404, "NOT_FOUND", f"The requested URL {path} "
                                                "was not found on this server."))
        project, region, endpoint_id = found.groups()
        if (project, region, endpoint_id) != (self.server.project, self.server.region,
                                              endpoint):
            return self._send(404, google_error(
                404, "NOT_FOUND", f'Endpoint "projects/{project}/locations/{region}/'
                f'endpoints/{endpoint_id}" not found.'))
        deployed = self._pick(routes)
        if deployed is None:
            return self._send(400, google_error(
                400, "FAILED_PRECONDITION", f'Endpoint "projects/{project}/locations/{region}/'
                f'endpoints/{endpoint_id}" has no deployed model holding traffic.'))
        self._container(deployed, body)

    @staticmethod
    def _pick(routes: dict) -> dict | None:
        """The deployed model the traffic split sends this request to."""
        deployed = routes.get("deployed") or {}
        weights = {d: w for d, w in (routes.get("traffic") or {}).items()
                   if w > 0 and d in deployed}
        if not weights:
            return None
        return deployed[random.choices(list(weights), weights=list(weights.values()))[0]]

    def _container(self, deployed: dict, body: bytes) -> None:
        """The request as Vertex hands it to the container: method, body, Content-Type and the
        redirect header, on its predict route, where Triton's Vertex frontend handles it."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROPPED}
        self._forward(deployed["url"], self.command, deployed["predict"], body, headers)

    def _forward(self, upstream: str, method: str, target: str, body: bytes,
                 headers: dict) -> None:
        headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            conn = self.server.upstream(upstream)
            try:
                conn.request(method, target, body=body, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == 2:
                    return self._send(503, google_error(
                        503, "UNAVAILABLE", f"the deployed model's container did not "
                        f"answer: {exc}"))
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = _handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--routes", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, help="where to write the port once listening")
    args = parser.parse_args(argv)
    return serve(Gateway((args.host, args.port), args.project, args.region, args.tokens,
                         args.routes), args.host, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
