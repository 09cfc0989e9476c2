"""Loading targets: every plugin, built-in or not, comes through the ``deployer.targets``
entry-point group and the ``deployer_register_targets`` hook."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import UsageError
from .target import GPU, SCALING, Options, Target

ENTRY_POINT_GROUP = "deployer.targets"
DISABLE_ENV = "DEPLOYER_DISABLE_PLUGINS"


@dataclasses.dataclass
class Registry:
    """The installed targets, and the plugins that could not be loaded (name → reason)."""

    pm: pluggy.PluginManager
    targets: dict[str, type[Target]]
    broken: dict[str, str]

    def get(self, name: str) -> type[Target]:
        if name in self.targets:
            return self.targets[name]
        if name in self.broken:
            raise UsageError(f"target {name!r} could not be loaded: {self.broken[name]}")
        raise UsageError(f"unknown target {name!r}; installed targets: "
                         f"{', '.join(sorted(self.targets)) or 'none'}",
                         hint="'deployer targets' lists them")

    def create(self, name: str, raw_options: Mapping[str, Any], progress) -> Target:
        """Instantiate target ``name`` with options validated against its declaration."""
        cls = self.get(name)
        reason = cls.unavailable_reason()
        if reason:
            from .errors import Unavailable

            raise Unavailable(f"target {name!r} is unavailable: {reason}")
        return cls(parse_options(cls, raw_options), progress)


def parse_options(cls: type[Target], raw: Mapping[str, Any]) -> Options:
    declared = {opt.name: opt for opt in cls.options}
    unknown = [key for key in raw if key not in declared]
    scaling = [key for key in unknown if key in {opt.name for opt in SCALING}]
    if scaling:
        raise UsageError(
            f"target {cls.name!r} runs one instance and does not scale: "
            f"{', '.join(repr(k) for k in scaling)} is for the cloud targets",
            hint=f"drop -o {scaling[0]}, or deploy to sagemaker, azure or vertex")
    if GPU.name in unknown:
        raise UsageError(f"target {cls.name!r} runs on this machine's own hardware: 'gpu' is "
                         "for the cloud targets", hint="drop -o gpu, or deploy to sagemaker, "
                         "azure or vertex")
    if unknown:
        raise UsageError(
            f"target {cls.name!r} has no option {', '.join(repr(k) for k in unknown)}; "
            f"its options: {', '.join(declared) or 'none'}",
            hint=f"'deployer targets {cls.name}' describes them")
    values = {name: opt.parse(raw[name]) if name in raw else opt.default
              for name, opt in declared.items()}
    if values.get(GPU.name) is not None and cls.hardware:
        from . import hardware

        if not hardware.option_names(cls.hardware) & set(raw):   # instance_type given wins
            choice = cls.choose_hardware(values[GPU.name], Options(values))
            values.update({name: declared[name].parse(value)
                           for name, value in choice.options.items()})
            values[GPU.name] = choice.label
    return Options(values)


def _disabled(extra: Iterable[str]) -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | set(extra)


def load(plugins: Iterable[object] = (), *, entry_points: bool = True,
         disabled: Iterable[str] = ()) -> Registry:
    """Build a plugin manager: entry-point plugins (unless ``entry_points`` is False) plus
    ``plugins`` (modules or objects with hook implementations, e.g. in tests)."""
    pm = pluggy.PluginManager("deployer")
    pm.add_hookspecs(hookspecs)
    broken: dict[str, str] = {}
    blocked = _disabled(disabled)
    if entry_points:
        from importlib.metadata import entry_points as find

        for ep in find(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    targets: dict[str, type[Target]] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.deployer_register_targets.get_hookimpls():
        for cls in impl.function() or ():
            if not (isinstance(cls, type) and issubclass(cls, Target) and cls.name):
                raise UsageError(f"plugin {impl.plugin_name!r} registered {cls!r}, which is not "
                                 "a named Target subclass")
            if cls.name in blocked:
                continue
            if cls.name in targets and targets[cls.name] is not cls:
                raise UsageError(f"target {cls.name!r} is provided by both plugin "
                                 f"{owners[cls.name]!r} and {impl.plugin_name!r}",
                                 hint=f"disable one with {DISABLE_ENV}=NAME")
            targets[cls.name] = cls
            owners[cls.name] = impl.plugin_name
    return Registry(pm=pm, targets=dict(sorted(targets.items())), broken=broken)
