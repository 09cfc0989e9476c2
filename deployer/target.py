"""The contract between the core and a target. These docstrings are the spec.

A plugin provides :class:`Target` subclasses through the ``deployer_register_targets`` hook
(see :mod:`deployer.hookspecs`). The core instantiates them with validated options and owns the
order: ``validate`` → ``plan`` → ``deploy`` → (test step through ``client``) → teardown, where
teardown walks the recorded resources newest first and calls ``delete`` then ``exists`` on each.
A target never decides that order, never writes state itself and never prints to stdout.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

from .errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from .client import EndpointClient
    from .hardware import Choice
    from .repository import Repository
    from .state import Deployment, Resource


@dataclasses.dataclass(frozen=True)
class Option:
    """One typed, documented target option, set with ``-o name=value`` or ``--config FILE``.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool`` or ``list`` (of strings, given
    comma-separated on the command line). ``choices`` restricts the value. ``secret`` options are
    never written to state or printed.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    secret: bool = False

    def parse(self, raw: Any) -> Any:
        """Convert a raw value (a string from the command line, or a config file value)."""
        if raw is None:
            return None
        try:
            if self.type is bool:
                value = raw if isinstance(raw, bool) else _parse_bool(str(raw))
            elif self.type is list:
                value = list(raw) if isinstance(raw, (list, tuple)) else [
                    part.strip() for part in str(raw).split(",") if part.strip()]
            elif self.type is int and isinstance(raw, float):
                raise ValueError
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise UsageError(
                f"option {self.name!r} expects {self.type.__name__}, got {raw!r}",
                hint=f"{self.name}: {self.help}") from None
        if self.choices and value not in self.choices:
            raise UsageError(f"option {self.name!r} must be one of {', '.join(self.choices)}; "
                             f"got {value!r}")
        return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


class Options(Mapping[str, Any]):
    """A target's option values, read as attributes (``self.settings.http_port``) or by key."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


#: The autoscaling options every cloud target declares (add them to ``options``) and maps to
#: its own mechanism; read them with :func:`scaling`. A target that runs one instance does not
#: declare them, and the core refuses them for it in one line.
SCALING: tuple[Option, ...] = (
    Option("min_instances", int, None, "autoscaling: instances always running (default: "
           "instance_count)"),
    Option("max_instances", int, None, "autoscaling: instances the cloud may scale out to "
           "(default: min_instances, no scaling)"),
    Option("target_requests_per_minute", int, None, "autoscaling: requests per minute per "
           "instance the cloud adds or removes instances to hold (needed when max > min)"),
    Option("scale_in_cooldown", int, None, "autoscaling: seconds after a scale-in before "
           "the next one (default: the cloud's)"),
    Option("scale_out_cooldown", int, None, "autoscaling: seconds after a scale-out before "
           "the next one (default: the cloud's)"),
)


#: The hardware option every cloud target declares (add it to ``options`` and set
#: ``Target.hardware``): an accelerator of :mod:`deployer.hardware`'s vocabulary, optionally with
#: a count. The core turns it into the target's own options (:meth:`Target.choose_hardware`)
#: unless one of those was given; a target that runs here does not declare it and the core
#: refuses it for that target in one line.
GPU = Option("gpu", str, None, "hardware: ACCELERATOR[:COUNT], one of cpu, T4, L4, A10G, A10, "
             "A100, H100; picks this cloud's smallest instance type with at least COUNT of it "
             "(an explicit instance type wins; 'deployer targets --gpus' lists them)")


@dataclasses.dataclass(frozen=True)
class Scaling:
    """A fleet's validated scaling range and target, from the :data:`SCALING` options."""

    #: instances always running, and the most the cloud may run
    minimum: int
    maximum: int
    #: instances the deploy starts with (``instance_count`` raised to ``minimum``)
    initial: int
    #: requests per minute per instance to hold; None when the fleet does not scale
    target_requests_per_minute: int | None
    scale_in_cooldown: int | None = None
    scale_out_cooldown: int | None = None

    @property
    def scales(self) -> bool:
        """Whether the cloud is asked to scale (a range, or a target to hold)."""
        return self.maximum > self.minimum or self.target_requests_per_minute is not None


def scaling(settings: Mapping[str, Any], *, instance_count: int = 1) -> Scaling | None:
    """The :data:`SCALING` options in ``settings`` checked against each other, or None when
    none is set. ``instance_count`` is the target's own initial count. Raises ``UsageError``
    (one line) for: a count below 1 (a cloud's scale-to-zero rule is the target's to allow:
    pass ``min_instances=0`` only where it checks it), min above max, a count the range
    excludes, a target that is not positive, a range with no target, negative cooldowns.
    """
    names = [opt.name for opt in SCALING]
    if all(settings.get(name) is None for name in names):
        return None
    low, high = settings.get("min_instances"), settings.get("max_instances")
    target = settings.get("target_requests_per_minute")
    if low is not None and low < 0:
        raise UsageError(f"min_instances must be 0 or more, got {low}")
    minimum = instance_count if low is None else low
    maximum = max(minimum, instance_count) if high is None else high
    if maximum < 1:
        raise UsageError(f"max_instances must be at least 1, got {maximum}")
    if minimum > maximum and low is not None:
        raise UsageError(f"min_instances {minimum} is above max_instances {maximum}",
                         hint="set min_instances <= max_instances")
    if instance_count > maximum:
        raise UsageError(f"instance_count {instance_count} is above max_instances {maximum}",
                         hint="raise max_instances or lower instance_count")
    if target is not None and target <= 0:
        raise UsageError(f"target_requests_per_minute must be a positive number, got {target}")
    if maximum > minimum and target is None:
        raise UsageError(f"a range of {minimum} to {maximum} instances needs a target to scale "
                         "on", hint="add -o target_requests_per_minute=N (requests per minute "
                         "each instance should serve)")
    cooldowns = {name: settings.get(name) for name in ("scale_in_cooldown", "scale_out_cooldown")}
    for name, seconds in cooldowns.items():
        if seconds is not None and seconds < 0:
            raise UsageError(f"{name} must be 0 or more seconds, got {seconds}")
        if seconds is not None and target is None:
            raise UsageError(f"{name} needs target_requests_per_minute: without a target "
                             "nothing scales")
    return Scaling(minimum=minimum, maximum=maximum, initial=max(instance_count, minimum),
                   target_requests_per_minute=target, **cooldowns)


@dataclasses.dataclass(frozen=True)
class Fleet:
    """What a deployment runs on and may scale to (see :meth:`Target.fleet`)."""

    #: the scaling range (equal when the fleet does not scale)
    minimum: int
    maximum: int
    #: instances the cloud is scaling to now, and instances serving now; None when unknown
    desired: int | None
    current: int | None
    #: how it scales, in the cloud's words, e.g. "target tracking 600
    #: SageMakerVariantInvocationsPerInstance"; '' when it does not
    rule: str = ""


@dataclasses.dataclass(frozen=True)
class CloudTime:
    """What a cloud's own metrics say of the requests in a window (see
    :meth:`Target.cloud_time`). A figure the cloud has not published is absent, never 0."""

    #: the parts of a request's time in the cloud's endpoint, outside in, one per metric:
    #: disjoint means in milliseconds, named by the metric in snake case with the unit,
    #: e.g. ``{"overhead_latency_ms": 1.2, "model_latency_ms": 3.1}`` (the report stacks them)
    figures: dict[str, float]
    #: the client's latency the cloud accounts for, the sum of ``figures``: what ``compare``
    #: subtracts from the client's mean to get the time outside the endpoint; None when a
    #: part is missing
    endpoint_ms: float | None
    #: where the figures come from: service, metrics, statistic, dimensions, period
    source: str
    #: why figures are missing (e.g. "not yet published after 180 s"); '' when complete
    note: str = ""
    #: the requests the cloud counted in the window, when it says
    requests: int | None = None


def wait_for_metrics(read: Callable[[], Any], published: Callable[[Any], bool], *,
                     wait: float, progress: Callable[[float], None], poll: float = 15.0,
                     every: float = 30.0, clock: Callable[[], float] | None = None,
                     sleep: Callable[[float], None] | None = None) -> Any:
    """For :meth:`Target.cloud_time`: ``read()`` at once and every ``poll`` seconds until
    ``published(reading)`` or ``wait`` seconds have passed; returns the last reading.
    While it waits, ``progress(seconds_waited)`` at once and then at most every ``every``
    seconds. ``clock`` and ``sleep`` (default: the monotonic clock, ``time.sleep``) let a
    fake cloud run on a fake clock. Exceptions of ``read`` pass through."""
    import time

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    began = clock()
    spoke: float | None = None
    while True:
        found = read()
        waited = clock() - began
        if published(found) or waited >= wait:
            return found
        if spoke is None or waited - spoke >= every:
            spoke = waited
            progress(waited)
        sleep(max(0.0, min(poll, wait - waited)))


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """The limits an endpoint applies to requests (see :meth:`Target.request_limits`)."""

    #: requests in flight it serves at once; past it (after any queue wait) it answers 429
    concurrency: int | None
    #: milliseconds a request may take; past it it answers 408
    timeout_ms: int | None
    #: the settings these come from, in the cloud's words, e.g.
    #: "max_concurrent_requests_per_instance 4 x 2 instances"
    source: str


@dataclasses.dataclass
class PlannedResource:
    """Something ``deploy`` would create: its kind, the name it would get, and details."""

    kind: str
    name: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class DeployContext:
    """What the core hands to ``deploy`` and ``delete``.

    ``record`` must wrap every create step, so that the resource is in state *before* it is
    created and an interrupted deploy can be torn down. ``set_endpoint`` records how to reach
    what was deployed (no secrets). ``progress`` writes one line for people, on stderr.
    """

    def __init__(self, deployment: Deployment, save: Callable[[], None],
                 progress: Callable[[str], None], work_dir):
        self.deployment = deployment
        self._save = save
        self.progress = progress
        #: a folder of this deployment's own, under the state directory (logs, scratch)
        self.work_dir = work_dir

    def record(self, kind: str, name: str, /, **data: Any) -> Resource:
        """Record a resource as ``creating`` and persist it; call ``created`` once it exists."""
        from .state import Resource

        resource = Resource(kind=kind, id=name, status="creating", data=dict(data))
        self.deployment.resources.append(resource)
        self._save()
        return resource

    def update(self, resource: Resource, *, id: str | None = None, **data: Any) -> None:
        """Store what became known while creating (a pid, an ARN) and persist it."""
        if id is not None:
            resource.id = id
        resource.data.update(data)
        self._save()

    def created(self, resource: Resource, **data: Any) -> None:
        """Mark a recorded resource as existing, with any final data, and persist it."""
        resource.status = "created"
        self.update(resource, **data)

    def deleted(self, resource: Resource) -> None:
        """Mark a resource removed during an update (after ``Target.delete``) and persist."""
        resource.status = "deleted"
        self._save()

    def set_endpoint(self, **endpoint: Any) -> None:
        """Record how the client reaches the deployment (URL, ports, headers' names, no keys).

        One key has a meaning to the core: ``served_by``, ``{model: how}`` for the models the
        target serves through a stand-in rather than their own backend (what
        :func:`deployer.triton.serve_folder` returns); the test report, ``status`` and
        ``compare`` show it."""
        self.deployment.endpoint.update(endpoint)
        self._save()


class Target:
    """A place a repository can be deployed to. Subclass it and register the class.

    Class attributes a subclass sets:

    - ``name``: the ``--target`` name, unique among installed targets.
    - ``description``: one line for ``deployer targets``.
    - ``options``: a tuple of :class:`Option`; the core validates ``-o`` values against it.
    - ``requires``: importable module names the target needs (checked without importing them);
      ``install_hint`` says how to get them.
    - ``runs_here``: True when what the target deploys runs on this machine (it then competes
      with the load generator and with other such targets for CPU: ``compare`` measures it
      alone). Cloud targets set False.
    - ``twin``: for a cloud target, the name of the target that rehearses it locally (builds
      the same artefact and serves it the way that cloud's Triton container would); it must
      accept the same options. ``deployer rehearse REPO --target T`` runs T's twin.
    - ``hardware``: for a target that declares :data:`GPU`, its cloud's column in the hardware
      vocabulary (``"sagemaker"``, ``"azure"``, ``"vertex"``; see :mod:`deployer.hardware`).

    The core creates one instance per command with ``Target(settings, progress)``, where
    ``settings`` are the validated values of ``options`` (read ``self.settings.NAME``). Heavy SDKs
    must be imported inside methods, never at module import: the CLI loads every plugin.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Sequence[Option]] = ()
    requires: ClassVar[Sequence[str]] = ()
    install_hint: ClassVar[str] = ""
    twin: ClassVar[str | None] = None
    runs_here: ClassVar[bool] = True
    hardware: ClassVar[str | None] = None

    def __init__(self, settings: Options, progress: Callable[[str], None]):
        self.settings = settings
        self.progress = progress

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this target cannot run here, or None. Default: a module in ``requires`` is missing.

        Must be cheap: it runs for ``deployer targets``.
        """
        import importlib.util

        def importable(module: str) -> bool:
            # find_spec imports the parents: find_spec("azure.ai.ml") raises without azure
            try:
                return importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                return False

        missing = [m for m in cls.requires if not importable(m)]
        if missing:
            hint = f"; {cls.install_hint}" if cls.install_hint else ""
            return f"missing Python package(s): {', '.join(missing)}{hint}"
        return None

    @classmethod
    def choose_hardware(cls, gpu: str, settings: Options) -> Choice:
        """The instance type for ``-o gpu=...`` (its options become this target's settings).
        ``settings`` are the other options as given (with defaults). Called by the core only
        when ``gpu`` is given and none of the options a choice sets is. Raises a
        ValidationError naming the nearest accelerator the cloud has when it has none.
        Default: the smallest type in this target's ``hardware`` column. Override it to apply
        the cloud's rules (a region's offer, single-GPU types for a multi-model endpoint)
        through :func:`deployer.hardware.choose`'s ``allowed``.
        """
        from . import hardware

        return hardware.choose(cls.hardware or "", gpu)

    def validate(self, repository: Repository) -> None:
        """Check the target's own rules on the repository and options, with no side effect.

        Raise :class:`deployer.errors.ValidationError` (or ``UsageError``) with one line that
        says what to change. Generic repository rules are already checked by the core.
        """

    def plan(self, repository: Repository, name: str) -> list[PlannedResource]:
        """Return what ``deploy`` would create for deployment ``name``, in creation order.

        No side effects: it writes no file anywhere (the contract suite checks it) and
        creates nothing; put documents for people in :meth:`export`. Called after ``validate``.
        """
        raise NotImplementedError

    def export(self, repository: Repository, name: str, directory: Path) -> list[Path]:
        """Optional: write the documents that describe what ``plan`` shows for deployment
        ``name`` into ``directory`` (create it if missing), for people or other tools (e.g. the
        cloud's own CLI); return the files written. ``deployer plan REPO -t T --export DIR``
        calls it after ``validate``. It is the only place a target writes files before a
        deploy: ``plan`` itself never does. A target that does not override it has nothing to
        export (the core says so, exit 2).
        """
        raise NotImplementedError

    def deploy(self, repository: Repository, context: DeployContext) -> None:
        """Create everything and block until the deployment answers, or raise.

        Wrap each create step in ``context.record(...)`` (before) and ``context.created(...)``
        (after), and call ``context.set_endpoint(...)``. On failure raise
        :class:`deployer.errors.DeployFailed` with the cause and the last log lines; do not
        clean up: the core keeps the record so ``teardown`` removes what was created.
        """
        raise NotImplementedError

    def update(self, repository: Repository, context: DeployContext) -> None:
        """Replace what ``context.deployment`` serves with ``repository``; block until ready.

        Record new resources as ``deploy`` does; remove what the new version replaces with
        ``delete`` and then ``context.deleted(resource)``. Do it blue/green where the target
        can: if the update fails, the previous version must still be serving (the core keeps
        the deployment ready and records the error). Default: not supported.
        """
        from .errors import UsageError

        raise UsageError(f"target {self.name!r} cannot update a deployment in place",
                         hint="tear it down and deploy again")

    def client(self, deployment: Deployment) -> EndpointClient:
        """Return the :class:`deployer.client.EndpointClient` the test step uses."""
        raise NotImplementedError

    def delete(self, resource: Resource, deployment: Deployment) -> bool:
        """Remove one recorded resource. Return True if it was removed now, False if it was
        already gone. Must be idempotent and must handle a resource whose status is still
        ``creating`` (it may or may not exist). Raise ``TeardownIncomplete`` if it cannot."""
        raise NotImplementedError

    def exists(self, resource: Resource, deployment: Deployment) -> bool:
        """Whether the resource still exists; the core calls it after ``delete`` to verify."""
        raise NotImplementedError

    def logs(self, deployment: Deployment, lines: int = 100) -> str:
        """The last ``lines`` lines of the server's log, as text ('' when there are none)."""
        return ""

    def instances(self, deployment: Deployment) -> list[tuple[str, int]]:
        """What the deployment is billed for by the hour: ``[(instance_type, count)]``; for
        a fleet that scales, at its minimum (:meth:`fleet`).

        ``compare`` prices these from its price table, and notes the price at the fleet's
        maximum as this times ``maximum / minimum``. Default: nothing (runs here for free).
        """
        return []

    def fleet(self, deployment: Deployment) -> Fleet | None:
        """The deployment's scaling range and, asked of the cloud now, its desired and current
        instance counts (None where the cloud cannot say). ``status`` shows it and
        ``compare`` notes the price at ``maximum``. Default: None (one instance, no scaling).
        """
        return None

    def cloud_time(self, deployment: Deployment, start: float, end: float, *, wait: float,
                   progress: Callable[[str], None]) -> CloudTime | None:
        """The cloud's own latency metrics for the requests sent between ``start`` and
        ``end`` (Unix seconds): ``compare`` and the test step call it once after their load.

        Clouds publish such metrics late (a minute or more): poll until the window's figures
        are there or ``wait`` seconds have passed, calling ``progress`` at most every 30 s;
        then return what there is, with ``note`` saying what is missing. Errors of the
        metrics service become a ``note``, never an exception. Default: None (no cloud).
        """
        return None

    def request_limits(self, deployment: Deployment) -> RequestLimits | None:
        """What the endpoint accepts before it refuses a request on its own (a throttle of
        the cloud's, not an error of the model), or None when it sets no such limit.

        ``compare`` counts the refusals apart from other errors and warns before a load
        level whose concurrency is above ``concurrency``. Default: None.
        """
        return None

    def server_metrics(self, deployment: Deployment) -> str | None:
        """The URL of Triton's Prometheus metrics for this deployment
        (``http://HOST:PORT/metrics``), reachable from this machine, or None.

        The test step's load and each level of ``compare`` read Triton's counters there
        before and after the measured requests, to split the client's latency into queue,
        compute and the time outside the server (:mod:`deployer.servertime`). Default: the
        ``metrics`` the target recorded with ``context.set_endpoint(metrics=...)``.
        """
        return deployment.endpoint.get("metrics") or None

    @classmethod
    def orphans(cls, known: set[str]) -> list[dict[str, str]]:
        """What this target left running on this machine that no recorded deployment owns.

        ``known`` holds every tag recorded in state. Return ``[{"kind", "id", "tag",
        "remove"}]`` where ``remove`` tells people how to remove it by hand. Cheap and local
        only: ``deployer list`` calls it for every available target. Default: nothing.
        """
        return []

    def recover(self, name: str, deployment_id: str | None) -> list[Resource]:
        """What this target created for deployment ``name``, found by its tags alone.

        Teardown calls it when the deployment's record is unreadable (corrupt or lost):
        ``deployment_id`` is the id read from what is left of the record, or None when even
        that is gone (then match by the name tag). Return resources as ``deploy`` recorded
        them (kind, id, data), oldest first; the core then deletes them newest first with
        ``delete`` and verifies with ``exists``. Default: nothing can be recovered.
        """
        return []

    def models_served(self, repository: Repository) -> list[str]:
        """The model names the test step checks (default: every model in the repository)."""
        return list(repository.models)


class Rehearsal:
    """The class attributes of a twin: none of the cloud's SDKs, no twin of its own, runs
    here, bills nothing.

    A twin serves the cloud's exact artefact on this machine. Write it as a ``Target`` of its
    own that holds the same artefact and spec builders as its cloud target (the cloud uploads
    what they build, the twin serves it) — the built-in twins do, see
    ``deployer_plugins/sagemaker/twin.py``. Subclassing the cloud target and overriding most of
    it (``class MyTwin(Rehearsal, MyCloud)``) still works, but then a change to the cloud
    silently changes its twin; this mix-in is kept for such existing twins.
    """

    requires: ClassVar[Sequence[str]] = ()
    install_hint: ClassVar[str] = ""
    twin: ClassVar[str | None] = None
    runs_here: ClassVar[bool] = True

    def instances(self, deployment: Deployment) -> list[tuple[str, int]]:
        return []
