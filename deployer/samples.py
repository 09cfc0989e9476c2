"""Inputs for the test step: the user's sample, or inputs generated from the config; and the
comparison of outputs with an ``--expect`` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from .repository import Model, Repository, TensorSpec

NUMPY_DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "object",
}


def read_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})",
                         hint=f"the {what} file must be JSON") from None


def per_model(document: Any, repository: Repository, models: list[str], what: str,
              path: str | Path) -> dict[str, Any]:
    """Split a sample/expect document into one entry per model it applies to.

    A JSON object keyed by model names applies to those models; anything else applies to the
    only model tested (a repository with several models needs the keyed form or ``--model``).
    """
    if isinstance(document, dict) and document and set(document) <= set(repository.models) \
            and not {"inputs", "outputs"} & set(document):
        return dict(document)
    if len(models) != 1:
        raise UsageError(
            f"{path}: the {what} does not say which model it is for, and {len(models)} models "
            "are tested", hint='key it by model name ({"MODEL": {...}}) or pass --model')
    return {models[0]: document}


def _array(values: Any, spec: TensorSpec, max_batch_size: int, where: str,
           shape: list[int] | None = None):
    import numpy as np

    dtype = NUMPY_DTYPES[spec.datatype]
    try:
        if spec.datatype == "BYTES":
            array = np.array(values, dtype=object)
            array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                                 otypes=[object])(array) if array.size else array
        else:
            array = np.array(values, dtype=dtype)
        if shape is not None:
            array = array.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where}: input {spec.name!r} cannot be read as {spec.datatype}: {exc}")
    if max_batch_size > 0 and array.ndim == len(spec.dims):
        array = array[np.newaxis, ...]
    expected = spec.shape(max_batch_size)
    if array.ndim != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected, array.shape)):
        raise UsageError(f"{where}: input {spec.name!r} has shape {list(array.shape)}, the model "
                         f"expects {list(expected)} (-1 = any)")
    return array


def sample_inputs(document: Any, model: Model, where: str) -> dict[str, np.ndarray]:
    """Inputs from a sample: ``{"INPUT": [...]}``, a KServe v2 body, or a bare list."""
    specs = {spec.name: spec for spec in model.inputs}
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        given = {}
        for item in document["inputs"]:
            name = item.get("name")
            if name not in specs:
                raise UsageError(f"{where}: model {model.name!r} has no input {name!r}; its "
                                 f"inputs are {', '.join(specs)}")
            given[name] = _array(item.get("data"), specs[name], model.max_batch_size, where,
                                 item.get("shape"))
    elif isinstance(document, dict):
        unknown = set(document) - set(specs)
        if unknown:
            raise UsageError(f"{where}: model {model.name!r} has no input(s) "
                             f"{', '.join(sorted(unknown))}; its inputs are {', '.join(specs)}")
        given = {name: _array(values, specs[name], model.max_batch_size, where)
                 for name, values in document.items()}
    elif isinstance(document, list):
        required = [s for s in model.inputs if not s.optional]
        if len(required) != 1:
            raise UsageError(f"{where}: a bare list is only for a model with one input; "
                             f"{model.name!r} has {len(required)}",
                             hint='use {"INPUT_NAME": [...]} for each input')
        given = {required[0].name: _array(document, required[0], model.max_batch_size, where)}
    else:
        raise UsageError(f"{where}: a sample is a JSON object or list, not {type(document).__name__}")
    missing = [s.name for s in model.inputs if not s.optional and s.name not in given]
    if missing:
        raise UsageError(f"{where}: the sample lacks input(s) {', '.join(missing)} of "
                         f"{model.name!r}")
    return given


#: the key of a stateful model's sample or expected outputs: ``{"sequence": [step, ...]}``
SEQUENCE = "sequence"
#: how many steps a generated sequence has
GENERATED_STEPS = 3


def _is_sequence(document: Any) -> bool:
    return isinstance(document, dict) and set(document) == {SEQUENCE}


def sample_steps(document: Any, model: Model, where: str) -> list[dict[str, np.ndarray]]:
    """A sample as the requests to send: ``{"sequence": [step, ...]}`` (a stateful model:
    each step is a sample of its own, sent in order under one correlation id), or one
    request."""
    if not _is_sequence(document):
        return [sample_inputs(document, model, where)]
    steps = document[SEQUENCE]
    if not model.stateful:
        raise UsageError(f"{where}: a sequence sample is for a stateful model "
                         f"(sequence_batching); {model.name!r} is not",
                         hint="give its inputs directly")
    if not isinstance(steps, list) or not steps:
        raise UsageError(f'{where}: "sequence" must be a non-empty list of steps')
    return [sample_inputs(step, model, f"{where} (step {i})") for i, step in
            enumerate(steps, 1)]


def generated_steps(model: Model, batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """Generated requests: a short sequence for a stateful model, else one request."""
    count = GENERATED_STEPS if model.stateful else 1
    return [generated_inputs(model, batch_size=batch_size, seed=i) for i in range(count)]


def expected_steps(document: Any, steps: int, where: str) -> list[dict[str, Any] | None]:
    """Expected outputs per step: ``{"sequence": [outputs or null, ...]}`` with one entry
    per step of the sample, or one set of outputs for a single request."""
    if not _is_sequence(document):
        if steps != 1:
            raise UsageError(f"{where}: the sample is a sequence of {steps} steps; give the "
                             'expected outputs as {"sequence": [...]}, one entry per step '
                             "(null to skip one)")
        return [expected_outputs(document, where)]
    listed = document[SEQUENCE]
    if not isinstance(listed, list) or len(listed) != steps:
        raise UsageError(f'{where}: "sequence" must list {steps} step(s), as the sample has; '
                         f"got {len(listed) if isinstance(listed, list) else 'no list'}")
    return [None if step is None else expected_outputs(step, f"{where} (step {i})")
            for i, step in enumerate(listed, 1)]


def generated_inputs(model: Model, batch_size: int = 1, dynamic: int = 2,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for every required input: -1 dims become ``dynamic``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in model.inputs:
        if spec.optional:
            continue
        shape = [dynamic if d == -1 else d for d in spec.dims]
        if model.max_batch_size > 0:
            shape = [min(batch_size, model.max_batch_size), *shape]
        count = int(np.prod(shape)) if shape else 1
        kind = spec.datatype
        if kind == "BYTES":
            values = np.array([f"triton-deployer-{i}".encode() for i in range(count)],
                              dtype=object)
        elif kind == "BOOL":
            values = rng.integers(0, 2, count).astype(bool)
        elif kind.startswith(("INT", "UINT")):
            values = rng.integers(0, 10, count).astype(NUMPY_DTYPES[kind])
        else:
            values = rng.random(count).astype(NUMPY_DTYPES[kind])
        inputs[spec.name] = values.reshape(shape)
    return inputs


def expected_outputs(document: Any, where: str) -> dict[str, Any]:
    """``{"OUTPUT": [...]}`` or a KServe v2 response ``{"outputs": [{"name", "shape", "data"}]}``."""
    if isinstance(document, dict) and isinstance(document.get("outputs"), list):
        return {item["name"]: (item.get("data"), item.get("shape"))
                for item in document["outputs"]}
    if isinstance(document, dict):
        return {name: (values, None) for name, values in document.items()}
    raise UsageError(f"{where}: expected outputs are a JSON object of output names")


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, Any], rtol: float,
            atol: float) -> list[str]:
    """Differences between outputs and expectations, as messages (empty = equal)."""
    import numpy as np

    problems = []
    for name, (values, shape) in expected.items():
        if name not in actual:
            problems.append(f"output {name!r} missing (got {', '.join(actual) or 'none'})")
            continue
        got = actual[name]
        if got.dtype == object or got.dtype.kind == "S":
            want = np.array(values, dtype=object)
            got_list = [v.decode() if isinstance(v, bytes) else str(v) for v in got.reshape(-1)]
            want_list = [str(v) for v in want.reshape(-1)]
            if got_list != want_list:
                problems.append(f"output {name!r}: got {got_list[:5]}, expected {want_list[:5]}")
            continue
        want = np.array(values, dtype=np.float64)
        if shape is not None:
            want = want.reshape(shape)
        if want.size != got.size:
            problems.append(f"output {name!r}: got shape {list(got.shape)}, expected "
                            f"{list(want.shape)}")
            continue
        got64 = got.astype(np.float64).reshape(want.shape)
        if not np.allclose(got64, want, rtol=rtol, atol=atol, equal_nan=True):
            worst = float(np.max(np.abs(got64 - want)))
            problems.append(f"output {name!r} differs by up to {worst:.3g} (rtol={rtol}, "
                            f"atol={atol}); got {got64.reshape(-1)[:4].tolist()}, expected "
                            f"{want.reshape(-1)[:4].tolist()}")
    return problems


def preview(array: np.ndarray, items: int = 4) -> dict[str, Any]:
    flat = array.reshape(-1)[:items].tolist()
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat]
    return {"shape": list(array.shape), "dtype": str(array.dtype), "first": flat}
