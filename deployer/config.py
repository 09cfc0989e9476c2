"""Config files: a deployment's target, name and options in TOML (or JSON if it ends in .json).

::

    target = "local"
    name = "add-sub"
    [options]
    startup_timeout = 60

:func:`load` reads one; every ``Deployer`` command that takes a target accepts it as
``config=path`` and :func:`resolve` merges it with explicit arguments, explicit winning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError

KEYS = ("target", "name", "options")


@dataclasses.dataclass(frozen=True)
class Config:
    """What a config file says; a key the file leaves out is None (options: empty)."""

    target: str | None = None
    name: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load(path: str | os.PathLike) -> Config:
    """Read a config file. Raises UsageError (exit 2, one line) when it cannot be read or
    parsed, or has keys other than target, name and options."""
    shown, path = os.fspath(path), Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read config file {shown}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except ValueError as exc:
        raise UsageError(f"{shown}: {exc}",
                         hint="the config file is TOML (or JSON if it ends in .json)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{shown}: expected a table of target, name and options")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise UsageError(f"{shown}: unknown key(s) {', '.join(sorted(unknown))}",
                         hint="allowed: target, name, options")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise UsageError(f"{shown}: options must be a table of KEY = VALUE",
                         hint='e.g. [options] then http_port = 8000')
    for key in ("target", "name"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UsageError(f"{shown}: {key} must be a string, got {data[key]!r}")
    return Config(target=data.get("target"), name=data.get("name"), options=dict(options))


def resolve(config: str | os.PathLike | Config | None, target: str | None, name: str | None,
            options: Mapping[str, Any] | None) -> tuple[str | None, str | None, dict[str, Any]]:
    """Explicit ``target``, ``name`` and ``options`` over the config file's (a path is read
    with :func:`load`); an option given both ways takes the explicit value."""
    if config is None:
        return target, name, dict(options or {})
    if not isinstance(config, Config):
        config = load(config)
    return (target or config.target, name or config.name,
            {**config.options, **(options or {})})
