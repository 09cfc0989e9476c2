"""The Triton model repository: parsed, validated, and described for the targets.

``Repository.load(path)`` reads every ``<model>/config.pbtxt`` with Triton's own protobuf schema
(``tritonclient.grpc.model_config_pb2``) and checks what Triton would reject at load time, so a
layout mistake fails here in a second rather than after a cloud deploy. Every problem is a
``ValidationError`` that names the file and, when there is one, its line.

Only generic rules live here. What a particular target cannot serve (a backend it lacks, a naming
rule of its cloud) is that target's check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.errors import NotFound, ValidationError

if TYPE_CHECKING:  # the real import is in ``Repository.load``: the CLI must start fast
    from tritonclient.grpc.model_config_pb2 import ModelConfig

#: Tensor data types as the KServe v2 protocol (and Triton's model metadata) names them.
KSERVE_DTYPES: tuple[str, ...] = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)

#: ``platform`` -> the backend that serves it.
_PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "ensemble": "ensemble",
}

#: backend -> the file (or folder) Triton looks for in a version folder by default.
_DEFAULT_MODEL_FILES = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}

_SKIPPED_DIRS = frozenset({"__pycache__"})


def _ignored_dir(name: str) -> bool:
    return name.startswith(".") or name in _SKIPPED_DIRS


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, as its ``config.pbtxt`` declares it."""

    name: str
    #: KServe v2 name, one of ``KSERVE_DTYPES`` (``TYPE_STRING`` becomes ``"BYTES"``)
    datatype: str
    #: as in ``config.pbtxt``, without the batch dimension; -1 is a dynamic dimension
    dims: tuple[int, ...]
    optional: bool = False

    def shape(self, max_batch_size: int) -> tuple[int, ...]:
        """The shape Triton's model metadata reports: ``(-1, *dims)`` for a batching model."""
        return (-1, *self.dims) if max_batch_size > 0 else self.dims


@dataclass(frozen=True)
class Model:
    """One model folder of the repository."""

    name: str
    #: the model folder
    path: Path
    config_path: Path
    #: the parsed ``tritonclient.grpc.model_config_pb2.ModelConfig``
    config: ModelConfig
    #: "python", "onnxruntime", "pytorch", "tensorflow", "tensorrt", "openvino", "ensemble",
    #: or the config's own ``backend`` string for a custom backend
    backend: str
    #: as in the config; "" when unset
    platform: str
    #: the numeric version folders, sorted
    versions: tuple[int, ...]
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: for an ensemble, the models its steps use, in step order, each once; () otherwise
    steps: tuple[str, ...]

    @property
    def is_ensemble(self) -> bool:
        return self.backend == "ensemble"

    @property
    def stateful(self) -> bool:
        """Whether requests belong to sequences (``sequence_batching``): each needs a
        correlation id, with start and end flags."""
        return self.config.HasField("sequence_batching")

    @property
    def decoupled(self) -> bool:
        """Whether the model answers a request with any number of responses
        (``model_transaction_policy { decoupled: true }``): it needs a streaming call."""
        return self.config.model_transaction_policy.decoupled

    def served_versions(self) -> tuple[int, ...]:
        """The version folders Triton serves under the config's ``version_policy``: the
        newest one by default (``latest { num_versions: N }``: the N newest), every one
        (``all``), or the ``specific`` ones that exist."""
        policy = self.config.version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return self.versions
        if kind == "specific":
            return tuple(v for v in self.versions if v in set(policy.specific.versions))
        count = policy.latest.num_versions if kind == "latest" else 1
        return self.versions[-max(count, 1):]


@dataclass(frozen=True)
class Repository:
    """A validated Triton model repository: one folder per model."""

    #: absolute and resolved
    path: Path
    #: by model name, sorted by name
    models: dict[str, Model]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Repository:
        """Parse and validate the repository at ``path``.

        Raises ``ValidationError`` on the first problem found.
        """
        return _Loader(path).load()

    def backends(self) -> set[str]:
        """The backends the models need (``"ensemble"`` included when there is an ensemble)."""
        return {model.backend for model in self.models.values()}

    def dependencies(self, name: str) -> list[str]:
        """``name`` first, then, for an ensemble, every model it uses, transitively, each once."""
        if name not in self.models:
            raise NotFound(f"no model {name!r} in {self.path}: the models are "
                           f"{', '.join(self.models) or '(none)'}")
        found = [name]
        for current in found:  # grows while we walk it: breadth first
            for step in self.models[current].steps:
                if step not in found:
                    found.append(step)
        return found

    def top_level(self) -> list[str]:
        """The models that no ensemble of the repository uses as a step, sorted."""
        used = {step for model in self.models.values() for step in model.steps}
        return [name for name in self.models if name not in used]

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every regular file as (posix path relative to the root, absolute path), sorted.

        ``__pycache__`` folders and ``*.pyc`` files are skipped. A symlink (validation has made sure
        it stays inside the repository) yields its target's path, so whoever copies or archives
        the file stores the content, never a link.
        """
        yield from _walk(self.path, str(self.path))


# --- loading ------------------------------------------------------------------------------------


def _walk(root: Path, shown: str) -> Iterator[tuple[str, Path]]:
    """Files under ``root``, sorted; refuses symlinks that leave ``root``, dangle or loop."""
    found: list[tuple[str, Path]] = []

    def visit(directory: Path, rel: str, chain: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            names = sorted((entry.name, entry.is_symlink()) for entry in entries)
        for name, is_link in names:
            child_rel = f"{rel}/{name}" if rel else name
            child = directory / name
            if is_link:
                target = Path(os.path.realpath(child))
                if not target.exists():
                    raise ValidationError(
                        f"broken symlink (to {os.readlink(child)}): remove it or copy the file "
                        "into the repository", path=os.path.join(shown, child_rel))
                if not target.is_relative_to(root):
                    raise ValidationError(
                        f"symlink points outside the repository (to {target}): copy the file into "
                        "the repository; targets upload the repository alone",
                        path=os.path.join(shown, child_rel))
                child = target
            if child.is_dir():
                if name in _SKIPPED_DIRS:
                    continue
                if child in chain:
                    raise ValidationError(
                        "symlink loop (points at a folder that contains it): remove it",
                        path=os.path.join(shown, child_rel))
                visit(child, child_rel, chain | {child})
            elif child.is_file() and not name.endswith(".pyc"):
                found.append((child_rel, child))

    visit(root, "", frozenset({root}))
    found.sort(key=lambda item: item[0])
    yield from found


def _blank_comments(text: str) -> str:
    """``text`` with ``#`` comments blanked, so line searches skip them; line numbers are kept."""
    out = []
    for line in text.split("\n"):
        quote, escaped = None, False
        for index, char in enumerate(line):
            if escaped:
                escaped = False
            elif quote:
                escaped = char == "\\"
                quote = None if char == quote else quote
            elif char in "\"'":
                quote = char
            elif char == "#":
                line = line[:index] + " " * (len(line) - index)
                break
        out.append(line)
    return "\n".join(out)


class _ConfigText:
    """Finds the line of a field in a ``config.pbtxt`` for an error; parsing is protobuf's."""

    def __init__(self, text: str):
        self.text = _blank_comments(text)

    def offset(self, pattern: str, start: int = 0) -> int | None:
        """Where ``pattern`` first matches from ``start`` (its group ``at``, if it has one)."""
        match = re.compile(pattern, re.MULTILINE).search(self.text, start)
        if match is None:
            return None
        return match.start("at") if "at" in match.re.groupindex else match.start()

    def line_at(self, offset: int | None) -> int | None:
        return None if offset is None else self.text.count("\n", 0, offset) + 1

    def line(self, pattern: str, start: int = 0) -> int | None:
        return self.line_at(self.offset(pattern, start))

    @staticmethod
    def field(field: str, value: str | None = None) -> str:
        """A pattern for ``field: "value"`` (or any value), not matching ``other_field``."""
        if value is None:
            return rf"(?<![\w.]){field}\s*:"
        return rf"(?<![\w.]){field}\s*:\s*[\"']{re.escape(value)}[\"']"

    def nth(self, pattern: str, n: int, start: int = 0) -> int | None:
        """The offset of the ``n``-th (0-based) match of ``pattern`` from ``start``."""
        offset = start
        for _ in range(n + 1):
            found = self.offset(pattern, offset)
            if found is None:
                return None
            offset = found + 1
        return offset - 1


class _Loader:
    def __init__(self, path: str | os.PathLike):
        self.shown = os.path.normpath(os.fspath(path))
        self.root = Path(path).resolve()

    def where(self, *parts: str) -> str:
        return os.path.join(self.shown, *parts)

    def load(self) -> Repository:
        if not self.root.exists():
            raise ValidationError("no such model repository: check the path", path=self.shown)
        if not self.root.is_dir():
            raise ValidationError("not a directory: pass the model repository folder, which holds "
                                  "one folder per model", path=self.shown)
        for _ in _walk(self.root, self.shown):  # symlink checks on the whole tree
            pass
        if (self.root / "config.pbtxt").exists():
            raise ValidationError(
                "config.pbtxt at the repository root: the repository must hold one folder per "
                f"model; move the model into {self.where('<model>')}/ or pass the folder above it",
                path=self.where("config.pbtxt"))

        folders = sorted(entry.name for entry in self.root.iterdir()
                         if entry.is_dir() and not _ignored_dir(entry.name))
        with_config = [name for name in folders if (self.root / name / "config.pbtxt").is_file()]
        if not with_config:
            raise ValidationError(
                "not a Triton model repository: expected "
                f"{self.where('<model>', 'config.pbtxt')}", path=self.shown,
                hint="a model is a folder with a config.pbtxt and numeric version folders "
                     "such as 1/")
        for name in folders:
            if name not in with_config:
                raise ValidationError(
                    "model folder has no config.pbtxt: add one, or move the folder out of the "
                    "repository", path=self.where(name))

        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        texts: dict[str, _ConfigText] = {}
        models: dict[str, Model] = {}
        for name in with_config:
            models[name], texts[name] = self.load_model(name, text_format, model_config_pb2)
        for model in models.values():
            if model.is_ensemble:
                self.check_ensemble(model, texts[model.name], models)
        self.check_cycles(models, texts)
        return Repository(path=self.root, models=models)

    def load_model(self, name: str, text_format, model_config_pb2) -> tuple[Model, _ConfigText]:
        folder = self.root / name
        config_path = folder / "config.pbtxt"
        shown = self.where(name, "config.pbtxt")
        try:
            raw = config_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValidationError(f"not UTF-8 text ({err.reason}): save config.pbtxt as UTF-8",
                                  path=shown) from None
        except OSError as err:
            raise ValidationError(f"cannot read config.pbtxt: {err.strerror}", path=shown) from None
        try:
            config = text_format.Parse(raw, model_config_pb2.ModelConfig())
        except text_format.ParseError as err:
            message = re.sub(r"^\d+:\d+ : ", "", str(err))
            raise ValidationError(f"invalid config.pbtxt: {message}", path=shown,
                                  line=err.GetLine() or None) from None
        text = _ConfigText(raw)

        if config.name and config.name != name:
            raise ValidationError(
                f"name {config.name!r} differs from the folder name {name!r}: Triton requires them "
                "to match; rename one, or remove the name line",
                path=shown, line=text.line(text.field("name", config.name)))

        backend = self.backend_of(config, text, shown)
        versions = self.versions_of(folder, name)
        self.check_model_files(config, backend, folder, name, versions)
        inputs = self.tensors(config.input, "input", model_config_pb2, text, shown)
        outputs = self.tensors(config.output, "output", model_config_pb2, text, shown)

        steps: list[str] = []
        if backend == "ensemble":
            if not config.ensemble_scheduling.step:
                raise ValidationError(
                    "an ensemble needs ensemble_scheduling { step [...] }: add its steps",
                    path=shown, line=text.line(text.field("platform", "ensemble")))
            for step in config.ensemble_scheduling.step:
                if step.model_name not in steps:
                    steps.append(step.model_name)

        model = Model(name=name, path=folder, config_path=config_path, config=config,
                      backend=backend, platform=config.platform, versions=versions,
                      max_batch_size=config.max_batch_size, inputs=inputs, outputs=outputs,
                      steps=tuple(steps))
        return model, text

    def backend_of(self, config, text: _ConfigText, shown: str) -> str:
        platform_backend = _PLATFORM_BACKENDS.get(config.platform)
        if config.backend:
            if config.platform and platform_backend != config.backend:
                raise ValidationError(
                    f"backend {config.backend!r} does not match platform {config.platform!r}: "
                    "keep one of them", path=shown, line=text.line(text.field("platform")))
            return config.backend
        if not config.platform:
            raise ValidationError(
                'neither backend nor platform is set: add e.g. backend: "python" or '
                'platform: "onnxruntime_onnx"', path=shown)
        if platform_backend is None:
            raise ValidationError(
                f"unknown platform {config.platform!r}: use one of "
                f"{', '.join(sorted(_PLATFORM_BACKENDS))}, or set backend instead",
                path=shown, line=text.line(text.field("platform")))
        return platform_backend

    def versions_of(self, folder: Path, name: str) -> tuple[int, ...]:
        versions = []
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir() or _ignored_dir(entry.name):
                continue
            if not (entry.name.isascii() and entry.name.isdigit()):
                raise ValidationError(
                    "not a version folder: a model folder holds numeric version folders "
                    "(1/, 2/, ...); rename it or move it out", path=self.where(name, entry.name))
            if len(entry.name) > 1 and entry.name.startswith("0"):
                raise ValidationError(
                    f"version folder has a leading zero: Triton ignores it; rename it to "
                    f"{int(entry.name)}", path=self.where(name, entry.name))
            versions.append(int(entry.name))
        if not versions:
            raise ValidationError(
                f"no version folder: put the model in {self.where(name, '1')}/",
                path=self.where(name))
        return tuple(sorted(versions))

    def check_model_files(self, config, backend: str, folder: Path, name: str,
                          versions: tuple[int, ...]) -> None:
        filename = config.default_model_filename
        if not filename:
            if config.platform == "tensorflow_graphdef":
                filename = "model.graphdef"
            else:
                filename = _DEFAULT_MODEL_FILES.get(backend, "")
        if not filename:  # an ensemble or a custom backend: nothing we know to look for
            return
        for version in versions:
            if not (folder / str(version) / filename).exists():
                raise ValidationError(
                    f"missing model file for version {version} of {backend} model {name!r}: add "
                    "it, or set default_model_filename in config.pbtxt",
                    path=self.where(name, str(version), filename))

    def tensors(self, specs, kind: str, model_config_pb2, text: _ConfigText,
                shown: str) -> tuple[TensorSpec, ...]:
        section = text.offset(rf"(?<![\w.]){kind}\s*:?\s*[\[{{]")
        seen: dict[str, int] = {}
        result = []
        for spec in specs:
            occurrence = seen.get(spec.name, 0)
            seen[spec.name] = occurrence + 1
            line = text.line_at(text.nth(text.field("name", spec.name), occurrence, section or 0))
            if not spec.name:
                raise ValidationError(f"an {kind} has no name: add name: \"...\"", path=shown,
                                      line=text.line_at(section))
            if occurrence:
                raise ValidationError(
                    f"duplicate {kind} {spec.name!r}: tensor names must be unique",
                    path=shown, line=line)
            if spec.data_type == model_config_pb2.TYPE_INVALID:
                raise ValidationError(f"{kind} {spec.name!r} has no data_type: add e.g. "
                                      "data_type: TYPE_FP32", path=shown, line=line)
            bad = [dim for dim in spec.dims if dim == 0 or dim < -1]
            if bad:
                raise ValidationError(
                    f"{kind} {spec.name!r} has dimension {bad[0]}: dims are positive sizes, or -1 "
                    "for a dynamic size", path=shown, line=line)
            type_name = model_config_pb2.DataType.Name(spec.data_type).removeprefix("TYPE_")
            result.append(TensorSpec(
                name=spec.name,
                datatype="BYTES" if type_name == "STRING" else type_name,
                dims=tuple(spec.dims),
                optional=bool(getattr(spec, "optional", False)),
            ))
        return tuple(result)

    def check_ensemble(self, model: Model, text: _ConfigText, models: dict[str, Model]) -> None:
        shown = self.where(model.name, "config.pbtxt")
        start = text.offset(text.field("ensemble_scheduling")) or 0
        model_name = text.field("model_name")
        anchors = []
        for index in range(len(model.config.ensemble_scheduling.step)):
            anchors.append(text.nth(model_name, index, start))
        produced: set[str] = set()
        for index, step in enumerate(model.config.ensemble_scheduling.step):
            anchor = anchors[index]
            line = text.line_at(anchor)
            used = models.get(step.model_name)
            if used is None:
                raise ValidationError(
                    f"ensemble step uses model {step.model_name!r}, which is not in the "
                    f"repository: add {self.where(step.model_name)}/ or fix model_name",
                    path=shown, line=line)

            for kind, mapping, tensors in (("input", step.input_map, used.inputs),
                                           ("output", step.output_map, used.outputs)):
                names = {tensor.name for tensor in tensors}
                for key in mapping:
                    if key not in names:
                        raise ValidationError(
                            f"{kind}_map key {key!r} is not an {kind} of model "
                            f"{step.model_name!r} (its {kind}s: {', '.join(sorted(names))}): "
                            "fix the key", path=shown,
                            line=self.key_line(text, kind, key, anchors, index, start) or line)
            produced.update(step.output_map.values())

        # Triton's own ensemble rules: every tensor a step reads exists, every output is produced.
        available = {tensor.name for tensor in model.inputs} | produced
        for index, step in enumerate(model.config.ensemble_scheduling.step):
            for key, value in step.input_map.items():
                if value not in available:
                    raise ValidationError(
                        f"ensemble step {step.model_name!r} reads {value!r}, which is neither an "
                        "input of the ensemble nor an output_map value of a step: fix the value",
                        path=shown, line=text.line(text.field("value", value), anchors[index] or 0))
        for tensor in model.outputs:
            if tensor.name not in produced:
                raise ValidationError(
                    f"ensemble output {tensor.name!r} is not produced by any step: map a step's "
                    f"output to it in output_map",
                    path=shown, line=text.line(text.field("name", tensor.name),
                                               text.offset(r"(?<![\w.])output\s*:?\s*[\[{]") or 0))

    @staticmethod
    def key_line(text: _ConfigText, kind: str, key: str, anchors: list[int | None], index: int,
                 start: int) -> int | None:
        """The line of ``key: "KEY"`` in the ``{kind}_map`` of step ``index``.

        Looked for after the step's model_name, then after the previous step's (a step may list
        its maps before its model_name); a bare ``key:`` line when the map syntax is unusual.
        """
        key_field = text.field("key", key)
        in_map = (rf"(?<![\w.]){kind}_map\s*:?\s*(?:\[[^\]]*?|\{{[^}}]*?)(?P<at>{key_field})")
        previous = anchors[index - 1] if index else start
        for pattern in (in_map, key_field):
            for origin in (anchors[index], previous):
                if origin is not None and (found := text.offset(pattern, origin)) is not None:
                    return text.line_at(found)
        return None

    def check_cycles(self, models: dict[str, Model], texts: dict[str, _ConfigText]) -> None:
        done: set[str] = set()

        def visit(chain: list[str]) -> None:
            name = chain[-1]
            if name in done:
                return
            for step in models[name].steps:
                if step in chain:
                    cycle = [*chain[chain.index(step):], step]
                    first, second = cycle[0], cycle[1]
                    raise ValidationError(
                        f"ensemble {first!r} uses itself ({' -> '.join(cycle)}): remove that step",
                        path=self.where(first, "config.pbtxt"),
                        line=texts[first].line(_ConfigText.field("model_name", second)))
                visit([*chain, step])
            done.add(name)

        for name in models:
            visit([name])
