"""``deployer.triton``, the public module for Triton-running targets, and the rule that the
built-in targets need nothing else of the core."""

from __future__ import annotations

import ast
import inspect
import secrets
import sys
from pathlib import Path

import pytest

from deployer import triton
from deployer.errors import DeployFailed

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

#: what a target plugin may import from the core: the contract and the helper module
PUBLIC = {"deployer", "deployer.triton", "deployer.target", "deployer.errors", "deployer.state",
          "deployer.repository", "deployer.samples", "deployer.shim", "deployer.testing",
          "deployer.pyimports", "deployer.hardware",
          "deployer.progress"}


def _violations(path: Path) -> list[str]:
    """Imports of a non-public core module, or of a private name, and uses of a private name
    of an imported core module, in one source file."""
    tree = ast.parse(path.read_text(), str(path))
    found, aliases = [], set()
    where = f"{path.relative_to(PLUGINS.parent)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "deployer":
                    continue
                if alias.name not in PUBLIC:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
                aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "deployer":
            if node.module not in PUBLIC:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if alias.name.startswith("_"):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
                elif node.module == "deployer" and alias.name in _core_modules():
                    if full not in PUBLIC:
                        found.append(f"{where}:{node.lineno}: from deployer import {alias.name}")
                    aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and ast.unparse(node.value) in aliases:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def _core_modules() -> set[str]:
    core = Path(triton.__file__).parent
    return {p.stem for p in core.glob("*.py")} | {p.name for p in core.iterdir() if p.is_dir()}


def test_plugins_use_only_the_public_modules():
    sources = sorted(PLUGINS.rglob("*.py"))
    assert len(sources) > 10, sources
    found = [line for path in sources for line in _violations(path)]
    assert not found, "plugins reach into the core's private parts:\n" + "\n".join(found)


def test_the_rule_catches_what_it_forbids(tmp_path, monkeypatch):
    """The checker itself: each forbidden form is reported, the allowed ones are not."""
    monkeypatch.setattr(sys.modules[__name__], "PLUGINS", tmp_path)
    source = tmp_path / "bad.py"
    source.write_text(
        "from deployer import server as proc\n"
        "from deployer.runtime import find_server\n"
        "import deployer.client\n"
        "from deployer.triton import _LOG\n"
        "from deployer import triton, hookimpl\n"
        "from deployer.errors import DeployFailed\n"
        "triton._private(1)\n"
        "proc._reap(1)\n"
        "triton.alive(1)\n")
    found = _violations(source)
    assert [line.split(":")[1] for line in found] == ["1", "2", "3", "4", "7", "8"], found


def test_every_public_name_is_documented():
    for name in triton.__all__:
        value = getattr(triton, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), f"deployer.triton.{name} has no docstring"
    assert "tritonserver_command" in triton.__doc__


def test_command_line_sets_or_disables_each_protocol():
    server = triton.Server(executable=Path("/opt/ts/bin/tritonserver"), source="named",
                           backend_dir=Path("/opt/ts/backends"))
    assert triton.tritonserver_command(server, "/models", host="127.0.0.1", http_port=8000,
                                       args=["--log-verbose=1"]) == [
        "/opt/ts/bin/tritonserver", "--backend-directory=/opt/ts/backends",
        "--model-repository=/models", "--http-address=127.0.0.1", "--http-port=8000",
        "--allow-grpc=false", "--allow-metrics=false", "--log-verbose=1"]
    assert triton.tritonserver_command("tritonserver", http_port=1, grpc_port=2,
                                       metrics_port=3) == [
        "tritonserver", "--http-port=1", "--grpc-port=2", "--metrics-port=3"]


def test_start_alive_tagged_stop(tmp_path):
    """A tagged process: alive and found by its tag, then stopped, reaped and gone."""
    tag = f"test-triton-{secrets.token_hex(3)}"
    log = tmp_path / "sleep.log"
    pid = triton.start([sys.executable, "-c", "import time; print('up', flush=True); "
                        "time.sleep(600)"], {"EXTRA": "1"}, log, tag)
    try:
        assert triton.alive(pid)
        assert triton.tagged(tag) == [pid]
        assert triton.all_tagged()[tag] == [pid]
    finally:
        assert triton.stop(tag, grace=10) is True
    assert not triton.alive(pid)
    assert triton.tagged(tag) == []
    assert triton.stop(tag) is False


def test_wait_ready_fails_at_once_when_the_process_exits(tmp_path):
    log = tmp_path / "exit.log"
    port, = triton.free_ports(1)
    assert not triton.port_in_use(port)
    pid = triton.start([sys.executable, "-c", "import sys; print('E0101 boom', flush=True); "
                        "sys.exit(3)"], {}, log, f"test-triton-{secrets.token_hex(3)}")
    with pytest.raises(DeployFailed, match="exited before it was ready.*boom") as caught:
        triton.wait_ready(f"http://127.0.0.1:{port}", pid, log, timeout=600,
                          progress=lambda _: None, what="sleeper")
    assert str(log) in caught.value.hint
    assert triton.tail(log) == "E0101 boom"
    assert not triton.alive(pid)
