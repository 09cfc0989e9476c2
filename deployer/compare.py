"""``deployer compare``: the same repository, the same requests, every target, one table.

Per target: deploy (timed), cold start (from the deploy returning to the first successful
inference), the test step, the same load at each concurrency, logs on failure, and teardown
always — also when the target or another one fails, and on Ctrl-C. Targets that run on this
machine are deployed and measured one at a time (they would share the CPU with each other and
with the load generator); cloud targets deploy in parallel with everything else. Measurements
never overlap.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import hardware, samples, servertime
from .errors import DeployerError, Interrupted, UsageError
from .progress import Prefixed, counting
from .state import name_from
from .tester import TestOptions, check_rate, load_sender, per_request

if TYPE_CHECKING:
    from .api import Deployer


def price_table(overrides: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The prices compare uses, keys compared case-blind: per type, the price
    ``deployer prices refresh`` fetched into the cache when there is one, else the shipped
    table's; ``overrides`` (``--price``) win. Each entry's ``source`` says where it comes from
    (``source``, ``date``, ``region``, and ``label``: one line for a cost note). A corrupt or
    old cache is ignored with one warning (in ``warnings`` and in ``about``)."""
    from . import pricing

    table = pricing.shipped()
    prices = {}
    for name, entry in table["prices"].items():
        source = table["sources"][entry["cloud"]]
        prices[name.lower()] = {**entry, "instance_type": name, "source": {
            **source, "fetched": False,
            "label": f"shipped price table, {source['date']}, {source['region']}"}}
    cached, warning = pricing.read_cache()
    for name, entry in (cached or {}).get("prices", {}).items():
        source = {k: v for k, v in cached["sources"][entry["cloud"]].items() if k != "missing"}
        prices[name.lower()] = {**entry, "instance_type": name, "source": {
            **source, "fetched": True,
            "label": f"{source['source']}, fetched {source['date']}, {source['region']}"}}
    for key, usd in (overrides or {}).items():
        prices[key.lower()] = {"usd_per_hour": float(usd), "instance_type": key,
                               "source": {"source": "--price on the command line",
                                          "label": "--price on the command line"}}
    about = table["about"] + (f" Warning: {warning}." if warning else "")
    return {"about": about, "prices": prices, "warnings": [warning] if warning else []}


@dataclasses.dataclass
class TargetResult:
    #: the target's name, or ``TARGET@GPU`` when compare runs it at several accelerators
    target: str
    name: str
    #: the accelerator it ran at (``--gpu``: "T4", "A100:2"), None without one
    accelerator: str | None = None
    #: the instance type the accelerator picked on this target's cloud (e.g. ml.g4dn.xlarge)
    hardware: str | None = None
    passed: bool = False
    error: str | None = None
    deploy_seconds: float | None = None
    cold_start_seconds: float | None = None
    #: at the first concurrency level: p50, p90, p95, p99 (and mean, max)
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the best throughput over the concurrency levels
    throughput_rps: float | None = None
    #: requests that failed under load, other than the endpoint's own refusals below
    errors: int = 0
    #: requests the endpoint refused by its own limits (``Target.request_limits``): HTTP 429
    #: past its concurrency, HTTP 408 past its timeout
    throttled: int = 0
    timed_out: int = 0
    #: the target's request limits (concurrency, timeout_ms, source), or None
    limits: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: one entry per concurrency level: concurrency, throughput_rps, latency_ms, errors (by
    #: kind, without the refusals), throttled, timed_out, and where the time went by Triton's
    #: counters, server_time (see deployer.servertime.split) or server_time_note (why not)
    load: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    instances: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cost_per_hour: float | None = None
    cost_per_million: float | None = None
    #: the price per hour at the fleet's maximum (``Target.fleet``), when it scales
    max_cost_per_hour: float | None = None
    cost_note: str = ""
    #: the cloud's own latency metrics over the load (see :func:`cloud_figures`), or None
    cloud_time: dict[str, Any] | None = None
    #: a decoupled model, at the first concurrency level: responses, responses_per_s,
    #: first_ms and between_ms (see load.LoadResult.stream); {} otherwise
    stream: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: model → how the target serves it when not by its own backend (see deployer.shim)
    served_by: dict[str, str] = dataclasses.field(default_factory=dict)
    test_passed: bool | None = None
    logs: str = ""
    torn_down: bool = False
    runs_here: bool = True


@dataclasses.dataclass
class CompareReport:
    repository: str
    model: str
    requests: int
    concurrency: list[int]
    targets: list[TargetResult]
    parallel: list[str]
    sequential: list[str]
    price_note: str
    interrupted: bool = False
    #: ``--rate``: the offered rates (requests/s), one load level each, every target the
    #: same, at most ``concurrency[0]`` in flight; [] for closed-loop levels
    rates: list[float] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.interrupted and all(t.passed for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        return data


def split_options(raw: Mapping[str, str], targets: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{"local.http_port": "8000"}`` → ``{"local": {"http_port": "8000"}}``."""
    per: dict[str, dict[str, str]] = {t: {} for t in targets}
    for key, value in raw.items():
        target, dot, option = key.partition(".")
        if not dot or target not in per:
            raise UsageError(f"compare option {key!r} does not name a compared target",
                             hint=f"write -o TARGET.{option or key}=VALUE with TARGET one of "
                                  f"{', '.join(targets)}")
        per[target][option] = value
    return per


def _runs(core: Deployer, targets: Sequence[str], options: Mapping[str, Mapping[str, Any]],
          gpus: Sequence[str]) -> dict[str, tuple[str, dict[str, Any], str | None]]:
    """Label → (target, its options, accelerator): one run per target, and with ``gpus`` one
    per accelerator for each target that takes ``gpu`` (labelled TARGET@GPU when several)."""
    labels = [hardware.label(gpu) for gpu in gpus]
    if len(set(labels)) != len(labels):
        raise UsageError("name each accelerator once: --gpu T4 --gpu L4 ...")
    runs: dict[str, tuple[str, dict[str, Any], str | None]] = {}
    for target in targets:
        opts = dict(options.get(target, {}))
        column = core.registry.get(target).hardware
        if not labels or not column:
            runs[target] = (target, opts, hardware.label(opts["gpu"])
                            if column and opts.get("gpu") else None)
            continue
        named = sorted(({"gpu"} | hardware.option_names(column)) & set(opts))
        if named:   # an explicit type would win over every --gpu
            raise UsageError(f"-o {target}.{named[0]} and --gpu both name the hardware",
                             hint=f"drop -o {target}.{named[0]}, or --gpu")
        for label in labels:
            runs[target if len(labels) == 1 else f"{target}@{label}"] = (
                target, {**opts, "gpu": label}, label)
    if labels and not any(accelerator for _, _, accelerator in runs.values()):
        raise UsageError("--gpu is for the cloud targets; none of these takes it",
                         hint="add --target sagemaker, azure or vertex (or a twin)")
    return runs


def _hardware(impl) -> str:
    """The instance type (and a Vertex machine's GPUs) the target's settings name."""
    settings = impl.settings
    kind = settings.get("instance_type") or settings.get("machine_type") or "?"
    gpu = settings.get("accelerator_type")
    if settings.get("machine_type") and gpu and gpu != "none":
        kind += f" + {settings.get('accelerator_count')} x {gpu}"
    return kind


def _cost(result: TargetResult, instances: list[tuple[str, int]], table: dict,
          fleet=None) -> None:
    if not instances:
        result.cost_per_hour, result.cost_note = 0.0, "runs on this machine: no cloud cost"
    else:
        total, unknown = 0.0, []
        for kind, count in instances:
            entry = table["prices"].get(kind.lower())
            result.instances.append({"instance_type": kind, "count": count,
                                     "usd_per_hour": entry and entry["usd_per_hour"],
                                     "source": entry and entry["source"]})
            if entry is None:
                unknown.append(kind)
            else:
                total += entry["usd_per_hour"] * count
        if unknown:
            result.cost_note = (f"no price for {', '.join(unknown)}: pass --price "
                                f"{unknown[0]}=USD_PER_HOUR")
            return
        result.cost_per_hour = round(total, 4)
        labels = dict.fromkeys(table["prices"][kind.lower()]["source"].get("label", "")
                               for kind, _ in instances)
        result.cost_note = f"estimate from list prices: {'; '.join(filter(None, labels))}"
        # instances() is the fleet at its minimum; each part grows with the instance count
        if fleet is not None and fleet.maximum > fleet.minimum >= 1:
            result.max_cost_per_hour = round(total / fleet.minimum * fleet.maximum, 4)
            result.cost_note += (f"; priced at the minimum of {fleet.minimum} instance(s), it "
                                 f"scales to {fleet.maximum}: up to {result.max_cost_per_hour} "
                                 "USD/h")
    if result.throughput_rps:
        result.cost_per_million = round(
            result.cost_per_hour / (result.throughput_rps * 3600) * 1_000_000, 4)


#: error kinds (``EndpointError.kind``) that are the endpoint's own refusals, not failures
REFUSALS = {"http-429": "throttled", "http-408": "timed_out"}


def _limits(result: TargetResult, limits, concurrency: Sequence[int],
            progress: Callable[[str], None]) -> None:
    """Record the target's request limits, and warn about the levels they will refuse."""
    if limits is None:
        return
    result.limits = dataclasses.asdict(limits)
    above = [level for level in concurrency if limits.concurrency and level > limits.concurrency]
    if above:
        result.warnings.append(
            f"concurrency {', '.join(map(str, above))} is above the {limits.concurrency} "
            f"request(s) in flight its settings allow ({limits.source}): expect HTTP 429 "
            "(counted as throttled); raise the setting to measure the model, not the throttle")
        progress(f"warning: {result.target}: {result.warnings[-1]}")


def _level(level: int, measured) -> dict[str, Any]:
    """One concurrency level's figures, the endpoint's refusals counted apart."""
    errors = dict(measured.errors)
    refused = {field: errors.pop(kind, 0) for kind, field in REFUSALS.items()}
    return {"concurrency": level, "rate": measured.rate, "sent_rps": measured.sent_rps,
            "dropped": measured.dropped, "late": measured.late,
            "window_cv": measured.window_cv, "throughput_rps": measured.throughput_rps,
            "latency_ms": measured.latency_ms, "errors": errors, **refused,
            "stable": measured.stable, "windows": measured.windows, "stream": measured.stream,
            "latency_by_step": measured.latency_by_step, "requests": measured.requests,
            "server_time": measured.server_time, "server_time_note": measured.server_time_note}


def cloud_figures(found, levels: Sequence[Mapping[str, Any]],
                  window: tuple[float, float]) -> dict[str, Any]:
    """A :class:`deployer.target.CloudTime` beside the client's mean over the same load (the
    levels' means weighted by their requests): ``outside_endpoint_ms`` is the client's time
    the cloud does not account for (network, the client's HTTP)."""
    pairs = [(level["latency_ms"].get("mean"), level.get("requests") or 0) for level in levels]
    pairs = [(mean, count) for mean, count in pairs if mean is not None and count]
    client = (round(sum(m * c for m, c in pairs) / sum(c for _, c in pairs), 3)
              if pairs else None)
    outside = (round(client - found.endpoint_ms, 3)
               if client is not None and found.endpoint_ms is not None else None)
    note = found.note
    if outside is not None and outside < 0:   # the cloud's whole minutes held more requests
        note = "; ".join(filter(None, [note, (
            "the cloud's mean is above the client's: its periods also hold requests from "
            "outside the load (a longer load compares like with like)")]))
    return {**found.figures, "parts": list(found.figures), "endpoint_ms": found.endpoint_ms,
            "client_mean_ms": client,
            "outside_endpoint_ms": outside, "requests": found.requests, "source": found.source,
            "note": note, "window": [round(window[0], 3), round(window[1], 3)]}


def cloud_view(impl, deployment, levels: Sequence[Mapping[str, Any]],
               window: tuple[float, float], *, wait: float,
               progress: Callable[[str], None]) -> dict[str, Any] | None:
    """The target's :meth:`~deployer.target.Target.cloud_time` over a load's ``window``, set
    beside the client's mean of its ``levels`` (:func:`cloud_figures`); None without one."""
    found = impl.cloud_time(deployment, *window, wait=wait, progress=progress)
    return None if found is None else cloud_figures(found, levels, window)


def _failed_load(result: TargetResult) -> str | None:
    """Why the load failed, in words, or None."""
    parts = []
    if result.errors:
        parts.append(f"{result.errors} requests failed")
    if result.throttled:
        parts.append(f"{result.throttled} requests were throttled (HTTP 429)")
    if result.timed_out:
        parts.append(f"{result.timed_out} requests timed out (HTTP 408)")
    if not parts:
        return None
    source = f" by its request settings ({result.limits['source']})" if result.limits and (
        result.throttled or result.timed_out) else ""
    return f"under load, {', '.join(parts)}{source}"


@contextlib.contextmanager
def _steps(progress: Callable[[str], None], target: str):
    """At a terminal, a spinner per target saying which step it is at (yields a function
    taking the step); in plain lines nothing more (each step prints its own lines)."""
    live = getattr(progress, "live", None)
    if live is None:
        yield lambda step: None
        return
    with live.waiting(target) as wait:
        yield wait.state


def _first_inference(client, model, inputs, timeout: float) -> float:
    """Seconds to the first successful inference of ``inputs[0]`` on ``model`` (a stateful
    model: a sequence of that one step; a decoupled one: a whole stream)."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            if model.decoupled:
                client.stream(model.name, inputs[0])
            else:
                client.infer(model.name, inputs[0], **({"sequence": {
                    "sequence_id": 1, "sequence_start": True, "sequence_end": True}}
                    if model.stateful else {}))
            return round(time.monotonic() - started, 4)
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
            time.sleep(0.2)
    raise DeployerError(f"no successful inference within {timeout:.0f}s after deploy: {last}")


def compare(core: Deployer, repository: str, targets: Sequence[str],
            options: Mapping[str, Mapping[str, Any]] | None = None, *, requests: int = 1000,
            concurrency: Sequence[int] = (1, 4), prices: Mapping[str, float] | None = None,
            model: str | None = None, cold_start_timeout: float = 300.0,
            cloud_wait: float = 180.0, gpus: Sequence[str] = (), rates: Sequence[float] = (),
            progress: Callable[[str], None] = lambda _: None) -> CompareReport:
    """Deploy, measure and tear down ``repository`` on every target; never leaves one up.
    ``gpus`` (accelerators of :mod:`deployer.hardware`) runs each cloud target once per
    accelerator; the report lists the results grouped by accelerator. ``rates`` measures
    each target open-loop at each of these requests per second (at most ``concurrency[0]``
    in flight) instead of at each concurrency."""
    from .repository import Repository

    if len(set(targets)) != len(targets) or not targets:
        raise UsageError("name each target once: --target A --target B ...")
    repo = Repository.load(repository)
    model = model or repo.top_level()[0]
    if model not in repo.models:
        raise UsageError(f"no model {model!r} in {repo.path}")
    if any(rate <= 0 for rate in rates):
        raise UsageError("--rate takes requests per second above 0")
    if rates:
        check_rate(repo.models[model])
    from .load import RATE_CAP

    levels = [(concurrency[0] if concurrency else RATE_CAP, float(rate)) for rate in rates] \
        or [(level, None) for level in concurrency]
    concurrency = [levels[0][0]] if rates else list(concurrency)
    runs = _runs(core, targets, options or {}, gpus)
    options = {label: run[1] for label, run in runs.items()}
    impls = {}
    for label, (target, opts, _) in runs.items():  # all bad input before anything is created
        impls[label] = core.registry.create(target, opts, progress)
        impls[label].validate(repo)
    table = price_table(prices)
    inputs = samples.generated_steps(repo.models[model])
    tag = secrets.token_hex(2)
    results = {label: TargetResult(
        target=label, name=name_from(f"cmp-{repo.path.name}-{label.replace('@', '-')}-{tag}"),
        runs_here=type(impls[label]).runs_here, accelerator=accelerator,
        hardware=_hardware(impls[label]) if accelerator else None)
        for label, (_, _, accelerator) in runs.items()}
    targets = list(results)
    measure_lock = threading.Lock()

    def one(target: str) -> None:
        with _steps(progress, target) as step:
            measure(target, step)

    def measure(target: str, step: Callable[[str], None]) -> None:
        result, impl = results[target], impls[target]
        try:
            step("deploying")
            deployment = core.deploy(repo.path, runs[target][0], result.name, options[target])
            result.deploy_seconds = deployment.deploy_seconds
            result.served_by = dict(deployment.endpoint.get("served_by") or {})
            _limits(result, impl.request_limits(deployment), concurrency, progress)
            client = impl.client(deployment)
            try:
                step("waiting for its turn to measure")
                with measure_lock:
                    progress(f"{target}: cold start, test step and load")
                    step("cold start")
                    result.cold_start_seconds = _first_inference(
                        client, repo.models[model], inputs, cold_start_timeout)
                    step("test step")
                    report = core.test(result.name, TestOptions(ready_timeout=60))
                    result.test_passed = report.passed
                    metrics = impl.server_metrics(deployment)
                    began = time.time()
                    for level, rate in levels:
                        shape = f"at {rate:g}/s" if rate else f"at concurrency {level}"
                        step(f"load {shape}")
                        send, kind = load_sender(client, repo.models[model], inputs, rate)
                        with counting(Prefixed(progress, f"{target}: "),
                                      f"load {shape}") as done:
                            measured = servertime.timed_load(
                                metrics, model, send, requests, level, kind=kind,
                                per_request=per_request(repo.models[model], inputs),
                                rate=rate, done=done)
                        result.load.append(_level(level, measured))
                        if metrics and measured.server_time_note:
                            result.warnings.append(f"{shape[3:]}: "
                                                   f"{measured.server_time_note}")
                            progress(f"warning: {target}: {result.warnings[-1]}")
                    window = (began, time.time())
            finally:
                client.close()
            # the cloud's own view of the same load; it may wait for late metrics, so it
            # runs outside the measuring lock
            step("the cloud's metrics")
            result.cloud_time = cloud_view(impl, deployment, result.load, window,
                                           wait=cloud_wait,
                                           progress=Prefixed(progress, f"{target}: "))
            if result.cloud_time is not None and result.cloud_time["note"]:
                result.warnings.append(f"the cloud's metrics: {result.cloud_time['note']}")
                progress(f"warning: {target}: {result.warnings[-1]}")
            result.latency_ms = result.load[0]["latency_ms"] if result.load else {}
            result.stream = result.load[0]["stream"] if result.load else {}
            result.throughput_rps = max((x["throughput_rps"] for x in result.load), default=None)
            result.errors = sum(sum(x["errors"].values()) for x in result.load)
            result.throttled = sum(x["throttled"] for x in result.load)
            result.timed_out = sum(x["timed_out"] for x in result.load)
            fleet = None
            with contextlib.suppress(DeployerError):
                fleet = impl.fleet(deployment)
            _cost(result, impl.instances(deployment), table, fleet)
            failed_load = _failed_load(result)
            result.passed = bool(result.test_passed) and failed_load is None
            if not result.test_passed:
                failed = [f"{m.model} {c.name}: {c.message}" for m in report.models
                          for c in m.checks if c.failed] or ["not ready"]
                result.error = "the test step failed: " + "; ".join(failed)
            elif failed_load:
                result.error = failed_load
            step("measured" if result.passed else "FAILED")
        except Interrupted:
            raise
        except DeployerError as exc:
            result.error = str(exc)
            step("FAILED")
        finally:
            if result.error and core.store.exists(result.name):
                try:
                    result.logs = core.logs(result.name, 40)
                except Exception:  # noqa: BLE001 - logs are a courtesy on failure
                    pass

    def teardown(target: str) -> None:
        result = results[target]
        if core.store.exists(result.name):
            try:
                core.teardown(result.name)
                result.torn_down = True
            except DeployerError as exc:
                result.error = (result.error + "; " if result.error else "") + str(exc)
                result.passed = False
        else:
            result.torn_down = True

    remote = [t for t in targets if not results[t].runs_here]
    here = [t for t in targets if results[t].runs_here]
    interrupted = False
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(remote)))
    try:
        futures = [pool.submit(one, t) for t in remote]
        for target in here:
            one(target)
            teardown(target)
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: waiting for running deploys to record, then tearing down")
    finally:
        pool.shutdown(wait=True)
        for target in targets:
            teardown(target)
    order = {name: i for i, name in enumerate(hardware.accelerators())}
    grouped = sorted(results.values(), key=lambda r: -1 if r.accelerator is None else order[
        hardware.parse(r.accelerator)[0]])
    report = CompareReport(repository=str(repo.path), model=model, requests=requests,
                           concurrency=list(concurrency), targets=grouped,
                           parallel=remote, sequential=here, price_note=table["about"],
                           interrupted=interrupted, rates=[float(r) for r in rates])
    if interrupted:
        raise Interrupted("compare interrupted; every deployment was torn down"
                          if all(r.torn_down for r in results.values()) else
                          "compare interrupted", hint=None if all(
                              r.torn_down for r in results.values())
                          else "run 'deployer list' and tear down what is left")
    return report
