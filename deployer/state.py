"""The record of what each deployment created, kept on disk.

One JSON file per deployment under ``<state dir>/deployments/``, replaced atomically on every
write; reserving a name happens under an exclusive lock, so two CLI runs cannot take the same one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import AlreadyDeployed, NotFound, UsageError

STATE_DIR_ENV = "DEPLOYER_STATE_DIR"
#: in a deployment's work folder: its id, target and (public) options, written once when the
#: name is reserved
IDENTITY = "deployment.json"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def default_state_dir() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "triton-deployer"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class Resource:
    """One thing a target created: ``kind`` (e.g. ``process``), ``id`` and what deleting it needs.

    ``status`` is ``creating`` (recorded, may or may not exist yet), ``created`` or ``deleted``.
    """

    kind: str
    id: str
    status: str = "creating"
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Deployment:
    """A deployment as stored: enough to test it, show it and tear it down."""

    name: str
    target: str
    repository: str
    models: list[str]
    options: dict[str, Any]
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    #: deploying | ready | failed | tearing-down
    status: str = "deploying"
    resources: list[Resource] = dataclasses.field(default_factory=list)
    endpoint: dict[str, Any] = dataclasses.field(default_factory=dict)
    created_at: str = dataclasses.field(default_factory=now)
    deploy_seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["resources"] = [Resource(**r) for r in data.get("resources", [])]
        return cls(**values)


class CorruptRecord(UsageError):
    """A deployment's record exists but cannot be read. ``salvaged`` holds what could still be
    read of it (``id``, ``target``, ``options``), from the file or the deployment's work
    folder."""

    def __init__(self, name: str, path: Path, reason: str, salvaged: dict[str, str]):
        super().__init__(f"the record of {name!r} ({path}) is corrupt: {reason}",
                         hint=f"run 'deployer teardown {name}': it removes what the "
                              "deployment's tags lead to")
        self.name, self.reason, self.salvaged = name, reason, salvaged


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid deployment name {name!r}",
            hint="use 1-63 lowercase letters, digits and dashes, starting and ending with a "
                 "letter or digit")
    return name


def name_from(text: str) -> str:
    """A valid deployment name derived from free text (a folder name, say)."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (cleaned or "model")[:63].rstrip("-")


class StateStore:
    """Deployments on disk. Safe for several processes: locked reservations, atomic writes."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_state_dir()
        self._dir = self.root / "deployments"

    def _path(self, name: str) -> Path:
        return self._dir / f"{name}.json"

    def work_dir(self, name: str) -> Path:
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / "state.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def reserve(self, deployment: Deployment) -> None:
        """Store a new deployment; refuse a name already in use."""
        with self._lock():
            if self._path(deployment.name).exists():
                try:
                    existing = self.load(deployment.name)
                    what = f"target {existing.target}, status {existing.status}"
                except CorruptRecord:
                    what = "its record is corrupt"
                raise AlreadyDeployed(
                    f"a deployment named {deployment.name!r} already exists ({what})",
                    hint=f"run 'deployer teardown {deployment.name}' or pass another --name")
            # a second trace of who this is, for when the record itself is damaged
            (self.work_dir(deployment.name) / IDENTITY).write_text(json.dumps(
                {"id": deployment.id, "target": deployment.target,
                 "options": deployment.options}, default=str))
            self._write(deployment)

    def save(self, deployment: Deployment) -> None:
        self._write(deployment)

    def _write(self, deployment: Deployment) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{deployment.name}.", dir=self._dir)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(deployment.to_dict(), handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(deployment.name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def load(self, name: str) -> Deployment:
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no deployment named {name!r} in {self.root}",
                           hint="'deployer list' shows the deployments") from None
        try:
            return Deployment.from_dict(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptRecord(name, path, reason, self._salvage(name, raw)) from None

    def _salvage(self, name: str, raw: bytes) -> dict[str, str]:
        found: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            found.update(json.loads((self.root / "work" / name / IDENTITY).read_text()))
        text = raw.decode("utf-8", "replace")
        for key in ("id", "target"):
            match = re.search(rf'"{key}":\s*"([^"]+)"', text)
            if match and key not in found:
                found[key] = match.group(1)
        return found

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self) -> list[Deployment]:
        """Every recorded deployment; an unreadable record is listed with status ``corrupt``
        and what to do in ``error``."""
        if not self._dir.is_dir():
            return []
        found = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                found.append(self.load(path.stem))
            except NotFound:
                continue  # removed meanwhile
            except CorruptRecord as exc:
                found.append(Deployment(
                    name=path.stem, target=exc.salvaged.get("target", "?"), repository="",
                    models=[], options=exc.salvaged.get("options", {}),
                    id=exc.salvaged.get("id", ""), status="corrupt",
                    error=str(exc)))
        return found

    def forget(self, name: str) -> None:
        """Drop a deployment's record and work folder (after a verified teardown)."""
        with self._lock():
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()
            shutil.rmtree(self.root / "work" / name, ignore_errors=True)
