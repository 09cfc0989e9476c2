"""ONNX and TorchScript models on a Triton that has the Python backend only.

The embedded runtime (and the CPU Docker image) carries Triton's Python backend and nothing
else. A model whose backend is ``onnxruntime`` or ``pytorch`` is served there from a *staged
copy* of the repository in which that model's config names the Python backend and each of its
version folders holds a generated ``model.py`` (:data:`MODEL_PY`) that opens the original
``model.onnx`` with an onnxruntime ``InferenceSession`` (CPU) or ``model.pt`` with
``torch.jit.load`` (CPU). Names, datatypes, shapes, ``max_batch_size``, batching, instance
counts and ensembles stay as the config says; what the shim cannot honour is listed by
:func:`unhonoured`. The user's repository is never written to: the staged copy links (or
copies) its files, and a cloud target still uploads the original.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

if TYPE_CHECKING:
    from .repository import Model, Repository


@dataclasses.dataclass(frozen=True)
class Framework:
    #: the backend it stands in for
    backend: str
    #: the pip requirement the runtime gets (pinned: works with the runtime's numpy<2)
    requirement: str
    #: the distribution's name, as in its ``.dist-info`` folder
    distribution: str
    #: the model file the backend looks for by default
    filename: str


FRAMEWORKS = {
    "onnxruntime": Framework("onnxruntime", "onnxruntime==1.20.1", "onnxruntime", "model.onnx"),
    "pytorch": Framework("pytorch", "torch==2.13.0", "torch", "model.pt"),
}
#: the config parameters through which the generated model.py learns what to open
PARAM_FRAMEWORK, PARAM_FILE = "deployer_shim_framework", "deployer_shim_file"


def shimmed(repository: Repository, have: Iterable[str]) -> list[Model]:
    """The models of ``repository`` that need the shim on a server with backends ``have``."""
    have = set(have)
    return [m for m in repository.models.values()
            if m.backend in FRAMEWORKS and m.backend not in have]


def requirements(models: Iterable[Model]) -> list[str]:
    """The pinned packages those models need, each once."""
    return list(dict.fromkeys(FRAMEWORKS[m.backend].requirement for m in models))


def unhonoured(model: Model) -> list[str]:
    """The config fields of ``model`` that the shim does not apply, as short phrases."""
    config = model.config
    found = []
    if config.HasField("optimization"):
        accelerators = config.optimization.execution_accelerators
        if len(accelerators.gpu_execution_accelerator) or len(
                accelerators.cpu_execution_accelerator):
            found.append("optimization.execution_accelerators")
        if [f for f, _ in config.optimization.ListFields()
                if f.name != "execution_accelerators"]:
            found.append("optimization")
    if config.parameters:
        found.append(f"parameters ({', '.join(sorted(config.parameters))})")
    if any(g.kind == g.KIND_GPU or len(g.gpus) for g in config.instance_group):
        found.append("instance_group KIND_GPU (served on the CPU)")
    if config.HasField("sequence_batching") and len(config.sequence_batching.state):
        found.append("sequence_batching.state (implicit state)")
    if len(config.cc_model_filenames):
        found.append("cc_model_filenames")
    return found


def installed_version(site_packages: Path | None, distribution: str) -> str | None:
    """The version of ``distribution`` installed in ``site_packages``, or None."""
    if site_packages is None:
        return None
    for info in sorted(site_packages.glob(f"{distribution}-*.dist-info")):
        return info.name[len(distribution) + 1:-len(".dist-info")]
    return None


def served_by(model: Model, version: str | None, where: str) -> str:
    """How a shimmed model is served, for the test table, status and compare."""
    framework = FRAMEWORKS[model.backend]
    shown = ".".join((version or "?").split("+")[0].split(".")[:2])
    return f"{framework.distribution} {shown} through the Python backend, {where}"


def model_file(model: Model) -> str:
    return model.config.default_model_filename or FRAMEWORKS[model.backend].filename


def staged_config(model: Model) -> str:
    """The model's config with the Python backend in place of its own."""
    from google.protobuf import text_format

    config = type(model.config)()
    config.CopyFrom(model.config)
    config.ClearField("platform")
    config.backend = "python"
    for field in ("default_model_filename", "optimization", "parameters", "cc_model_filenames"):
        config.ClearField(field)
    for group in config.instance_group:
        if group.kind == group.KIND_GPU:
            group.kind = group.KIND_CPU
        group.ClearField("gpus")
    if config.HasField("sequence_batching"):
        config.sequence_batching.ClearField("state")
    config.parameters[PARAM_FRAMEWORK].string_value = model.backend
    config.parameters[PARAM_FILE].string_value = model_file(model)
    return ("# staged by triton-deployer: served through the Python backend "
            "(deployer/shim.py)\n" + text_format.MessageToString(config))


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:   # another file system, or links not allowed: copy
        shutil.copy2(source, target)


def stage(repository: Repository, destination: Path, have: Iterable[str]) -> list[Model]:
    """Write the repository as a server with backends ``have`` can serve it into
    ``destination`` (replaced if it exists); return the models that run through the shim.

    Files are hard-linked where the file system allows (copied otherwise); the repository
    itself is only read.
    """
    models = {m.name: m for m in shimmed(repository, have)}
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for model in repository.models.values():   # empty version folders too (an ensemble's)
        for version in model.versions:
            (destination / model.name / str(version)).mkdir(parents=True, exist_ok=True)
    ours = {f"{name}/config.pbtxt" for name in models} | {
        f"{name}/{version}/model.py" for name, model in models.items()
        for version in model.versions}
    for rel, source in repository.files():
        if rel not in ours:   # written below: never through a link to the user's file
            _link(source, destination / rel)
    for name, model in models.items():
        (destination / name / "config.pbtxt").write_text(staged_config(model))
        for version in model.versions:
            (destination / name / str(version) / "model.py").write_text(MODEL_PY)
    return list(models.values())


def describe_all(models: Iterable[Model], versions: Mapping[str, str | None], where: str,
                 warn: Callable[[str], None]) -> dict[str, str]:
    """model → how it is served (``versions``: backend → the framework's version where it
    runs); one warning per model whose config the shim does not fully honour."""
    served = {}
    for model in models:
        served[model.name] = served_by(model, versions.get(model.backend), where)
        dropped = unhonoured(model)
        if dropped:
            warn(f"warning: {model.name}: served with {served[model.name]}; not applied: "
                 f"{', '.join(dropped)}")
    return served


#: the model.py written into each version folder of a shimmed model (runs in the stub)
MODEL_PY = r'''"""Written by triton-deployer: serves this version's ONNX or TorchScript file through
Triton's Python backend (see deployer/shim.py). Not part of the user's repository."""

import json
import os
import re

import numpy as np
import triton_python_backend_utils as pb_utils

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
             "tensor(float16)": "TYPE_FP16", "tensor(int8)": "TYPE_INT8",
             "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32",
             "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8",
             "tensor(uint16)": "TYPE_UINT16", "tensor(uint32)": "TYPE_UINT32",
             "tensor(uint64)": "TYPE_UINT64", "tensor(bool)": "TYPE_BOOL",
             "tensor(string)": "TYPE_STRING"}
INDEXED = re.compile(r"^.+__(\d+)$")


def _fail(message):
    raise pb_utils.TritonModelException(message)


def _indexed(names):
    """Positions by the PyTorch backend's NAME__INDEX convention, or None."""
    found = [INDEXED.match(n) for n in names]
    return [int(m.group(1)) for m in found] if all(found) else None


def _text(array):
    if array.dtype != np.object_:
        return array
    return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v,
                        otypes=[np.object_])(array)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name") or args["model_name"]
        self.batching = config.get("max_batch_size", 0) > 0
        self.inputs = [(t["name"], t["data_type"], t.get("optional", False))
                       for t in config.get("input", [])]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"]))
                        for t in config.get("output", [])]
        path = os.path.join(args["model_repository"], args["model_version"],
                            params["deployer_shim_file"])
        if not os.path.exists(path):
            _fail(f"unable to load model '{self.name}': no file {path}")
        if params["deployer_shim_framework"] == "onnxruntime":
            self._open_onnx(path)
        else:
            self._open_torch(path)

    # -- onnxruntime ------------------------------------------------------------------------
    def _open_onnx(self, path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        declared = {i.name: i for i in self.session.get_inputs()}
        for name, datatype, _ in self.inputs:
            if name not in declared:
                _fail(f"unable to load model '{self.name}': unexpected inference input "
                      f"'{name}', allowed inputs are: {', '.join(declared)}")
            found = ORT_TYPES.get(declared[name].type, declared[name].type)
            if found != datatype:
                _fail(f"unable to load model '{self.name}': configuration expects datatype "
                      f"{datatype} for input '{name}', model provides {found}")
        produced = {o.name: o for o in self.session.get_outputs()}
        for name, _ in self.outputs:
            if name not in produced:
                _fail(f"unable to load model '{self.name}': unexpected inference output "
                      f"'{name}', allowed outputs are: {', '.join(produced)}")
        names = [name for name, _ in self.outputs]
        input_names = [name for name, _, _ in self.inputs]

        def run(arrays):
            feed = {n: _text(a) for n, a in zip(input_names, arrays) if a is not None}
            return self.session.run(names, feed)

        self.run = run

    # -- TorchScript ------------------------------------------------------------------------
    def _open_torch(self, path):
        import torch

        module = torch.jit.load(path, map_location="cpu")
        module.eval()
        names = [name for name, _, _ in self.inputs]
        order = _indexed(names)
        if order is None:
            try:
                arguments = [a.name for a in module.forward.schema.arguments[1:]]
            except AttributeError:
                arguments = names
            if not set(names) <= set(arguments):
                _fail(f"unable to load model '{self.name}': input names must follow the "
                      f"NAME__INDEX convention or match forward()'s arguments "
                      f"({', '.join(arguments)}); got {', '.join(names)}")
            order = [arguments.index(n) for n in names]
        positions = sorted(range(len(names)), key=lambda i: order[i])
        out_order = _indexed([name for name, _ in self.outputs]) or list(range(len(self.outputs)))

        def run(arrays):
            tensors = [torch.from_numpy(np.require(arrays[i], requirements=["C", "W"]))
                       for i in positions]
            with torch.inference_mode():
                result = module(*tensors)
            if isinstance(result, torch.Tensor):
                result = (result,)
            result = list(result)
            if max(out_order, default=-1) >= len(result):
                raise ValueError(f"the module returned {len(result)} output(s); the config "
                                 f"declares {len(self.outputs)}")
            return [result[i].detach().cpu().numpy() for i in out_order]

        self.run = run

    # -- serving ----------------------------------------------------------------------------
    def _arrays(self, request):
        arrays = []
        for name, _, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None and not optional:
                raise ValueError(f"input '{name}' is missing")
            arrays.append(None if tensor is None else tensor.as_numpy())
        return arrays

    def _response(self, results):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, np.asarray(value).astype(dtype, copy=False))
            for (name, dtype), value in zip(self.outputs, results)])

    def execute(self, requests):
        inputs, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                inputs.append((index, self._arrays(request)))
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if self.batching and len(inputs) > 1 and self._stackable([a for _, a in inputs]):
            sizes = [arrays[0].shape[0] for _, arrays in inputs]
            merged = [np.concatenate([arrays[i] for _, arrays in inputs])
                      for i in range(len(self.inputs))]
            try:
                results = self.run(merged)
                cuts = np.cumsum(sizes)[:-1]
                parts = [np.split(np.asarray(r), cuts) for r in results]
                for position, (index, _) in enumerate(inputs):
                    responses[index] = self._response([p[position] for p in parts])
                return responses
            except Exception:
                pass   # answer each request on its own below: its own error, or its result
        for index, arrays in inputs:
            try:
                responses[index] = self._response(self.run(arrays))
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))
        return responses

    @staticmethod
    def _stackable(batches):
        first = batches[0]
        return all(a is not None for arrays in batches for a in arrays) and all(
            len(arrays) == len(first) and all(
                a.shape[1:] == b.shape[1:] and a.dtype == b.dtype for a, b in zip(arrays, first))
            for arrays in batches)
'''
