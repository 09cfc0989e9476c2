"""Cloud Storage for tests: gcp-storage-emulator in-process on a free port.

``gcs`` (a fixture) starts the emulator with a bucket, points google-cloud-storage at it
(``STORAGE_EMULATOR_HOST``, set with monkeypatch) and stops it at the end of the test.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest

BUCKET = "deployer-test"


@dataclasses.dataclass
class Gcs:
    """A running emulator: ``url`` (what STORAGE_EMULATOR_HOST holds) and its ``bucket``."""

    url: str
    bucket: str
    project: str = "emulator"

    def client(self):
        """A google.cloud.storage.Client on the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=AnonymousCredentials())

    def names(self, prefix: str = "") -> dict[str, int]:
        """Objects of the bucket under ``prefix`` (name -> size)."""
        return {b.name: int(b.size or 0)
                for b in self.client().list_blobs(self.bucket, prefix=prefix)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gcs(monkeypatch):
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield Gcs(url, BUCKET)
    finally:
        server.stop()
