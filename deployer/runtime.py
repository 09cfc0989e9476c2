"""Finding a ``tritonserver``: one the user names, one on PATH, or the managed runtime.

The managed runtime is a virtual environment of its own in the user's cache with
``nvidia-pytriton`` (the server, its Python backend and stubs) and the packages models import.
It never shares the deployer's environment: their dependencies conflict (see the README). Its
Python is its own choice too: one with ``numpy<2`` wheels and a shared libpython the stub can
load — the deployer's own when it qualifies, else another on the machine, else the one named
with ``deployer server install --python``. Its folder, ``runtime-pyX.Y``, is named after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
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
#: Pythons a runtime can use: nvidia-pytriton 0.7.0 ships stubs for 3.8-3.13, and numpy<2 has
#: wheels up to 3.12 (on 3.13 pip would compile it from source)
RUNTIME_PYTHONS = ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12))
SERVER_ENV = "DEPLOYER_TRITONSERVER"
CACHE_ENV = "DEPLOYER_CACHE_DIR"
MARKER = "deployer-runtime.json"
STUB = "triton_python_backend_stub"
#: Triton's built-in schedulers that need no backend library
BUILTIN_BACKENDS = frozenset({"ensemble"})
INSTALL_HINT = ("install one, e.g. 'apt install python3-venv libpython3-dev' (Debian, Ubuntu) "
                "or 'pyenv install 3.12', or name it with 'deployer server install --python "
                "PATH'")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "triton-deployer"


def runtime_dir(version: str | None = None) -> Path:
    """The runtime folder for Python ``version`` ("3.11"; default: the deployer's own)."""
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return cache_dir() / f"runtime-py{version}"


# -- the runtime's Python ----------------------------------------------------------------------

#: run by a candidate interpreter (any Python 3): what it is and where its libpython is said to be
_PROBE = r"""
import json, os, platform, sys, sysconfig
from importlib.util import find_spec
var = sysconfig.get_config_var
base = os.path.realpath(sys.executable)  # a venv's python leads to the interpreter it was made from
if sys.prefix != sys.base_prefix:
    named = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
    base = named if os.path.isfile(named) else base
print(json.dumps({"version": list(sys.version_info[:3]), "implementation": sys.implementation.name,
                  "executable": sys.executable, "base_executable": base,
                  "libdir": var("LIBDIR") or "", "soname": var("INSTSONAME") or "",
                  "ldlibrary": var("LDLIBRARY") or "", "multiarch": var("MULTIARCH") or "",
                  "machine": platform.machine(), "venv": find_spec("ensurepip") is not None}))
"""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python on this machine, as a candidate for the runtime's venv."""

    path: str
    version: tuple[int, ...]
    implementation: str = "cpython"
    #: the shared libpython the stub would load, or "" when none is found
    libpython: str = ""
    venv: bool = True

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def problem(self) -> str | None:
        """Why it cannot carry the runtime, or None."""
        if self.implementation != "cpython":
            return f"{self.implementation}, not CPython"
        if tuple(self.version[:2]) not in RUNTIME_PYTHONS:
            return ("numpy<2 has no wheel for it" if tuple(self.version[:2]) > RUNTIME_PYTHONS[-1]
                    else "nvidia-pytriton 0.7.0 has no stub for it")
        if not self.libpython:
            return (f"no shared libpython{self.minor} found (built without --enable-shared, and "
                    "none in the system's library folders)")
        if not self.venv:
            return f"no venv/ensurepip (apt install python{self.minor}-venv)"
        return None

    def describe(self) -> str:
        return f"Python {'.'.join(map(str, self.version))} at {self.path}"


def _ldconfig() -> dict[str, str]:
    """Library name → path, as the dynamic loader's cache has them."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    x86 = os.uname().machine == "x86_64"
    found: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        if path and (not x86 or "x86-64" in name):
            found.setdefault(name.split(" (")[0], path.strip())
    return found


def find_libpython(probe: dict) -> str:
    """The shared libpython of an interpreter described by ``_PROBE``: in its ``LIBDIR``, else
    where the system keeps libraries (the loader's cache, the standard folders); "" if none."""
    major, minor = probe["version"][:2]
    names = [n for n in (probe.get("soname"), probe.get("ldlibrary"),
                         f"libpython{major}.{minor}.so.1.0") if n and ".so" in n]
    for name in names:
        candidate = Path(probe.get("libdir") or "/nonexistent") / name
        if candidate.is_file():
            return str(candidate)
    cache = _ldconfig()
    for name in names:
        if cache.get(name) and Path(cache[name]).is_file():
            return cache[name]
    arch = probe.get("multiarch") or ""
    for folder in (f"/lib/{arch}", f"/usr/lib/{arch}", "/usr/local/lib", "/lib64", "/usr/lib64",
                   "/usr/lib", "/lib"):
        for name in names:
            if (Path(folder) / name).is_file():
                return str(Path(folder) / name)
    return ""


def _interpreter(probe: dict, path: str) -> Interpreter:
    return Interpreter(path=path, version=tuple(probe["version"]),
                       implementation=probe["implementation"], libpython=find_libpython(probe),
                       venv=bool(probe["venv"]))


def describe(python: str | None = None) -> Interpreter:
    """The interpreter at ``python`` (default: the deployer's own, without a subprocess).
    Raise UsageError if it does not run."""
    if python is None:
        namespace: dict = {}
        out = []
        exec(compile(_PROBE.replace("print(", "out.append("), "<probe>", "exec"),  # noqa: S102
             {"out": out}, namespace)
        probe = json.loads(out[0])
        return _interpreter(probe, probe["base_executable"])
    said = "not found"
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=30, check=False)
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        probe = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        raise UsageError(f"{python} is not a Python interpreter that runs ({said})",
                         hint="pass the path of a python3 executable") from None
    base = probe["base_executable"]
    return _interpreter(probe, base if base and os.path.isfile(base) else probe["executable"])


def _candidates() -> Iterator[str]:
    """The machine's Pythons, in order of preference: python3 and python3.X on PATH, the
    system's, pyenv's (newest first)."""
    for name in ("python3", *(f"python{m}.{n}" for m, n in reversed(RUNTIME_PYTHONS))):
        found = shutil.which(name)
        if found:
            yield found
    yield from sorted(glob.glob("/usr/bin/python3.[0-9]*") + glob.glob(
        "/usr/local/bin/python3.[0-9]*"), reverse=True)
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = glob.glob(os.path.join(pyenv, "versions", "*", "bin", "python3"))

    def key(path: str) -> tuple:
        name = Path(path).parent.parent.name
        return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))

    yield from sorted(versions, key=key, reverse=True)


def choose(python: str | None = None) -> Interpreter:
    """The Python for a new runtime: ``python`` when given (UsageError, exit 2, if it cannot
    carry one), else the deployer's own when it qualifies, else the first on the machine that
    does; Unavailable (exit 5) when none does."""
    if python:
        found = describe(python)
        problem = found.problem()
        if problem:
            raise UsageError(f"{found.describe()} cannot carry the embedded runtime: {problem}",
                             hint=f"pass another with --python; it needs CPython "
                                  f"{_supported()} with a shared libpython")
        return found
    own = describe()
    if own.problem() is None:
        return own
    tried = {os.path.realpath(own.path): own}
    for path in _candidates():
        real = os.path.realpath(path)
        if real in tried or not os.access(real, os.X_OK):
            continue
        try:
            found = describe(path)
        except UsageError:
            continue
        tried[real] = found
        if found.problem() is None:
            return found
    seen = "; ".join(f"{i.minor} at {i.path}: {i.problem()}" for i in list(tried.values())[:4])
    raise Unavailable(f"no Python on this machine can carry the embedded Triton runtime (it "
                      f"needs CPython {_supported()} with a shared libpython; found {seen})",
                      hint=INSTALL_HINT)


def _supported() -> str:
    first, last = RUNTIME_PYTHONS[0], RUNTIME_PYTHONS[-1]
    return f"{first[0]}.{first[1]}-{last[0]}.{last[1]}"


# -- the server --------------------------------------------------------------------------------

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
    #: the managed runtime's folder, its Python and the libpython its stub loads
    root: Path | None = None
    python: str = ""
    interpreter: str = ""
    libpython: str = ""

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
        """The server's environment: the allow-listed part of ours (``server.inherited``:
        never credentials), our path entries in front, then ``extra``."""
        from .server import inherited

        env = inherited()
        for key, value in self.env.items():
            env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
        env.update(extra or {})
        return env

    def stub_check(self) -> dict:
        """Run the Python backend stub the way the server would (its environment, no
        arguments): ``{"loads": bool, "missing": library or "", "said": its first line}``."""
        stub = (self.backend_dir or Path("/opt/tritonserver/backends")) / "python" / STUB
        if not stub.is_file():
            return {"loads": False, "missing": "", "said": f"no stub at {stub}"}
        try:
            done = subprocess.run([str(stub)], env=self.process_env(), capture_output=True,
                                  text=True, timeout=60, check=False, cwd="/")
        except (OSError, subprocess.SubprocessError) as exc:
            return {"loads": False, "missing": "", "said": str(exc)}
        text = (done.stderr + done.stdout).strip()
        said = text.splitlines()[0] if text else f"exit {done.returncode}"
        marker = "error while loading shared libraries: "
        if marker in text:
            missing = text.split(marker, 1)[1].split(":", 1)[0].strip()
            return {"loads": False, "missing": missing, "said": said}
        return {"loads": done.returncode != 127, "missing": "", "said": said}

    def to_dict(self) -> dict:
        data = {"executable": str(self.executable), "source": self.source,
                "backend_dir": str(self.backend_dir) if self.backend_dir else None,
                "version": self.version, "packages": list(self.packages),
                "backends": sorted(self.backends() or [])}
        if self.source == "managed":
            data.update(root=str(self.root), python=self.python,
                        interpreter=self.interpreter, libpython=self.libpython)
        return data


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
    and ensembles, and serves onnxruntime and pytorch models through the Python backend: see
    :func:`serve_folder`). ``hint`` says where such a model can go instead."""
    from .errors import ValidationError

    from .shim import FRAMEWORKS

    server = find_server(named, create=False)
    have = server.backends() if server else {"python", "ensemble"}
    # the managed runtime serves ONNX and TorchScript models through the Python backend
    shim = server is None or server.source == "managed"
    for model in repository.models.values() if have is not None else ():
        if model.backend in have:
            continue
        if not (shim and model.backend in FRAMEWORKS):
            raise ValidationError(
                f"model {model.name!r} needs the {model.backend} backend, which this "
                f"tritonserver lacks (it has: {', '.join(sorted(have))})",
                path=str(model.config_path), hint=hint)
        if not model.inputs or not model.outputs:
            raise ValidationError(
                f"model {model.name!r} lists no {'inputs' if not model.inputs else 'outputs'}: "
                f"Triton's {model.backend} backend would read them from the model file, the "
                "embedded Triton serves it through the Python backend and needs them in "
                "config.pbtxt", path=str(model.config_path),
                hint="add its input [...] and output [...] sections (names, data_type, dims)")


def serve_folder(server: Server, repository, destination: Path,
                 progress: Callable[[str], None] = lambda _: None,
                 where: str = "embedded") -> tuple[Path, dict[str, str]]:
    """The folder to give ``server`` for ``repository``, and how each model that needs the
    shim is served (``{model: "onnxruntime 1.20 through the Python backend, embedded"}``).

    When the server has every backend the models need, that is the repository itself and {}.
    Otherwise (the managed runtime lacks ``onnxruntime`` and ``pytorch``) the runtime first
    gets the frameworks' pinned packages if it lacks them (once, with pip's progress), then
    ``destination`` receives the staged copy :func:`deployer.shim.stage` writes.
    """
    from . import shim

    have = server.backends() or set()
    models = shim.shimmed(repository, have)
    if not models:
        return repository.path, {}
    if server.source == "managed":
        site = _site_packages(server.root)  # type: ignore[arg-type]
        missing = [r for r in shim.requirements(models)
                   if shim.installed_version(site, r.split("==")[0]) is None]
        if missing:
            progress(f"the embedded runtime gets {', '.join(missing)} for "
                     f"{', '.join(m.name for m in models)} (once; about 20 s)")
            server = install(missing, progress=progress)
    site = _site_packages(server.root) if server.root else None
    shim.stage(repository, destination, have)
    versions = {m.backend: shim.installed_version(site, shim.FRAMEWORKS[m.backend].distribution)
                for m in models}
    return destination, shim.describe_all(models, versions, where, progress)


def managed_server(root: Path | None = None) -> Server | None:
    """The managed runtime, if it exists complete (None otherwise): the one in ``root``, else
    the deployer's own Python's (``runtime_dir()``), else — when the deployer's Python cannot
    carry a runtime — any complete one in the cache, the newest Python first."""
    if root is not None:
        return _load(root)
    own = _load(runtime_dir())
    if own is not None or describe().problem() is None:
        return own
    for version in sorted(RUNTIME_PYTHONS, reverse=True):
        found = _load(runtime_dir(f"{version[0]}.{version[1]}"))
        if found is not None:
            return found
    return None


def _load(root: Path) -> Server | None:
    """The runtime in ``root`` if its completion marker is there and what it needs still is
    (its Python, the libpython it found); None otherwise."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if not marker.get("complete") or not (root / "bin" / "python").exists():
        return None
    libpython = marker.get("libpython")
    if libpython is None:   # a marker written before the libpython was recorded
        libpython = _venv_libpython(root, marker.get("python", ""))
    elif libpython and not Path(libpython).is_file():
        return None
    site = Path(marker["site_packages"])
    libs = [str(site / "nvidia_pytriton.libs")] + ([str(Path(libpython).parent)]
                                                   if libpython else [])
    server = Server(
        executable=site / "pytriton" / "tritonserver" / "bin" / "tritonserver",
        source="managed",
        backend_dir=root / "backends",
        env={"PATH": str(root / "bin"), "LD_LIBRARY_PATH": os.pathsep.join(libs)},
        version=marker.get("pytriton", ""),
        packages=tuple(marker.get("packages", ())),
        root=root, python=marker.get("python", ""),
        interpreter=marker.get("interpreter")
        or os.path.realpath(os.path.join(_venv_home(root), "python3")),
        libpython=libpython,
    )
    return server if "libpython" in marker else _upgrade(root, marker, server)


def _venv_home(root: Path) -> str:
    """The folder of the interpreter a venv was made from (``home`` in its pyvenv.cfg)."""
    try:
        return next(line.split("=", 1)[1].strip() for line in
                    (root / "pyvenv.cfg").read_text().splitlines()
                    if line.split("=")[0].strip() == "home")
    except (FileNotFoundError, StopIteration):
        return ""


def _venv_libpython(root: Path, version: str) -> str:
    """The libpython beside the interpreter a venv was made from (following a venv made from
    another venv to the real interpreter)."""
    minor = ".".join(version.split(".")[:2])
    home = _venv_home(root)
    if not home or not minor:
        return ""
    for folder in (Path(home), Path(os.path.realpath(Path(home) / f"python{minor}")).parent):
        candidate = folder.parent / "lib" / f"libpython{minor}.so.1.0"
        if candidate.is_file():
            return str(candidate)
    return ""


def _upgrade(root: Path, marker: dict, server: Server) -> Server | None:
    """A runtime whose marker predates the recorded libpython: checked once (its stub must
    load), then its marker records what was found; None if its stub cannot load (it is then
    rebuilt like an incomplete one)."""
    if not server.stub_check()["loads"]:
        return None
    with contextlib.suppress(OSError):
        _write_marker(root, Path(marker["site_packages"]), list(marker.get("packages", ())),
                      {"python": server.python, "interpreter": server.interpreter,
                       "libpython": server.libpython})
    return server


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
            progress: Callable[[str], None] = lambda _: None,
            python: str | None = None) -> Server:
    """Create (or extend with ``packages``) the managed runtime; return it.

    Its Python is ``python`` when given, else :func:`choose`'s; an existing complete runtime
    is used as it is (``force`` rebuilds it). It is complete only once its stub has been seen
    to load: a creation that fails or is interrupted writes no marker, and the next call
    removes the folder and starts again.
    """
    with _install_lock():
        interpreter = choose(python) if python else None
        if interpreter:
            root = runtime_dir(interpreter.minor)
            current = None if force else _load(root)
            if current and current.interpreter and \
                    os.path.realpath(current.interpreter) != os.path.realpath(interpreter.path):
                progress(f"using the runtime in {root} (made with {current.interpreter}; "
                         "--force rebuilds it with " + interpreter.path + ")")
        else:
            current = None if force else managed_server()
            if current is None:
                interpreter = choose()
            root = current.root if current else runtime_dir(interpreter.minor)  # type: ignore
        wanted = list(dict.fromkeys([*(current.packages if current else ()), *packages]))
        if current and set(wanted) <= set(current.packages):
            return current
        if current:
            # numpy stays below 2 (the stub breaks on 2), whatever the packages ask for
            _pip_install(root, ["--only-binary=numpy", *BASE_PACKAGES, *packages], progress)
            _write_marker(root, _site_packages(root), wanted, _marker_python(current))
            return _load(root)  # type: ignore[return-value]
        assert interpreter is not None
        return _create(root, interpreter, wanted, force, progress)


def _create(root: Path, interpreter: Interpreter, wanted: list[str], force: bool,
            progress: Callable[[str], None]) -> Server:
    if root.exists():
        progress(f"removing the embedded runtime in {root} to rebuild it" if force else
                 f"removing the incomplete embedded runtime in {root} (an earlier creation "
                 "was interrupted or failed, or its stub cannot load)")
        shutil.rmtree(root)
    started = time.monotonic()
    progress(f"creating the embedded Triton runtime in {root} with {interpreter.describe()} "
             "(first use: installs nvidia-pytriton, a 55 MB wheel, and numpy; about 20 s, "
             "more on a slow network)")
    # Built in place (venv scripts embed their folder); the marker, written last, is what
    # makes it usable, so an interrupted build is found incomplete and rebuilt.
    _run([interpreter.path, "-m", "venv", str(root)], progress, "creating the venv")
    _pip_install(root, [PYTRITON, "--no-deps"], progress)
    # wheels only: a numpy built from source takes minutes and a compiler
    _pip_install(root, ["--only-binary=numpy", *BASE_PACKAGES, *wanted], progress)
    site = _site_packages(root)
    _assemble_backends(root, site, interpreter.minor)
    record = {"python": ".".join(map(str, interpreter.version)),
              "interpreter": interpreter.path, "libpython": interpreter.libpython}
    _write_marker(root, site, wanted, record, complete=False)
    server = _load_incomplete(root)
    check = server.stub_check()
    if not check["loads"]:
        shutil.rmtree(root, ignore_errors=True)
        missing = check["missing"] or check["said"]
        raise Unavailable(
            f"the embedded runtime's Python backend stub cannot load {missing} "
            f"({interpreter.describe()}, libpython {interpreter.libpython or 'not found'}); "
            "the runtime was not created",
            hint=f"install that library, or create the runtime with another Python: "
                 f"'deployer server install --python PATH' (CPython {_supported()} with a "
                 "shared libpython)")
    _write_marker(root, site, wanted, record)
    progress(f"embedded runtime ready in {time.monotonic() - started:.0f}s")
    return _load(root)  # type: ignore[return-value]


def _load_incomplete(root: Path) -> Server:
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "complete": True}))
    try:
        return _load(root)  # type: ignore[return-value]
    finally:
        (root / MARKER).write_text(json.dumps(marker))


def _marker_python(server: Server) -> dict:
    return {"python": server.python, "interpreter": server.interpreter,
            "libpython": server.libpython}


def _pip_install(root: Path, args: list[str], progress: Callable[[str], None]) -> None:
    if [a for a in args if not a.startswith("--")]:
        _run([str(root / "bin" / "python"), "-m", "pip", "install",
              "--disable-pip-version-check", *args], progress, f"pip install {' '.join(args)}")


def _site_packages(root: Path) -> Path:
    found = sorted(root.glob("lib/python3*/site-packages"))
    if not found:
        raise DeployFailed(f"no site-packages in {root}",
                           hint="run 'deployer server install --force'")
    return found[0]


def _assemble_backends(root: Path, site: Path, version: str) -> None:
    """Copy the Python backend and the stub for Python ``version`` beside it, outside
    site-packages."""
    tree = site / "pytriton" / "tritonserver"
    stub = tree / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise Unavailable(f"nvidia-pytriton has no Python backend stub for Python {version}",
                          hint=f"use Python {_supported()} ('deployer server install --python "
                               "PATH'), or name a tritonserver with -o server=PATH")
    target = root / "backends"
    shutil.rmtree(target, ignore_errors=True)
    for backend in (tree / "backends").iterdir():
        shutil.copytree(backend, target / backend.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "python" / stub.name)


def _write_marker(root: Path, site: Path, packages: list[str], python: dict,
                  complete: bool = True) -> None:
    marker = {"complete": complete, "pytriton": PYTRITON.split("==")[1], **python,
              "site_packages": str(site), "packages": packages}
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, root / MARKER)


def info() -> dict:
    """What ``deployer server info`` shows: which server would run, the managed runtime (its
    Python, libpython, and whether its stub loads, checked now), or the Python a new runtime
    would be made with."""
    named = os.environ.get(SERVER_ENV)
    on_path = shutil.which("tritonserver")
    managed = managed_server()
    result: dict = {"runtime_dir": str(managed.root if managed else runtime_dir())}
    result["managed"] = managed.to_dict() if managed else None
    if managed:
        result["managed"]["stub"] = managed.stub_check()
    else:
        try:
            chosen_python = choose()
            result["runtime_dir"] = str(runtime_dir(chosen_python.minor))
            result["would_use"] = {"python": chosen_python.describe(),
                                   "libpython": chosen_python.libpython}
        except (Unavailable, UsageError) as exc:
            result["would_use"] = {"error": str(exc)}
    chosen = "named" if named else "path" if on_path else "managed" if managed else None
    result["selected"] = chosen
    if named:
        result["named"] = named
    if on_path:
        result["on_path"] = on_path
    return result
