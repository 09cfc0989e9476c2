"""A tiny image registry on 127.0.0.1 for pull tests: the read side of the registry HTTP API
v2 (``/v2/``, manifests, blobs), serving one image exported with ``docker save``.

The Docker engine pulls from a registry on 127.0.0.0/8 over plain HTTP (such registries are
insecure by default), so a real ``docker pull 127.0.0.1:PORT/NAME:TAG`` runs against it with
no internet. :func:`tiny_image` builds the image to serve (``FROM scratch``, a few layers of
random bytes: no base image to pull) and exports it; :class:`Registry` serves it as a schema 2
manifest whose layers are the exported layer tars, gzipped. Blobs go out in slices, so the
engine reports its download progress several times per layer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: bytes per write of a blob, and the pause between writes (the engine's progress shows)
SLICE = 256 << 10
PAUSE = 0.02


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(client, tag: str, sizes: tuple[int, ...]) -> tuple[bytes, list[bytes]]:
    """Build ``tag`` from scratch with one layer of ``size`` random bytes per entry of
    ``sizes``, export it (``docker save``), remove it from the engine again, and return its
    config and its layer tars."""
    with tempfile.TemporaryDirectory() as folder:
        lines = ["FROM scratch"]
        for number, size in enumerate(sizes):
            (Path(folder) / f"part{number}.bin").write_bytes(os.urandom(size))
            lines.append(f"COPY part{number}.bin /part{number}.bin")
        (Path(folder) / "Dockerfile").write_text("\n".join(lines) + "\n")
        image, _ = client.images.build(path=folder, tag=tag, rm=True, forcerm=True)
    try:
        exported = b"".join(image.save(named=True))
    finally:
        client.images.remove(image.id, force=True)
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())
        config = tar.extractfile(entry["Config"]).read()
        layers = [tar.extractfile(name).read() for name in entry["Layers"]]
    return config, layers


class Registry:
    """``Registry(name, tag, config, layers)`` serves that image at :attr:`image`
    (``127.0.0.1:PORT/NAME:TAG``); ``requests`` lists ``(method, path)`` of every request."""

    def __init__(self, name: str, tag: str, config: bytes, layers: list[bytes]):
        self.name, self.tag = name, tag
        self.blobs: dict[str, bytes] = {_digest(config): config}
        entries = []
        for layer in layers:
            packed = gzip.compress(layer, mtime=0)
            self.blobs[_digest(packed)] = packed
            entries.append({"mediaType": LAYER, "size": len(packed), "digest": _digest(packed)})
        #: what the engine downloads for the layers, by layer (compressed sizes)
        self.layer_sizes = [entry["size"] for entry in entries]
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "size": len(config), "digest": _digest(config)},
            "layers": entries}).encode()
        self.requests: list[tuple[str, str]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                registry._answer(self, body=True)

            def do_HEAD(self):
                registry._answer(self, body=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.image = f"127.0.0.1:{self.port}/{name}:{tag}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((handler.command, path))
        headers = {"Docker-Distribution-API-Version": "registry/2.0"}
        found = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
        if path in ("/v2/", "/v2"):
            status, kind, data = 200, "application/json", b"{}"
        elif found and found.group(1) == self.name and found.group(2) == "manifests" \
                and found.group(3) in (self.tag, _digest(self.manifest)):
            status, kind, data = 200, MANIFEST, self.manifest
            headers["Docker-Content-Digest"] = _digest(self.manifest)
        elif found and found.group(1) == self.name and found.group(3) in self.blobs:
            status, kind, data = 200, "application/octet-stream", self.blobs[found.group(3)]
            headers["Docker-Content-Digest"] = found.group(3)
        else:
            status, kind = 404, "application/json"
            data = json.dumps({"errors": [{"code": "NAME_UNKNOWN" if not found else
                                           "MANIFEST_UNKNOWN", "message": "unknown"}]}).encode()
        handler.send_response(status)
        for key, value in {**headers, "Content-Type": kind,
                           "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not body:
            return
        try:
            for start in range(0, len(data), SLICE):
                handler.wfile.write(data[start:start + SLICE])
                handler.wfile.flush()
                time.sleep(PAUSE)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
