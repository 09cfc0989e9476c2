"""The test step: ready → metadata matches the repository → inference → expected outputs →
optional load. Runs the same against every target through its EndpointClient."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import samples
from .client import EndpointError
from .errors import UsageError

if TYPE_CHECKING:
    from .client import EndpointClient
    from .load import LoadResult
    from .repository import Model, Repository


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0


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
        return all(c.passed for c in self.checks)


@dataclasses.dataclass
class TestReport:
    name: str
    target: str
    ready: Check
    models: list[ModelResult] = dataclasses.field(default_factory=list)
    load: list[LoadResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    __test__ = False  # not a pytest class

    @property
    def passed(self) -> bool:
        return self.ready.passed and all(m.passed for m in self.models) and all(
            result.error_count == 0 for result in self.load)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        for model, result in zip(data["models"], self.models):
            model["passed"] = result.passed
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
    concurrency: int = 1
    ready_timeout: float = 30.0

    __test__ = False


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
    """Metadata, inference (every step of a sequence, under one correlation id) and the
    expected outputs of one model (at one version, named in the route, when given)."""
    route: dict[str, Any] = {"version": version} if version is not None else {}
    shown = model.name + (f" version {version}" if version is not None else "")
    result = ModelResult(model.name, served=served, version=version or "", steps=len(steps))
    progress(shown)
    result.checks.append(_timed(
        "metadata", lambda: _metadata_problem(client.metadata(model.name, **route), model)))
    answers: list[dict[str, Any]] = []
    if model.decoupled:
        result.checks.append(_timed("stream", lambda: _stream(client, model, route, steps,
                                                              answers, result)))
    else:
        result.checks.append(_timed("infer", lambda: _infer(client, model, route, steps,
                                                            answers)))
    if answers:
        result.outputs = {k: samples.preview(v) for k, v in answers[-1].items()}
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


def _stream(client: EndpointClient, model: Model, route: dict[str, Any],
            steps: list[dict[str, Any]], answers: list[dict[str, Any]],
            result: ModelResult) -> str | None:
    """A decoupled model: responses arrive, the end is marked; ``answers`` gets the outputs
    concatenated over the responses."""
    if not client.streams:
        return "this target cannot call a decoupled model (it needs a streaming call)"
    got = client.stream(model.name, steps[0], **route)
    result.responses = len(got.responses)
    if not got.final:
        return f"{len(got.responses)} response(s), but the final flag never came"
    if not got.responses:
        return "no response arrived before the final flag"
    answers.append(got.outputs())
    missing = [o.name for o in model.outputs if o.name not in answers[-1]]
    if missing:
        return f"outputs missing: {', '.join(missing)}"
    result.first_response_ms = round(got.times[0] * 1000, 3)
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
        answer = client.infer(model.name, inputs, **route, **sequence)
        answers.append(answer)
        missing = [o.name for o in model.outputs if o.name not in answer]
        if missing:
            return (f"step {index + 1}: " if len(steps) > 1 else "") + \
                f"outputs missing: {', '.join(missing)}"
    return None


def load_sender(client: EndpointClient, model: Model,
                steps: list[dict[str, Any]]) -> tuple[Callable[[], Any], str]:
    """What load sends for ``model`` and how ``load.run`` reads it: whole sequences for a
    stateful model, streamed calls for a decoupled one, else the same request."""
    if model.decoupled:
        return client.stream_sender(model.name, steps[0]), "stream"
    if model.stateful:
        return client.sequence_sender(model.name, steps), "sequence"
    return client.sender(model.name, steps[0]), "request"


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
    return Prepared(models, inputs, expected, versions)


def run(client: EndpointClient, repository: Repository, served: Sequence[str], *, name: str,
        target: str, options: TestOptions, progress: Callable[[str], None],
        served_by: dict[str, str] | None = None) -> TestReport:
    """Run the test step against ``client``; bad sample/expect files raise UsageError first.
    ``served_by`` says how models the target serves through a stand-in are served."""
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
        from . import load

        load_model = models[0] if options.models else next(
            (m for m in repository.top_level() if m in models), models[0])
        progress(f"load: {options.requests} requests at concurrency {options.concurrency} "
                 f"on {load_model}")
        send, kind = load_sender(client, repository.models[load_model], inputs[load_model])
        report.load.append(load.run(load_model, send, options.requests, options.concurrency,
                                    kind=kind))
    report.seconds = round(time.monotonic() - started, 3)
    return report
