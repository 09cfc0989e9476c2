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
    inputs: dict[str, Any]
    expected: dict[str, Any]


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
    inputs = {}
    for model_name in models:
        model = repository.models[model_name]
        inputs[model_name] = (
            samples.sample_inputs(sample_doc[model_name], model, str(options.sample))
            if model_name in sample_doc
            else samples.generated_inputs(model, batch_size=options.batch_size))
    expected = {m: samples.expected_outputs(doc, str(options.expect))
                for m, doc in expect_doc.items()}
    return Prepared(models, inputs, expected)


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
        result = ModelResult(model_name, served=(served_by or {}).get(model_name, ""))
        report.models.append(result)
        progress(f"testing {name}: {model_name}")
        result.checks.append(_timed(
            "metadata", lambda: _metadata_problem(client.metadata(model_name), model)))
        answer: dict = {}

        def infer() -> str | None:
            answer.update(client.infer(model_name, inputs[model_name]))
            missing = [o.name for o in model.outputs if o.name not in answer]
            return f"outputs missing: {', '.join(missing)}" if missing else None

        result.checks.append(_timed("infer", infer))
        result.outputs = {k: samples.preview(v) for k, v in answer.items()}
        if model_name in expected:
            result.checks.append(_timed("expect", lambda: "; ".join(samples.compare(
                answer, expected[model_name], options.rtol, options.atol)) or None))
    if options.requests > 0:
        from . import load

        load_model = models[0] if options.models else next(
            (m for m in repository.top_level() if m in models), models[0])
        progress(f"load: {options.requests} requests at concurrency {options.concurrency} "
                 f"on {load_model}")
        report.load.append(load.run(load_model, client.sender(load_model, inputs[load_model]),
                                    options.requests, options.concurrency))
    report.seconds = round(time.monotonic() - started, 3)
    return report
