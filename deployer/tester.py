"""The test step: ready → metadata matches the repository → inference → the outputs that came
back are the ones the config declares → expected outputs → optional load. Runs the same against
every target through its EndpointClient."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import samples
from .client import EndpointError, StreamAnswer
from .errors import Unavailable, UsageError
from .loadgen import HttpRequest

if TYPE_CHECKING:
    from .client import EndpointClient
    from .load import LoadResult
    from .repository import Model, Repository, TensorSpec


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    #: what failed, or why the check was skipped
    message: str = ""
    seconds: float = 0.0
    #: not run on this target, for the reason in ``message``: neither passed nor failed
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return not self.passed and not self.skipped

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "passed" if self.passed else "failed"

    def to_dict(self) -> dict[str, Any]:
        """``status`` is "passed", "failed" or "skipped"; a skipped check has ``passed``
        false and its ``reason`` (also its ``message``)."""
        data = {**dataclasses.asdict(self), "status": self.status}
        if self.skipped:
            data["reason"] = self.message
        return data


def _skipped(name: str, reason: str) -> Check:
    return Check(name, False, reason, skipped=True)


@dataclasses.dataclass
class ModelResult:
    model: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    #: output name → {"shape", "dtype", "first"} of the inference answer
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: how the target serves it when not by its own backend ("onnxruntime 1.20 through the
    #: Python backend, embedded"); "" otherwise
    served: str = ""
    #: the version checked, when the model serves several or one was asked for; "" otherwise
    version: str = ""
    #: the requests one check sent: a stateful model's sequence has several steps
    steps: int = 1
    #: a decoupled model: the responses its stream sent, and when the first arrived
    responses: int = 0
    first_response_ms: float | None = None

    @property
    def passed(self) -> bool:
        """No check failed (a skipped one does not count)."""
        return not any(c.failed for c in self.checks)


@dataclasses.dataclass
class TestReport:
    name: str
    target: str
    ready: Check
    models: list[ModelResult] = dataclasses.field(default_factory=list)
    load: list[LoadResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    #: with a load on a cloud target: the cloud's own latency metrics over the load (see
    #: deployer.compare.cloud_figures), or None
    cloud_time: dict[str, Any] | None = None
    #: when the load began and ended (Unix seconds), or None without a load
    load_window: tuple[float, float] | None = None

    __test__ = False  # not a pytest class

    @property
    def passed(self) -> bool:
        return self.ready.passed and all(m.passed for m in self.models) and all(
            result.error_count == 0 for result in self.load)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        data["ready"] = self.ready.to_dict()
        for model, result in zip(data["models"], self.models):
            model["passed"] = result.passed
            model["checks"] = [check.to_dict() for check in result.checks]
        return data


@dataclasses.dataclass
class TestOptions:
    """What ``deployer test`` takes besides the deployment name."""

    models: Sequence[str] = ()
    sample: str | Path | None = None
    expect: str | Path | None = None
    rtol: float = 1e-5
    atol: float = 1e-6
    batch_size: int = 1
    #: check only this version (default: every version the model's policy serves)
    model_version: int | None = None
    requests: int = 0
    #: requests in flight (closed loop); with ``rate``, the most in flight (None: 1, or
    #: ``load.RATE_CAP`` with a rate)
    concurrency: int | None = None
    #: send open-loop at this many requests per second (None: closed loop)
    rate: float | None = None
    ready_timeout: float = 30.0
    #: after a load on a cloud target, seconds to wait for its own latency metrics
    cloud_wait: float = 180.0

    __test__ = False

    @property
    def in_flight(self) -> int:
        from .load import RATE_CAP

        return self.concurrency or (RATE_CAP if self.rate else 1)


def _timed(name: str, fn: Callable[[], str | None]) -> Check:
    started = time.monotonic()
    try:
        problem = fn()
    except EndpointError as exc:
        problem = str(exc)
    return Check(name, problem is None, problem or "", round(time.monotonic() - started, 4))


def _metadata_problem(meta: dict[str, Any], model: Model) -> str | None:
    def tensors(items: Sequence[dict[str, Any]]) -> set[tuple]:
        return {(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items}

    problems = []
    for kind, specs, served in (("inputs", model.inputs, meta.get("inputs", [])),
                                ("outputs", model.outputs, meta.get("outputs", []))):
        want = {(s.name, s.datatype, tuple(s.shape(model.max_batch_size))) for s in specs}
        got = tensors(served)
        if want != got:
            problems.append(f"{kind}: served {sorted(got - want)}, config {sorted(want - got)}")
    if meta.get("name") != model.name:
        problems.append(f"name: served {meta.get('name')!r}")
    return "; ".join(problems) or None


def _check_model(client: EndpointClient, model: Model, version: str | None,
                 steps: list[dict[str, Any]], expected: list[dict[str, Any] | None] | None,
                 options: TestOptions, served: str,
                 progress: Callable[[str], None]) -> ModelResult:
    """Metadata, inference (every step of a sequence, under one correlation id), the outputs
    that came back, and the expected outputs of one model (at one version, named in the route,
    when given)."""
    route: dict[str, Any] = {"version": version} if version is not None else {}
    shown = model.name + (f" version {version}" if version is not None else "")
    result = ModelResult(model.name, served=served, version=version or "", steps=len(steps))
    progress(shown)
    if client.serves_metadata:
        result.checks.append(_timed(
            "metadata", lambda: _metadata_problem(client.metadata(model.name, **route), model)))
    else:
        result.checks.append(_skipped("metadata", (
            client.no_metadata or "this target serves no model metadata")
            + ": checked through the inference's outputs instead"))
    answers: list[dict[str, Any]] = []
    streamed: list[StreamAnswer] = []
    if model.decoupled:
        result.checks.append(_timed("stream", lambda: _stream(client, model, route, steps,
                                                              answers, streamed, result)))
    else:
        result.checks.append(_timed("infer", lambda: _infer(client, model, route, steps,
                                                            answers)))
    if answers:
        result.outputs = {k: samples.preview(v) for k, v in answers[-1].items()}
    if not model.outputs:
        result.checks.append(_skipped("outputs", "config.pbtxt declares no outputs (Triton "
                                                 "completes them): nothing to check them against"))
    elif not (streamed if model.decoupled else answers):
        result.checks.append(_skipped("outputs", "nothing came back to check (see the "
                                                 f"{result.checks[-1].name} check)"))
    elif model.decoupled:
        result.checks.append(_timed("outputs", lambda: _stream_outputs_problem(
            model, steps[0], streamed[0])))
    else:
        result.checks.append(_timed("outputs", lambda: "; ".join(
            (f"step {index}: " if len(steps) > 1 else "") + problem
            for index, (answer, inputs) in enumerate(zip(answers, steps), 1)
            for problem in output_problems(model, answer, _batch(model, inputs))) or None))
    if expected is not None:
        def expect() -> str | None:
            problems = []
            for index, (answer, want) in enumerate(zip(answers, expected), 1):
                found = [] if want is None else samples.compare(answer, want, options.rtol,
                                                                  options.atol)
                problems += [f"step {index}: {p}" if len(steps) > 1 else p for p in found]
            if len(answers) < len(steps):
                problems.append(f"only {len(answers)} of {len(steps)} steps answered")
            return "; ".join(problems) or None

        result.checks.append(_timed("expect", expect))
    return result


# -- the outputs check ---------------------------------------------------------------------------

#: numpy kinds of the values an untyped answer (JSON) carries for each datatype family
_JSON_KINDS = {"BYTES": "USO", "BOOL": "b", "INT": "iu", "UINT": "iu", "FP": "f", "BF": "f"}


def _batch(model: Model, inputs: Mapping[str, Any]) -> int | None:
    """The request's batch size for a batching model (None: any)."""
    if model.max_batch_size <= 0 or not inputs:
        return None
    return int(next(iter(inputs.values())).shape[0])


def _expected_shape(spec: TensorSpec, model: Model, batch: int | None) -> list[int]:
    """What the client sees: the config's dims (a ``reshape`` changes only what the model
    sees) after the batch dimension of a batching model; -1 is any size."""
    dims = list(spec.dims)
    return [-1 if batch is None else batch, *dims] if model.max_batch_size > 0 else dims


def _datatype_of(array: Any) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype) or str(array.dtype)


def output_problems(model: Model, answer: Mapping[str, Any], batch: int | None, *,
                    requested: Sequence[str] | None = None, complete: bool = True,
                    typed: bool = True) -> list[str]:
    """How one answer differs from the outputs ``config.pbtxt`` declares: each a line naming
    the model, the output, what was expected and what came back.

    ``requested``: the outputs the request asked for (default: every declared one), which must
    all come back unless ``complete`` is false (a decoupled model's response may carry some).
    Every output that came back must be declared, with its datatype (``TYPE_STRING`` is BYTES:
    numpy object or bytes arrays; BF16 comes back as float32) and its shape (``batch``
    prepended for a batching model). ``typed`` false: the answer was JSON (Triton's generate
    routes), which carries neither datatype nor shape, so only the kind of value (number,
    text, boolean) and the number of elements are compared."""
    import numpy as np

    specs = {spec.name: spec for spec in model.outputs}
    wanted = list(requested) if requested is not None else list(specs)
    problems = []

    def line(name: str, expected: str, got: str) -> str:
        return f"{model.name} output {name}: expected {expected}, got {got}"

    for name in wanted:
        spec = specs.get(name)
        if complete and spec is not None and name not in answer:
            problems.append(line(name, f"{spec.datatype} {_expected_shape(spec, model, batch)}",
                                 "nothing (it did not come back)"))
    for name, value in answer.items():
        array = np.asarray(value)
        spec = specs.get(name)
        if spec is None or name not in wanted:
            who = "config.pbtxt declares" if spec is None else "the request asked for"
            problems.append(line(name, f"no such output ({who} {', '.join(wanted)})",
                                 f"{_datatype_of(array)} {list(array.shape)}"))
            continue
        shape = _expected_shape(spec, model, batch)
        want = f"{spec.datatype} {shape}"
        if typed:
            datatype = _datatype_of(array)
            if spec.datatype == "BF16" and datatype == "FP32":
                datatype = "BF16"   # tritonclient decodes BF16 as float32
            fits = len(shape) == array.ndim and all(
                w in (-1, g) for w, g in zip(shape, array.shape))
            if datatype != spec.datatype or not fits:
                problems.append(line(name, want, f"{datatype} {list(array.shape)}"))
            continue
        family = spec.datatype.rstrip("0123456789")
        count = int(np.prod(shape)) if -1 not in shape else None
        if array.dtype.kind not in _JSON_KINDS.get(family, array.dtype.kind) or (
                count is not None and array.size != count):
            elements = "any number of elements" if count is None else \
                f"{count} element{'' if count == 1 else 's'}"
            problems.append(line(name, f"{want} ({elements})",
                                 f"{array.size} JSON {_json_kind(array)}"))
    return problems


def _json_kind(array: Any) -> str:
    kind = array.dtype.kind
    return ("text" if kind in "USO" else "boolean" if kind == "b" else "integer"
            if kind in "iu" else "decimal") + (" values" if array.size != 1 else "")


def _stream_outputs_problem(model: Model, inputs: Mapping[str, Any],
                            got: StreamAnswer) -> str | None:
    """Each response of a decoupled model: Triton lets a response carry any of the declared
    outputs (a stream often sends them apart), so each response is checked for what it
    carries, and every declared output must come in some response."""
    batch = _batch(model, inputs)
    seen: dict[str, list[int]] = {}   # a problem → the responses that have it
    for index, response in enumerate(got.responses, 1):
        for problem in output_problems(model, response, batch, complete=False,
                                       typed=got.typed):
            seen.setdefault(problem, []).append(index)
    problems = [f"response {where[0]}" + (f" (and {len(where) - 1} more)" if len(where) > 1
                                          else "") + f": {problem}"
                for problem, where in seen.items()]
    carried = {name for response in got.responses for name in response}
    for spec in model.outputs:
        if spec.name not in carried:
            problems.append(f"{model.name} output {spec.name}: expected {spec.datatype} "
                            f"{_expected_shape(spec, model, batch)} in some response, got it "
                            f"in none of {len(got.responses)}")
    return "; ".join(problems) or None


def _stream(client: EndpointClient, model: Model, route: dict[str, Any],
            steps: list[dict[str, Any]], answers: list[dict[str, Any]],
            streamed: list[StreamAnswer], result: ModelResult) -> str | None:
    """A decoupled model: responses arrive, the end is marked; ``streamed`` gets the answer,
    ``answers`` its outputs concatenated over the responses."""
    if not client.streams:
        return "this target cannot call a decoupled model (it needs a streaming call)"
    got = client.stream(model.name, steps[0], **route)
    result.responses = len(got.responses)
    if not got.final:
        return f"{len(got.responses)} response(s), but the final flag never came"
    if not got.responses:
        return "no response arrived before the final flag"
    streamed.append(got)   # the outputs check reads each response
    result.first_response_ms = round(got.times[0] * 1000, 3)
    try:
        answers.append(got.outputs())
    except ValueError as exc:   # responses whose shapes do not line up
        return f"the responses do not concatenate into one answer: {exc}"
    return None


def _infer(client: EndpointClient, model: Model, route: dict[str, Any],
           steps: list[dict[str, Any]], answers: list[dict[str, Any]]) -> str | None:
    """One request, or every step of a sequence under one correlation id."""
    import random

    if model.stateful and not client.passes_sequences:
        return ("this target's requests cannot carry a sequence's correlation id, which "
                "a stateful model needs")
    correlation = random.randrange(1, 2 ** 40)
    for index, inputs in enumerate(steps):
        sequence = ({"sequence": {"sequence_id": correlation,
                                  "sequence_start": index == 0,
                                  "sequence_end": index == len(steps) - 1}}
                    if model.stateful else {})
        answers.append(client.infer(model.name, inputs, **route, **sequence))
    return None


def load_sender(client: EndpointClient, model: Model, steps: list[dict[str, Any]],
                rate: float | None = None) -> tuple[Any, str]:
    """What load sends for ``model`` and how ``load.run`` reads it: whole sequences for a
    stateful model, streamed calls for a decoupled one, else the same request (as plain HTTP
    for the load engine when the client describes it so). A fixed ``rate`` needs the last:
    UsageError otherwise."""
    if model.decoupled:
        send, kind = client.stream_sender(model.name, steps[0]), "stream"
    elif model.stateful:
        send, kind = client.sequence_sender(model.name, steps), "sequence"
    else:
        try:
            send, kind = client.load_request(model.name, steps[0]) or \
                client.sender(model.name, steps[0]), "request"
        except EndpointError as exc:   # e.g. no credentials to sign it with
            raise Unavailable(f"the load cannot be sent: {exc}") from None
    if rate is not None:
        check_rate(model, f"requests of this target's client ({type(client).__name__})"
                   if not isinstance(send, HttpRequest) else None)
    return send, kind


def check_rate(model: Model, other: str | None = None) -> None:
    """UsageError when a fixed rate cannot send ``model``'s load (or ``other``, in words)."""
    what = ("a decoupled model's streams" if model.decoupled else
            "a stateful model's sequences" if model.stateful else other)
    if what:
        raise UsageError(f"--rate cannot send {what} at a fixed rate ({model.name}): only "
                         "single requests the client describes as plain HTTP",
                         hint="leave out --rate (a closed loop at --concurrency), or load "
                              "another model with --model")


def load_model(repository: Repository, models: Sequence[str], options: TestOptions) -> str:
    """The model the load runs on: the first of --model, else the first top-level one."""
    return models[0] if options.models else next(
        (m for m in repository.top_level() if m in models), models[0])


def per_request(model: Model, steps: list[dict[str, Any]]) -> int:
    """Triton requests per request load sends: a stateful model's sequence is one per step."""
    return len(steps) if model.stateful and not model.decoupled else 1


def select_models(repository: Repository, served: Sequence[str], wanted: Sequence[str]) -> list[str]:
    unknown = [m for m in wanted if m not in served]
    if unknown:
        raise UsageError(f"no model {', '.join(unknown)} in this deployment; it serves "
                         f"{', '.join(served)}")
    return list(wanted) or list(served)


@dataclasses.dataclass
class Prepared:
    """The test step's inputs, read and checked against the repository before any call."""

    models: list[str]
    #: model → the requests one check sends (several for a stateful model's sequence)
    inputs: dict[str, list[dict[str, Any]]]
    #: model → expected outputs per request (None: not checked)
    expected: dict[str, list[dict[str, Any] | None]]
    #: model → the versions to check (None: the one the endpoint serves)
    versions: dict[str, list[int]] = dataclasses.field(default_factory=dict)


def prepare(repository: Repository, served: Sequence[str], options: TestOptions) -> Prepared:
    """Read and check the sample and expected-outputs files for the models to test; raise
    UsageError on the first problem. ``run`` and ``compare`` call it before deploying."""
    models = select_models(repository, served, options.models)
    sample_doc = (samples.per_model(samples.read_json(options.sample, "sample"), repository,
                                    models, "sample", options.sample)
                  if options.sample else {})
    expect_doc = (samples.per_model(samples.read_json(options.expect, "expect"), repository,
                                    models, "expected outputs", options.expect)
                  if options.expect else {})
    inputs, versions = {}, {}
    for model_name in models:
        model = repository.models[model_name]
        inputs[model_name] = (
            samples.sample_steps(sample_doc[model_name], model, str(options.sample))
            if model_name in sample_doc
            else samples.generated_steps(model, batch_size=options.batch_size))
        versions[model_name] = list(model.served_versions())
        if options.model_version is not None:
            if options.model_version not in versions[model_name]:
                raise UsageError(
                    f"model {model_name!r} does not serve version {options.model_version}: "
                    f"its version policy serves {', '.join(map(str, versions[model_name]))}",
                    hint="pass one of those to --model-version, or leave it out")
            versions[model_name] = [options.model_version]
    expected = {m: samples.expected_steps(doc, len(inputs[m]), str(options.expect))
                for m, doc in expect_doc.items() if m in inputs}   # others are not tested
    if options.rate and options.requests:
        check_rate(repository.models[load_model(repository, models, options)])
    return Prepared(models, inputs, expected, versions)


def run(client: EndpointClient, repository: Repository, served: Sequence[str], *, name: str,
        target: str, options: TestOptions, progress: Callable[[str], None],
        served_by: dict[str, str] | None = None, metrics: str | None = None) -> TestReport:
    """Run the test step against ``client``; bad sample/expect files raise UsageError first.
    ``served_by`` says how models the target serves through a stand-in are served;
    ``metrics``, Triton's metrics URL, splits the load's time (deployer.servertime)."""
    started = time.monotonic()
    prepared = prepare(repository, served, options)
    models, inputs, expected = prepared.models, prepared.inputs, prepared.expected

    def wait_ready() -> str | None:
        return None if client.wait_ready(options.ready_timeout) else \
            f"not ready after {options.ready_timeout:.0f}s"

    progress(f"testing {name}: ready")
    report = TestReport(name=name, target=target, ready=_timed("ready", wait_ready))
    if not report.ready.passed:
        report.seconds = round(time.monotonic() - started, 3)
        return report
    for model_name in models:
        model = repository.models[model_name]
        versions: list[int | None] = list(prepared.versions[model_name])
        several = len(versions) > 1 or options.model_version is not None
        if several and not client.routes_versions:
            if options.model_version is not None:
                raise UsageError(f"{target} cannot choose a model version: its requests name "
                                 "none, and the endpoint answers with the version Triton "
                                 "serves", hint="leave out --model-version")
            progress(f"  {target} names no version in its requests: {model_name} is checked "
                     "with the version its endpoint serves")
        for version in versions if several and client.routes_versions else [None]:
            report.models.append(_check_model(
                client, model, None if version is None else str(version), inputs[model_name],
                expected.get(model_name), options, (served_by or {}).get(model_name, ""),
                lambda shown: progress(f"testing {name}: {shown}")))
    if options.requests > 0:
        from . import servertime

        loaded = load_model(repository, models, options)
        from .progress import counting

        send, kind = load_sender(client, repository.models[loaded], inputs[loaded],
                                 options.rate)
        began = time.time()
        shape = (f"at {options.rate:g}/s (at most {options.in_flight} in flight)"
                 if options.rate else f"at concurrency {options.in_flight}")
        with counting(progress, f"load: at least {options.requests} requests {shape} on "
                                f"{loaded}") as done:
            measured = servertime.timed_load(
                metrics, loaded, send, options.requests, options.in_flight,
                kind=kind, per_request=per_request(repository.models[loaded],
                                                   inputs[loaded]),
                rate=options.rate, done=done)
        if metrics and measured.server_time_note:
            progress(f"warning: {measured.server_time_note}")
        report.load.append(measured)
        report.load_window = (began, time.time())
    report.seconds = round(time.monotonic() - started, 3)
    return report
