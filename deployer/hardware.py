"""One hardware vocabulary for every cloud target (``-o gpu=T4``, ``gpu=A100:2``, ``gpu=cpu``).

The data is ``hardware.json`` beside this module: per cloud, per accelerator, that cloud's
instance types smallest first, each with its GPU count and the target options it sets. A
target that takes ``gpu`` names its column with ``Target.hardware``; the core turns the option
into those target options before the target sees them (``instance_type`` given by hand wins).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from typing import Any, Callable, Mapping

from .errors import UsageError, ValidationError

#: how messages name each cloud column
CLOUD_NAMES = {"sagemaker": "SageMaker", "azure": "Azure ML", "vertex": "Vertex AI"}


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, Any]:
    """The parsed ``hardware.json``."""
    return json.loads(resources.files("deployer").joinpath("hardware.json").read_text())


def accelerators() -> list[str]:
    """The accelerator names, in the order used for "nearest" (cpu, then by capability)."""
    return list(vocabulary()["accelerators"])


@dataclasses.dataclass(frozen=True)
class Choice:
    """One cloud's instance type for an accelerator request."""

    cloud: str
    #: the accelerator asked for ("T4", "cpu") and the count asked for
    accelerator: str
    count: int
    #: the instance type's name, the GPUs it has, and the target options it sets
    name: str
    gpus: int
    options: Mapping[str, Any]

    @property
    def label(self) -> str:
        """``T4`` or ``A100:2``, as the user would write it."""
        return _label(self.accelerator, self.count)


def _label(accelerator: str, count: int) -> str:
    return accelerator if count <= 1 else f"{accelerator}:{count}"


def label(text: str) -> str:
    """``"a100:2"`` → ``"A100:2"``, ``"t4:1"`` → ``"T4"``: a request as the vocabulary spells
    it (a UsageError for anything else, as :func:`parse`)."""
    return _label(*parse(text))


def parse(text: str) -> tuple[str, int]:
    """``"a100:2"`` → ``("A100", 2)``; a UsageError (one line) for anything else."""
    names = {name.lower(): name for name in accelerators()}
    kind, sep, count = str(text).strip().partition(":")
    name = names.get(kind.strip().lower())
    if name is None:
        raise UsageError(f"gpu {text!r} is not one of {', '.join(accelerators())}",
                         hint="pass e.g. -o gpu=T4, -o gpu=A100:2 or -o gpu=cpu")
    if not sep:
        return name, 1
    if name == "cpu":
        raise UsageError(f"gpu {text!r}: cpu takes no count", hint="pass -o gpu=cpu")
    try:
        number = int(count)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"gpu {text!r}: the count after ':' must be a whole number >= 1",
                         hint=f"pass e.g. -o gpu={name}:2")
    return name, number


def types(cloud: str) -> dict[str, list[dict[str, Any]]]:
    """Accelerator → that cloud's instance types (smallest first)."""
    try:
        return vocabulary()["clouds"][cloud]["types"]
    except KeyError:
        raise UsageError(f"no hardware vocabulary for {cloud!r}") from None


def option_names(cloud: str) -> set[str]:
    """The target options a choice on ``cloud`` sets (e.g. ``instance_type``)."""
    return {key for entries in types(cloud).values() for entry in entries
            for key in entry["options"]}


def nearest(cloud: str, accelerator: str, count: int,
            allowed: Callable[[Mapping[str, Any]], bool]) -> tuple[str, dict] | None:
    """The accelerator closest to ``accelerator`` in the vocabulary's order that ``cloud`` has
    (with an allowed type of at least ``count`` GPUs, else its largest allowed), the smaller one
    on a tie; None when it has nothing allowed."""
    order = accelerators()
    here = order.index(accelerator)
    found = []
    for name, entries in types(cloud).items():
        usable = [e for e in entries if allowed(e)]
        if name == accelerator or not usable:
            continue
        fits = [e for e in usable if e["gpus"] >= count] or usable[-1:]
        found.append((abs(order.index(name) - here), order.index(name), name, fits[0]))
    if not found:
        return None
    _, _, name, entry = min(found)
    return name, entry


def choose(cloud: str, text: str, *, allowed: Callable[[Mapping[str, Any]], bool] | None = None,
           why_not: str = "") -> Choice:
    """The smallest instance type on ``cloud`` with at least the asked count of the asked
    accelerator, among the types ``allowed`` accepts (a region's offer, a cloud rule);
    ``why_not`` says, in the message, what ``allowed`` stands for (e.g. "in us-west-1").
    Raises a ValidationError (one line, naming the nearest the cloud has) when there is none."""
    accelerator, count = parse(text)
    allowed = allowed or (lambda entry: True)
    who = CLOUD_NAMES.get(cloud, cloud)
    entries = types(cloud).get(accelerator, [])
    usable = [e for e in entries if allowed(e)]
    fitting = [e for e in usable if e["gpus"] >= count or accelerator == "cpu"]
    if fitting:
        entry = fitting[0]
        return Choice(cloud=cloud, accelerator=accelerator, count=count, name=entry["name"],
                      gpus=entry["gpus"], options=dict(entry["options"]))
    what = "CPU instance" if accelerator == "cpu" else f"{accelerator} instance"
    explicit = ("-o machine_type=TYPE" if "machine_type" in option_names(cloud)
                else "-o instance_type=TYPE")
    if usable:   # the accelerator is there, not that many of it
        most = usable[-1]
        raise ValidationError(
            f"{who} has no instance with {count} {accelerator} GPUs{why_not} (at most "
            f"{most['gpus']}: {most['name']})",
            hint=f"pass -o gpu={accelerator}:{most['gpus']}, or -o gpu={accelerator}")
    near = nearest(cloud, accelerator, count, allowed)
    if near is None:
        raise ValidationError(f"{who} has no {what}{why_not}, nor any other of "
                              f"{', '.join(accelerators())}",
                              hint=f"pass {explicit}, or another region")
    name, entry = near
    label = name if entry["gpus"] <= 1 or name == "cpu" else f"{name}:{entry['gpus']}"
    raise ValidationError(
        f"{who} has no {what}{why_not}; the nearest it has: {name} ({entry['name']})",
        hint=f"pass -o gpu={label}, or {explicit}")


def table(prices: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per accelerator, per cloud: every instance type with its GPUs and list price
    (``prices`` is :func:`deployer.compare.price_table`'s; each part of a type is priced)."""
    rows = []
    for accelerator, about in vocabulary()["accelerators"].items():
        row: dict[str, Any] = {"accelerator": accelerator, "about": about, "clouds": {}}
        for cloud in vocabulary()["clouds"]:
            row["clouds"][cloud] = [
                {"name": e["name"], "gpus": e["gpus"], "options": e["options"],
                 **price_of(e["options"], prices)}
                for e in types(cloud).get(accelerator, [])]
        rows.append(row)
    return rows


def parts(options: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The priced parts of one instance type: the type, and a Vertex machine's GPUs apart."""
    parts = [(options.get("instance_type") or options.get("machine_type"), 1)]
    accelerator = options.get("accelerator_type")
    if options.get("machine_type") and accelerator and accelerator != "none":
        parts.append((accelerator, int(options.get("accelerator_count") or 1)))
    return parts


def price_of(options: Mapping[str, Any], prices: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"usd_per_hour": X, "sources": [...]}`` for one instance type's options: the machine
    and, where priced apart (Vertex), its accelerators; None when a part has no price."""
    if prices is None:
        return {}
    total, sources, missing = 0.0, [], []
    for kind, count in parts(options):
        entry = prices["prices"].get(str(kind).lower())
        if entry is None:
            missing.append(kind)
            continue
        total += entry["usd_per_hour"] * count
        sources.append(entry["source"])
    return {"usd_per_hour": None if missing else round(total, 4), "missing": missing,
            "sources": sources}


def offered(cloud: str, region: str | None) -> tuple[Callable[[Mapping[str, Any]], bool], str]:
    """Which of ``cloud``'s types ``region`` offers, by the cloud's own price list fetched with
    ``deployer prices refresh`` for that region (a type it lists no price for is not offered
    there), and the words that say so in a message. Without such a list, every type passes."""
    if not region:
        return (lambda entry: True), ""
    from . import pricing

    found = pricing.unlisted(cloud, region)
    if found is None:
        return (lambda entry: True), ""
    missing, source = found

    def allowed(entry: Mapping[str, Any]) -> bool:
        return not any(str(kind).lower() in missing for kind, _ in parts(entry["options"]))

    return allowed, f" in {region} (per {source})"
