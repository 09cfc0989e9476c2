"""Finding and managing the embedded tritonserver."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import stat

import pytest

from deployer import runtime
from deployer.errors import UsageError

from conftest import one_line_error


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


def _copy_of(real: runtime.Server, root) -> None:
    """A complete runtime in ``root`` that is the real one (its bin and backends linked)."""
    root.mkdir(parents=True)
    (root / "bin").symlink_to(real.root / "bin")
    (root / "backends").symlink_to(real.backend_dir)
    (root / runtime.MARKER).write_text((real.root / runtime.MARKER).read_text())


def test_a_deployer_whose_python_cannot_carry_the_runtime(cli, tmp_path, monkeypatch,
                                                          tritonserver):
    """On a Python without numpy<2 wheels (3.13), an existing complete runtime of another
    Python is used; with none and no other Python on the machine: one line, exit 5."""
    if tritonserver.source != "managed":
        pytest.skip(f"the tritonserver in use is {tritonserver.source}, not the managed runtime")
    own = runtime.describe()
    newer = dataclasses.replace(own, version=(3, 13, 0))
    assert newer.problem() == "numpy<2 has no wheel for it"
    real_describe = runtime.describe
    monkeypatch.setattr(runtime, "describe", lambda python=None: newer if python is None
                        else real_describe(python))
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    _copy_of(tritonserver, tmp_path / "cache" / "runtime-py3.10")
    found = runtime.find_server(create=False)
    assert found.source == "managed" and found.root == tmp_path / "cache" / "runtime-py3.10"
    installed = cli("server", "install", "--json")
    assert installed.code == 0 and installed.err == "", installed   # nothing built
    assert installed.json()["root"] == str(found.root)

    (tmp_path / "cache" / "runtime-py3.10" / runtime.MARKER).unlink()
    monkeypatch.setattr(runtime, "_candidates", lambda: iter(()))
    nothing = cli("server", "install")
    assert nothing.code == 5, nothing
    line = one_line_error(nothing)
    assert "no Python on this machine can carry the embedded Triton runtime" in line
    assert "3.13 at" in line and "numpy<2 has no wheel for it" in line
    assert "deployer server install --python PATH" in line
    assert not (tmp_path / "cache" / "runtime-py3.13").exists()


def test_python_option_refuses_a_python_that_cannot_carry_it(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("python3.13", "python3.14"):
        found = next(iter(glob.glob(os.path.expanduser(
            f"~/.pyenv/versions/{name[6:]}.*/bin/python3"))), None) or shutil.which(name)
        if found:
            break
    else:
        pytest.skip("no Python 3.13+ on this machine")
    result = cli("server", "install", "--python", found)
    assert result.code == 2, result
    line = one_line_error(result)
    assert "cannot carry the embedded runtime: numpy<2 has no wheel for it" in line
    assert not list((tmp_path / "cache").glob("runtime-py*"))
    missing = cli("server", "install", "--python", str(tmp_path / "no-python"))
    assert missing.code == 2 and "is not a Python interpreter that runs" in one_line_error(missing)


def test_libpython_is_on_the_servers_library_path(tritonserver):
    """The runtime records the libpython of the Python it was made with; the server's
    LD_LIBRARY_PATH holds its folder and ``server info`` shows that the stub loads."""
    if tritonserver.source != "managed":
        pytest.skip(f"the tritonserver in use is {tritonserver.source}, not the managed runtime")
    marker = json.loads((tritonserver.root / runtime.MARKER).read_text())
    assert marker["libpython"] and os.path.isfile(marker["libpython"])
    minor = ".".join(marker["python"].split(".")[:2])
    assert marker["interpreter"] and tritonserver.root.name == f"runtime-py{minor}"
    folder = os.path.dirname(marker["libpython"])
    assert folder in tritonserver.process_env()["LD_LIBRARY_PATH"].split(os.pathsep)
    info = runtime.info()["managed"]
    assert info["libpython"] == marker["libpython"] and info["stub"]["loads"] is True
