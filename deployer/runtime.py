"""Finding a ``tritonserver``: one the user names, one on PATH, or the managed runtime.

The managed runtime is a virtual environment of its own in the user's cache with
``nvidia-pytriton`` (the server, its Python backend and stubs) and the packages models import.
It never shares the deployer's environment: their dependencies conflict (see the README).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import DeployFailed, Unavailable, UsageError

PYTRITON = "nvidia-pytriton==0.7.0"
#: the stub of nvidia-pytriton 0.7.0 breaks under numpy 2
BASE_PACKAGES = ("numpy<2",)
SERVER_ENV = "DEPLOYER_TRITONSERVER"
CACHE_ENV = "DEPLOYER_CACHE_DIR"
MARKER = "deployer-runtime.json"
#: Triton's built-in schedulers that need no backend library
BUILTIN_BACKENDS = frozenset({"ensemble"})


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "triton-deployer"


def runtime_dir() -> Path:
    return cache_dir() / f"runtime-py{sys.version_info.major}.{sys.version_info.minor}"


@dataclasses.dataclass(frozen=True)
class Server:
    """A runnable ``tritonserver`` and how to run it."""

    executable: Path
    #: named | path | managed
    source: str
    backend_dir: Path | None = None
    #: variables to set for the server process (PATH first entries, LD_LIBRARY_PATH)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    version: str = ""
    packages: tuple[str, ...] = ()

    def backends(self) -> set[str] | None:
        """Backends this server can load, or None when they cannot be listed."""
        directory = self.backend_dir or Path("/opt/tritonserver/backends")
        if not directory.is_dir():
            return None
        return {p.name for p in directory.iterdir() if p.is_dir()} | BUILTIN_BACKENDS

    def command(self, *args: str) -> list[str]:
        cmd = [str(self.executable)]
        if self.backend_dir:
            cmd.append(f"--backend-directory={self.backend_dir}")
        return cmd + list(args)

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.env.items():
            env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
        env.update(extra or {})
        return env

    def to_dict(self) -> dict:
        return {"executable": str(self.executable), "source": self.source,
                "backend_dir": str(self.backend_dir) if self.backend_dir else None,
                "version": self.version, "packages": list(self.packages),
                "backends": sorted(self.backends() or [])}


def find_server(named: str | None = None, progress: Callable[[str], None] = lambda _: None,
                create: bool = True) -> Server | None:
    """The server to use: ``named`` (or $DEPLOYER_TRITONSERVER), then PATH, then managed.

    With ``create`` False, return None instead of creating the managed runtime.
    """
    named = named or os.environ.get(SERVER_ENV)
    if named:
        path = Path(named).expanduser()
        resolved = path if path.is_file() else (shutil.which(named) and Path(shutil.which(named)))
        if not resolved or not os.access(resolved, os.X_OK):
            raise UsageError(f"tritonserver {named!r} not found or not executable",
                             hint="pass the path of a tritonserver binary, or leave it unset to "
                                  "use the managed runtime")
        return Server(executable=Path(resolved), source="named")
    on_path = shutil.which("tritonserver")
    if on_path:
        return Server(executable=Path(on_path), source="path")
    server = managed_server()
    if server is None and create:
        server = install(progress=progress)
    return server


def check_backends(repository, named: str | None = None, *, hint: str) -> None:
    """Raise ValidationError for the first model that needs a backend the server that would
    run lacks. Never creates the managed runtime (which, made or not, has the Python backend
    and ensembles only). ``hint`` says where such a model can go instead."""
    from .errors import ValidationError

    server = find_server(named, create=False)
    have = server.backends() if server else {"python", "ensemble"}
    for model in repository.models.values() if have is not None else ():
        if model.backend not in have:
            raise ValidationError(
                f"model {model.name!r} needs the {model.backend} backend, which this "
                f"tritonserver lacks (it has: {', '.join(sorted(have))})",
                path=str(model.config_path), hint=hint)


def managed_server(root: Path | None = None) -> Server | None:
    """The managed runtime, if it exists complete; None otherwise."""
    root = root or runtime_dir()
    try:
        marker = json.loads((root / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not marker.get("complete"):
        return None
    site = Path(marker["site_packages"])
    return Server(
        executable=site / "pytriton" / "tritonserver" / "bin" / "tritonserver",
        source="managed",
        backend_dir=root / "backends",
        env={"PATH": str(root / "bin"), "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs")},
        version=marker.get("pytriton", ""),
        packages=tuple(marker.get("packages", ())),
    )


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "runtime.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], progress: Callable[[str], None], what: str) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = (tail + [line])[-15:]
            if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                progress(f"  {line}")
    if proc.wait() != 0:
        raise DeployFailed(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail[-5:]),
                           hint="check network access to PyPI, then run "
                                "'deployer server install --force'")


def install(packages: Sequence[str] = (), force: bool = False,
            progress: Callable[[str], None] = lambda _: None) -> Server:
    """Create (or extend with ``packages``) the managed runtime; return it.

    An interrupted creation is never used half-made: the next call finds no marker, removes
    the folder and starts again.
    """
    with _install_lock():
        root = runtime_dir()
        current = None if force else managed_server(root)
        wanted = list(dict.fromkeys([*(current.packages if current else ()), *packages]))
        if current and set(wanted) <= set(current.packages):
            return current
        if current:
            _pip_install(root, list(packages), progress)
            site = _site_packages(root)
            _write_marker(root, site, wanted)
            return managed_server(root)  # type: ignore[return-value]
        if root.exists():
            progress(f"removing the embedded runtime in {root} to rebuild it" if force else
                     f"removing the incomplete embedded runtime in {root} (an earlier creation "
                     "was interrupted)")
            shutil.rmtree(root)
        started = time.monotonic()
        progress(f"creating the embedded Triton runtime in {root} (first use, about a minute)")
        # Built in place (venv scripts embed their folder); the marker, written last, is what
        # makes it usable, so an interrupted build is found incomplete and rebuilt.
        _run([sys.executable, "-m", "venv", str(root)], progress, "creating the venv")
        _pip_install(root, [PYTRITON, "--no-deps"], progress)
        _pip_install(root, [*BASE_PACKAGES, *wanted], progress)
        site = _site_packages(root)
        _assemble_backends(root, site)
        _write_marker(root, site, wanted)
        progress(f"embedded runtime ready in {time.monotonic() - started:.0f}s")
        return managed_server(root)  # type: ignore[return-value]


def _pip_install(root: Path, args: list[str], progress: Callable[[str], None]) -> None:
    if args:
        _run([str(root / "bin" / "python"), "-m", "pip", "install",
              "--disable-pip-version-check", *args], progress, f"pip install {' '.join(args)}")


def _site_packages(root: Path) -> Path:
    found = sorted(root.glob("lib/python3*/site-packages"))
    if not found:
        raise DeployFailed(f"no site-packages in {root}",
                           hint="run 'deployer server install --force'")
    return found[0]


def _assemble_backends(root: Path, site: Path) -> None:
    """Copy the Python backend and the stub for this Python beside it, outside site-packages."""
    tree = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tree / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise Unavailable(f"nvidia-pytriton has no Python backend stub for Python {version}",
                          hint="use Python 3.10-3.13, or name a tritonserver with -o server=PATH")
    target = root / "backends"
    shutil.rmtree(target, ignore_errors=True)
    for backend in (tree / "backends").iterdir():
        shutil.copytree(backend, target / backend.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "python" / stub.name)


def _write_marker(root: Path, site: Path, packages: list[str]) -> None:
    marker = {"complete": True, "pytriton": PYTRITON.split("==")[1],
              "python": sys.version.split()[0], "site_packages": str(site),
              "packages": packages}
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, root / MARKER)


def info() -> dict:
    """What ``deployer server info`` shows."""
    result: dict = {"runtime_dir": str(runtime_dir())}
    named = os.environ.get(SERVER_ENV)
    on_path = shutil.which("tritonserver")
    managed = managed_server()
    result["managed"] = managed.to_dict() if managed else None
    chosen = "named" if named else "path" if on_path else "managed" if managed else None
    result["selected"] = chosen
    if named:
        result["named"] = named
    if on_path:
        result["on_path"] = on_path
    return result
