"""Finding and managing the embedded tritonserver."""

from __future__ import annotations

import json
import os
import stat

import pytest

from deployer import runtime
from deployer.errors import UsageError


def test_named_server_must_exist(monkeypatch):
    with pytest.raises(UsageError, match="not found or not executable"):
        runtime.find_server("/no/such/tritonserver")
    monkeypatch.setenv(runtime.SERVER_ENV, "/no/such/either")
    with pytest.raises(UsageError, match="/no/such/either"):
        runtime.find_server()


def test_tritonserver_on_path_wins_over_managed(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    found = runtime.find_server(create=False)
    assert found.source == "path" and found.executable == fake


def test_interrupted_runtime_is_rebuilt_not_used(tmp_path, monkeypatch, tritonserver):
    """A runtime folder without its completion marker is never used: it is removed and built
    again (this installs nvidia-pytriton from the package index, as first use does)."""
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    half = runtime.runtime_dir()
    (half / "lib").mkdir(parents=True)
    (half / "lib" / "leftover").write_text("half-made")
    assert runtime.managed_server() is None
    messages = []
    server = runtime.install(progress=messages.append)
    assert any("incomplete embedded runtime" in m for m in messages)
    assert not (half / "lib" / "leftover").exists()
    assert server.executable.is_file() and os.access(server.executable, os.X_OK)
    assert (server.backend_dir / "python" / "triton_python_backend_stub").is_file()
    assert server.backends() == {"python", "ensemble"}
    marker = json.loads((half / runtime.MARKER).read_text())
    assert marker["complete"] is True and marker["pytriton"] == "0.7.0"
    # a second call finds it complete and does nothing
    again = []
    assert runtime.install(progress=again.append) == server and again == []
