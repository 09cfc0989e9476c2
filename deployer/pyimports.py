"""What a Python model may import in a cloud's Triton image, checked before any cloud call and
enforced on the twins.

NVIDIA's Triton image gives a Python-backend model the image's Python standard library, the
few packages the image installs for the Python backend (:data:`IMAGE_PACKAGES`: numpy<2, pip,
setuptools, wheel, virtualenv and what virtualenv needs; server ``build.py``), the backend's
own ``triton_python_backend_utils``, and the modules in the model's own folder (the stub puts
the model folder and its version folder on ``sys.path``). The image's Python follows its
Ubuntu: 3.10 up to 24.10 (Ubuntu 22.04), 3.12 from 24.11 (Ubuntu 24.04).

A model that needs more brings it in an ``EXECUTION_ENV_PATH`` archive (conda-pack) in its
folder; the stub then runs in that environment, which sees its own packages and not the
image's (:func:`execution_env`).

:func:`check` is the static check a cloud target (and its twin) runs before creating anything.
A twin then serves with :func:`rehearsal_server` (the managed runtime whose Python can enter
the models' environments) and passes :func:`guard`'s environment to its ``tritonserver``, so
the stub refuses, at import time, what the image would not have (a ``sitecustomize`` that
installs an import finder; see :data:`SITECUSTOMIZE`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import hashlib
import re
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .errors import ValidationError
from .shim import PARAM_FRAMEWORK

if TYPE_CHECKING:
    from .repository import Model, Repository

#: what the Triton image's Python backend gets besides the standard library (server build.py:
#: apt python3, python3-pip, python3-wheel, python3-setuptools; pip "numpy<2" virtualenv),
#: with the modules those distributions install and virtualenv's own dependencies
IMAGE_PACKAGES = frozenset({
    "numpy", "pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "virtualenv",
    "distlib", "filelock", "platformdirs"})
#: the Python backend's modules, on the stub's path in every image
BACKEND_MODULES = frozenset({"triton_python_backend_utils", "c_python_backend_utils"})
FIX = "add an EXECUTION_ENV_PATH archive (conda-pack) with it, or drop the import"
ENV_PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIR_VARIABLE = "$$TRITON_MODEL_DIRECTORY"
#: top-level standard modules added (+) and removed (-) by each Python release (3.10 on)
STDLIB_CHANGES: dict[tuple[int, int], tuple[frozenset[str], frozenset[str]]] = {
    (3, 11): (frozenset({"tomllib"}), frozenset({"binhex"})),
    (3, 12): (frozenset(), frozenset({"distutils", "imp", "asynchat", "asyncore", "smtpd"})),
    (3, 13): (frozenset(), frozenset({
        "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib",
        "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu",
        "xdrlib", "lib2to3"})),
}
#: the shim's marker in a staged config: such a model is no Python model in the cloud, where
#: its own backend serves it
SHIM_PARAMETER = PARAM_FRAMEWORK


@dataclasses.dataclass(frozen=True)
class Image:
    """The image a cloud serves Python models with."""

    #: its Python, "3.10"
    python: str = "3.10"
    #: how messages name it: "SageMaker's Triton image 24.09"
    where: str = "the Triton image"

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    def describe(self) -> str:
        return f"{self.where} (Python {self.python})"


def parse_python(python: str) -> tuple[int, int]:
    """``"3.10"`` → (3, 10); UsageError-free: ValidationError for anything else."""
    match = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", python.strip())
    if not match:
        raise ValidationError(f"not a Python version: {python!r}", hint="write it as 3.10")
    return int(match.group(1)), int(match.group(2))


def stdlib(python: str) -> tuple[frozenset[str], dict[str, str]]:
    """The top-level standard modules of Python ``python`` (from ours, corrected by
    :data:`STDLIB_CHANGES`), and for the modules ours has and that one lacks, why."""
    want, ours = parse_python(python), sys.version_info[:2]
    names, notes = set(sys.stdlib_module_names), {}
    steps = sorted(STDLIB_CHANGES)
    if want > ours:
        for step in (s for s in steps if ours < s <= want):
            added, removed = STDLIB_CHANGES[step]
            names |= added
            for name in removed & names:
                notes[name] = f"removed from the standard library in Python {step[0]}.{step[1]}"
            names -= removed
    else:
        for step in (s for s in reversed(steps) if want < s <= ours):
            added, removed = STDLIB_CHANGES[step]
            names |= removed
            for name in added & names:
                notes[name] = f"new in Python {step[0]}.{step[1]}"
            names -= added
    return frozenset(names), notes


# -- the model's own execution environment ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Environment:
    """A model's ``EXECUTION_ENV_PATH``: where it is and what it carries."""

    #: the archive (``.tar.gz``) or unpacked folder, inside the model folder
    path: Path
    #: its Python, "3.10" (from ``lib/python3.X``)
    python: str
    #: top-level modules of its site-packages
    modules: frozenset[str]


def _top_level(name: str) -> str | None:
    """The module a site-packages entry provides, or None (metadata, caches, .pth files)."""
    if name == "__pycache__" or name.endswith(
            (".dist-info", ".egg-info", ".pth", ".libs", ".data", ".txt")):
        return None
    if name.endswith(".py"):
        return name[:-3]
    if name.endswith(".so"):
        return name.split(".")[0]
    return name if "." not in name else None


def _scan(entries: Iterable[str]) -> tuple[bool, frozenset[str], frozenset[str]]:
    """(has bin/activate, Pythons of lib/python3.X, site-packages modules) of env paths."""
    activate, pythons, modules = False, set(), set()
    for entry in entries:
        parts = [p for p in entry.split("/") if p not in ("", ".")]
        if parts[:2] == ["bin", "activate"] and len(parts) == 2:
            activate = True
        if len(parts) >= 2 and parts[0] == "lib" and re.fullmatch(r"python3\.\d+", parts[1]):
            pythons.add(parts[1][len("python"):])
            if len(parts) >= 4 and parts[2] == "site-packages":
                module = _top_level(parts[3])
                if module:
                    modules.add(module)
    return activate, frozenset(pythons), frozenset(modules)


@functools.lru_cache(maxsize=32)
def _read_archive(path: str, _mtime: int,
                  _size: int) -> tuple[bool, frozenset[str], frozenset[str]]:
    with tarfile.open(path, "r:gz") as archive:
        return _scan(member.name for member in archive)


def execution_env(model: Model, image: Image) -> Environment | None:
    """The model's ``EXECUTION_ENV_PATH`` checked the way its cloud will meet it, or None when
    it sets none. ValidationError when it is not a path under ``$$TRITON_MODEL_DIRECTORY``
    (only the model folder travels with the artefact), is missing, is no readable tar.gz or
    folder with ``bin/activate`` and ``lib/python3.X``, has another Python than the image
    (without its own ``triton_python_backend_stub`` in the model folder), or lacks numpy
    (``triton_python_backend_utils`` imports it)."""
    if ENV_PARAMETER not in model.config.parameters:
        return None
    value = model.config.parameters[ENV_PARAMETER].string_value.strip()
    config = str(model.config_path)
    hint = (f'put the archive in the model folder and write {{ key: "{ENV_PARAMETER}" value: '
            f'{{ string_value: "{MODEL_DIR_VARIABLE}/env.tar.gz" }} }}')
    if not value.startswith(MODEL_DIR_VARIABLE + "/"):
        raise ValidationError(
            f"model {model.name!r}: {ENV_PARAMETER} {value!r} is not inside the model folder; "
            f"{image.where} gets the model folder only", path=config, hint=hint)
    rel = value[len(MODEL_DIR_VARIABLE) + 1:]
    path = Path(os.path.normpath(model.path / rel))
    if not path.is_relative_to(model.path) or path == model.path:
        raise ValidationError(
            f"model {model.name!r}: {ENV_PARAMETER} {value!r} leaves the model folder",
            path=config, hint=hint)
    if not path.exists():
        raise ValidationError(f"model {model.name!r}: {ENV_PARAMETER} names {rel}, which is "
                              f"not in {model.path}", path=config, hint=hint)
    if path.is_dir():
        found = _scan(str(p.relative_to(path)) for p in path.rglob("*")
                      if len(p.relative_to(path).parts) <= 4)
    elif path.name.endswith((".tar.gz", ".tgz")):
        try:
            stat = path.stat()
            found = _read_archive(str(path), stat.st_mtime_ns, stat.st_size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValidationError(f"model {model.name!r}: {rel} is no readable tar.gz ({exc})",
                                  path=str(path), hint="pack the environment with conda-pack"
                                  ) from None
    else:
        raise ValidationError(f"model {model.name!r}: {ENV_PARAMETER} {rel} is neither a "
                              ".tar.gz archive nor a folder", path=config, hint=hint)
    activate, pythons, modules = found
    if not activate:
        raise ValidationError(f"model {model.name!r}: {rel} has no bin/activate: the Python "
                              "backend sources it to enter the environment", path=str(path),
                              hint="pack the environment with conda-pack")
    if len(pythons) != 1:
        raise ValidationError(
            f"model {model.name!r}: {rel} has "
            f"{'no lib/python3.X' if not pythons else 'several lib/python3.X'}: it is no "
            "single Python environment", path=str(path), hint="pack the environment with "
            "conda-pack")
    python = next(iter(pythons))
    if python != image.python and not (model.path / "triton_python_backend_stub").is_file():
        raise ValidationError(
            f"model {model.name!r}: {rel} holds Python {python}, {image.describe()} runs its "
            f"Python backend stub with Python {image.python}", path=str(path),
            hint=f"pack the environment with Python {image.python}, or build a "
                 f"triton_python_backend_stub for Python {python} and put it in the model folder")
    if "numpy" not in modules:
        raise ValidationError(
            f"model {model.name!r}: {rel} has no numpy: triton_python_backend_utils imports it "
            "inside the environment", path=str(path),
            hint="install 'numpy<2' in the environment before packing it")
    return Environment(path=path, python=python, modules=modules)


# -- the static check ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement (or ``importlib.import_module("x")``) of a source file."""

    #: the dotted name as written, made absolute for a relative import
    module: str
    line: int
    #: inside ``try: ... except ImportError`` (or a broader handler): the code copes without
    optional: bool
    #: a relative import (``from . import x``): resolved in the file's own folder
    level: int = 0
    #: for ``from m import a, b``: a, b (each may be a submodule)
    names: tuple[str, ...] = ()


_CATCHES = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any((t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute)
                else "") in _CATCHES for t in types)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(source: str, filename: str = "<model>") -> list[Import]:
    """The imports of ``source``, in order. ``if TYPE_CHECKING:`` blocks are skipped.
    ValidationError when it does not parse."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise ValidationError(f"does not parse: {exc.msg}", path=filename, line=exc.lineno,
                              hint="fix the syntax; the stub would fail to import it") from None
    found: list[Import] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, optional) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append(Import(node.module or "", node.lineno, optional, node.level,
                                tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call) and _dynamic(node):
            found.append(Import(node.args[0].value, node.lineno, optional))  # type: ignore
        if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            guarded = optional or any(_catches_import_error(h)
                                      for h in node.handlers)  # type: ignore[attr-defined]
            for child in node.body:  # type: ignore[attr-defined]
                visit(child, guarded)
            for child in (*node.handlers, *node.orelse, *node.finalbody):  # type: ignore
                visit(child, optional)
            return
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def _dynamic(call: ast.Call) -> bool:
    """``importlib.import_module("x")``, ``import_module("x")`` or ``__import__("x")`` with a
    literal absolute name."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(
        func, ast.Name) else ""
    first = call.args[0] if call.args else None
    return name in ("import_module", "__import__") and isinstance(first, ast.Constant) and \
        isinstance(first.value, str) and bool(first.value) and not first.value.startswith(".")


@dataclasses.dataclass(frozen=True)
class Problem:
    """An import the image cannot satisfy."""

    model: str
    path: Path
    line: int
    module: str
    #: why, when the name is standard in our Python but not in the image's
    note: str = ""

    def message(self, image: Image, env: Environment | None) -> str:
        which = (f"neither its {env.path.name} nor {image.describe()} has" if env and not self.note
                 else f"{image.describe()} does not have")
        return (f"model {self.model!r} imports {self.module!r}, which {which}"
                + (f": {self.note}" if self.note else ""))


def _local(name: str, roots: Iterable[Path]) -> Path | None:
    """The source file of the local module ``name`` (dotted) under ``roots``, or None; a
    compiled extension or a namespace folder is local too (returned as the folder/file)."""
    parts = name.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        if base.is_dir() or (base.parent.is_dir() and any(base.parent.glob(parts[-1] + ".*.so"))):
            return base
    return None


def _python_files(model: Model) -> Iterator[Path]:
    filename = model.config.default_model_filename or "model.py"
    for version in model.versions:
        path = model.path / str(version) / filename
        if path.is_file():
            yield path


def python_models(repository: Repository) -> list[Model]:
    """The models that run on the Python backend in the cloud (not the shim's)."""
    return [m for m in repository.models.values() if m.backend == "python"
            and SHIM_PARAMETER not in m.config.parameters]


def problems(model: Model, image: Image, env: Environment | None = None) -> list[Problem]:
    """The non-optional imports of ``model``'s model files, and of the model-folder files they
    import, that the image (or its execution environment) cannot satisfy."""
    std, notes = stdlib(image.python)
    available = std | BACKEND_MODULES | (env.modules if env else IMAGE_PACKAGES)
    found: list[Problem] = []
    queue = [(path, path.parent) for path in _python_files(model)]
    seen: set[Path] = set()
    while queue:
        path, version_dir = queue.pop(0)
        if path in seen or path.suffix != ".py":
            continue
        seen.add(path)
        roots = (version_dir, model.path)
        for item in imports(path.read_text(errors="replace"), str(path)):
            if item.level:
                base = path.parent
                for _ in range(item.level - 1):
                    base = base.parent
                names = [item.module] if item.module else list(item.names)
                for name in names:
                    local = _local(name, [base])
                    if local is not None:
                        queue.append((local, version_dir))
                continue
            top = item.module.split(".")[0]
            local = _local(item.module, roots) or _local(top, roots)
            if local is not None:
                queue.append((local, version_dir))
                for name in item.names:   # from pkg import submodule
                    sub = _local(f"{item.module}.{name}", roots)
                    if sub is not None:
                        queue.append((sub, version_dir))
                continue
            if item.optional or top in available and top not in notes:
                continue
            if top in notes and not item.optional:
                found.append(Problem(model.name, path, item.line, top, notes[top]))
            elif top not in available:
                found.append(Problem(model.name, path, item.line, top))
    return found


def check(repository: Repository, python: str = "3.10",
          where: str = "the Triton image") -> dict[str, Environment]:
    """Refuse, before any cloud call, a Python model that imports what ``where`` lacks.

    Every Python-backend model (the shim's are not: their own backend serves them in the cloud)
    gets its ``EXECUTION_ENV_PATH`` checked (:func:`execution_env`) and each non-optional
    import of its model files, and of the files of its own folder they import, looked up in
    the image's standard library (Python ``python``), the image's packages (or, with an
    environment, that environment's), the Python backend's modules and the model folder.

    Returns the checked environments by model. Raises ValidationError naming the model,
    file:line, the module and the fix (its ``details`` list every other problem found).
    """
    image = Image(python, where)
    parse_python(python)
    envs: dict[str, Environment] = {}
    found: list[tuple[Problem, Environment | None]] = []
    for model in python_models(repository):
        env = execution_env(model, image)
        if env is not None:
            envs[model.name] = env
        found += [(p, env) for p in problems(model, image, env)]
    if found:
        first, env = found[0]
        hint = FIX if not first.note else f"use what Python {python} has instead, or {FIX}"
        others = [f"{p.path}:{p.line}: {p.message(image, e)}" for p, e in found[1:]]
        raise ValidationError(first.message(image, env), path=str(first.path),
                              line=first.line, hint=hint,
                              details="\n".join(others) if others else None)
    return envs


def rehearsal_server(repository: Repository, server, image: Image,
                     progress: Callable[[str], None] = lambda _: None):
    """The server a twin serves ``repository`` with: ``server``, or, when a model's
    ``EXECUTION_ENV_PATH`` environment has another Python than that managed runtime, the
    managed runtime made with the environment's Python (the Python backend runs the stub inside
    the environment: their Pythons must match, as in the cloud). A model with its own
    ``triton_python_backend_stub`` is left to it. ValidationError when no such runtime exists,
    or when the environments need different Pythons. ``server`` None (no runtime yet) or not
    the managed runtime (its Python is unknown): returned as it is."""
    from . import runtime

    current = ".".join((getattr(server, "python", "") or "").split(".")[:2])
    if server is None or server.source != "managed" or not current:
        return server
    needs: dict[str, list[str]] = {}
    for model in python_models(repository):
        env = execution_env(model, image)
        if env is not None and not (model.path / "triton_python_backend_stub").is_file():
            needs.setdefault(env.python, []).append(model.name)
    if not needs or set(needs) == {current}:
        return server
    if len(needs) > 1:
        raise ValidationError(
            "the models' EXECUTION_ENV_PATH environments need different Pythons ("
            + "; ".join(f"{p}: {', '.join(m)}" for p, m in sorted(needs.items()))
            + "): one tritonserver cannot run them all", hint="rehearse them apart")
    (python, models), = needs.items()
    other = runtime.managed_server(runtime.runtime_dir(python))
    if other is None:
        raise ValidationError(
            f"model {models[0]!r}: its EXECUTION_ENV_PATH environment holds Python {python}, the "
            f"embedded runtime runs Python {current}: the rehearsal needs a runtime made with "
            f"Python {python}",
            hint=f"create one: 'deployer server install --python python{python}'")
    progress(f"serving with the Python {python} runtime ({other.root}): the "
             f"EXECUTION_ENV_PATH environment of {', '.join(models)} needs it")
    return other


# -- the twins' guard ------------------------------------------------------------------------

GUARD_FOLDER = "python-image-guard"
GUARD_FILE = "deployer_image_guard.json"


def guard(server, roots: Iterable[Path | str], image: Image, work_dir: Path,
          progress: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """The environment additions that make a twin's ``tritonserver`` serve Python models with
    only what ``image`` has: pass them to ``server.process_env(extra)``.

    In every Python backend stub the server starts, an import finder then refuses a top-level
    import, made by a file of a Python model under one of ``roots`` (folders that hold the
    model folders the server loads, at any depth: the served repository, or the folder a
    multi-model endpoint unpacks its archives into), of a module the image lacks: a
    ModuleNotFoundError that names the image and the fix. Imports made by the packages
    themselves (numpy's own, the standard library's), by the shim's generated model.py, and
    probes (``importlib.util.find_spec``, which still see the runtime's packages) pass. A
    model with an ``EXECUTION_ENV_PATH`` runs in that environment's Python, where the guard
    does not load: it sees the environment's packages only, as in the cloud.

    How: the stub's embedded Python ignores ``PYTHONPATH`` but finds its prefix through the
    first ``python3`` on ``PATH`` (the managed runtime puts its ``bin/`` first). The guard is a
    virtual environment over the same interpreter, written to
    ``work_dir/python-image-guard-<digest of its settings>``,
    whose site-packages adds the runtime's (a .pth file) and holds the finder's
    ``sitecustomize.py``; its ``bin/`` goes first on ``PATH``. Only the managed runtime is
    guarded: for another ``tritonserver`` (``server.root`` unset) this says so through
    ``progress`` and returns {}.
    """
    if server.root is None or not server.interpreter:
        progress(f"note: {server.executable} is not the managed runtime: its Python models may "
                 f"import what its Python has, not only what {image.describe()} has")
        return {}
    std, notes = stdlib(image.python)
    interpreter = os.path.realpath(server.interpreter)
    runtime_site = sorted(Path(server.root).glob("lib/python3*/site-packages"))
    settings = {
        "roots": sorted({str(Path(r).absolute()) for r in roots}
                        | {os.path.realpath(r) for r in roots}),
        "stdlib": sorted(std), "packages": sorted(IMAGE_PACKAGES | BACKEND_MODULES),
        "backend": sorted(BACKEND_MODULES), "notes": notes, "image": image.describe(),
        "python": image.python, "fix": FIX, "shim": SHIM_PARAMETER,
    }
    # one folder per settings: servers that share a work folder never change each other's
    digest = hashlib.sha256(json.dumps([settings, interpreter, [str(p) for p in runtime_site]],
                                       sort_keys=True).encode()).hexdigest()[:12]
    folder = work_dir / f"{GUARD_FOLDER}-{digest}"
    minor = ".".join(server.python.split(".")[:2])
    site = folder / "lib" / f"python{minor}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    (folder / "bin").mkdir(exist_ok=True)
    # each file replaced whole: a server already running from this folder never sees a gap
    for name in ("python", "python3", f"python{minor}"):
        _replace_link(folder / "bin" / name, interpreter)
    _replace(folder / "pyvenv.cfg",
             f"home = {os.path.dirname(interpreter)}\ninclude-system-site-packages = false\n"
             f"version = {server.python}\n")
    _replace(site / "deployer-runtime.pth",
             "".join(f"import site; site.addsitedir({str(p)!r})\n" for p in runtime_site))
    _replace(site / GUARD_FILE, json.dumps(settings, indent=1))
    _replace(site / "sitecustomize.py", SITECUSTOMIZE)
    path = server.process_env().get("PATH", "")
    return {"PATH": str(folder / "bin") + (os.pathsep + path if path else "")}


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _replace_link(path: Path, target: str) -> None:
    if os.path.islink(path) and os.readlink(path) == target:
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)


#: loaded by every Python the guarded server starts (the stub's: from the guard's site-packages)
SITECUSTOMIZE = r'''"""Written by triton-deployer (deployer/pyimports.py): this Triton serves
Python models with only what the cloud's image has. Not part of the user's repository."""

import json
import os
import sys


def _install():
    from importlib.machinery import PathFinder

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "deployer_image_guard.json")) as handle:
        settings = json.load(handle)
    roots = [r.rstrip(os.sep) + os.sep for r in settings["roots"]]
    stdlib, packages = frozenset(settings["stdlib"]), frozenset(settings["packages"])
    backend, notes = frozenset(settings["backend"]), settings["notes"]
    shim = {}

    def model_dir(filename):
        """The model folder of a file under a root (its nearest folder with a config.pbtxt),
        or None; None for the shim's generated models too."""
        for candidate in (filename, os.path.realpath(filename)):
            for root in roots:
                if not candidate.startswith(root):
                    continue
                folder = os.path.dirname(candidate)
                while len(folder) >= len(root) and folder not in shim:
                    try:
                        with open(os.path.join(folder, "config.pbtxt")) as config:
                            shim[folder] = settings["shim"] in config.read()
                    except OSError:
                        folder = os.path.dirname(folder)
                if folder in shim:
                    return None if shim[folder] else folder
        return None

    def importer():
        """(the file of the frame that imports, whether it is a real import)."""
        try:
            frame, real = sys._getframe(2), False
        except ValueError:
            return None, False
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith("<frozen importlib") or name == __file__ or name.endswith(
                    os.path.join("importlib", "__init__.py")):
                real = real or frame.f_code.co_name in ("_find_and_load",
                                                        "_find_and_load_unlocked")
                frame = frame.f_back
                continue
            return name, real
        return None, real

    def under(path, folder):
        return bool(path) and (path + os.sep).startswith(folder.rstrip(os.sep) + os.sep)

    class ImageGuard:
        """Refuses what the image lacks, for imports made by a model's own files."""

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if path is not None or "." in fullname:
                return None
            filename, real = importer()
            if not filename or not real:
                return None
            folder = model_dir(filename)
            if folder is None:
                return None
            if fullname in notes:
                why = notes[fullname]
            elif fullname in stdlib or fullname in backend:
                return None
            else:
                why = ""
                spec = PathFinder.find_spec(fullname)
                if spec is None:
                    return None   # not here either: Python's own ModuleNotFoundError
                places = list(spec.submodule_search_locations or []) + [spec.origin or ""]
                if any(under(p, folder) or under(os.path.realpath(p), folder) for p in places):
                    return None
                if fullname in packages:
                    return None
            detail = f" ({why})" if why else ""
            raise ModuleNotFoundError(
                f"No module named {fullname!r} in {settings['image']}{detail}: "
                f"{os.path.relpath(filename, os.path.dirname(folder))} imports it; "
                f"{settings['fix']} (this rehearsal serves with only what the image has)",
                name=fullname)

    sys.meta_path.insert(0, ImageGuard)


_install()
del _install
'''
