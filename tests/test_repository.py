"""deployer.repository: loading, each validation rule with its file and line, the shared repos."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.errors import NotFound, ValidationError
from deployer.repository import KSERVE_DTYPES, Repository, TensorSpec

REPOS = Path(__file__).parent / "repos"

# Line numbers matter in these tests: `name:` is on line 1, the input's `name:` on line 5,
# the output's `name:` on line 12.
PYTHON_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "IN"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }}
]
output [
  {{
    name: "OUT"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }}
]
"""


def python_config(name: str = "m", old: str = "", new: str = "", count: int = -1) -> str:
    """``PYTHON_CONFIG`` for model ``name``, with ``old`` replaced by ``new``."""
    text = PYTHON_CONFIG.format(name=name)
    return text.replace(old, new, count) if old else text


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def python_model(repo: Path, name: str, config: str | None = None) -> Path:
    folder = repo / name
    write(folder / "config.pbtxt", PYTHON_CONFIG.format(name=name) if config is None else config)
    write(folder / "1" / "model.py", "")
    return folder


def ensemble(repo: Path, name: str, steps: list[tuple[str, dict, dict]], *,
             inputs=("IN",), outputs=("OUT",)) -> Path:
    """An ensemble of FP32 [3] tensors; each step is (model_name, input_map, output_map)."""
    def tensors(names):
        return ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ 3 ] }}' for n in names)

    def maps(kind, mapping):
        return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in mapping.items())

    body = "".join(f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
                   f'{maps("input_map", ins)}{maps("output_map", outs)}    }},\n'
                   for model, ins, outs in steps).rstrip(",\n") + "\n"
    config = (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
              f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
              f"ensemble_scheduling {{\n  step [\n{body}  ]\n}}\n")
    folder = repo / name
    write(folder / "config.pbtxt", config)
    (folder / "1").mkdir(exist_ok=True)
    return folder


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def line_of(path: Path, needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle`` (a test-side check of the fixture)."""
    return [i for i, line in enumerate(lines(path), 1) if needle in line][nth]


def load_error(repo: Path | str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Repository.load(repo)
    err = caught.value
    assert "\n" not in str(err)
    return err


def assert_points_at(err: ValidationError, path: Path | str, line: int | None = None) -> None:
    assert err.path == str(path)
    assert err.line == line
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert str(err).startswith(prefix), str(err)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


# --- the repository folder ----------------------------------------------------------------------


def test_missing_path(tmp_path: Path):
    err = load_error(tmp_path / "nope")
    assert_points_at(err, tmp_path / "nope")
    assert "no such model repository" in str(err)


def test_path_is_a_file(tmp_path: Path):
    file = write(tmp_path / "model.tar.gz", "x")
    err = load_error(file)
    assert_points_at(err, file)
    assert "not a directory" in str(err)


@pytest.mark.parametrize("content", [
    {},
    {"notes.txt": "", "models/1/model.py": ""},           # a folder, but no config.pbtxt in it
    {".hidden/config.pbtxt": "", "__pycache__/config.pbtxt": ""},  # ignored folders do not count
])
def test_no_config_anywhere(repo: Path, content: dict):
    for rel, text in content.items():
        write(repo / rel, text)
    err = load_error(repo)
    assert_points_at(err, repo)
    assert f"not a Triton model repository: expected {repo}/<model>/config.pbtxt" in str(err)


def test_config_at_the_root(repo: Path):
    write(repo / "config.pbtxt", PYTHON_CONFIG.format(name="repo"))
    write(repo / "1" / "model.py")
    err = load_error(repo)
    assert_points_at(err, repo / "config.pbtxt")
    assert "one folder per model" in str(err)


def test_model_folder_without_config(repo: Path):
    python_model(repo, "good")
    (repo / "stray" / "1").mkdir(parents=True)
    err = load_error(repo)
    assert_points_at(err, repo / "stray")
    assert "has no config.pbtxt" in str(err)


def test_hidden_folders_pycache_and_loose_files_at_the_root_are_ignored(repo: Path):
    python_model(repo, "good")
    (repo / ".ipynb_checkpoints").mkdir()
    (repo / "__pycache__").mkdir()
    write(repo / "README.md", "# models")
    assert list(Repository.load(repo).models) == ["good"]


def test_error_paths_are_shown_as_given(repo: Path, monkeypatch):
    python_model(repo, "m", PYTHON_CONFIG.format(name="other"))
    monkeypatch.chdir(repo.parent)
    err = load_error("repo")
    assert str(err).startswith("repo/m/config.pbtxt:1: ")


# --- config.pbtxt -------------------------------------------------------------------------------


@pytest.mark.parametrize("config, line", [
    ('name: "m"\nbackend: "python"\nmax_batch_size: eight\ninput [ ]\n', 3),
    ('name: "m"\nbackend: "python"\n\ninput [ { name: "IN" \n', 4),  # unterminated: the last line
    ('name: "m"\nbackend: "python"\nname: "m"\n', 3),
])
def test_malformed_config_reports_protobufs_line(repo: Path, config: str, line: int):
    folder = python_model(repo, "m", config)
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line)
    assert "invalid config.pbtxt" in str(err)


def test_unknown_field_and_enum_are_parse_errors_with_their_line(repo: Path):
    folder = python_model(repo, "m", python_config("m").replace(
        "data_type: TYPE_FP32", "data_type: TYPE_FLOAT", 1))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 6)
    assert "TYPE_FLOAT" in str(err)

    write(folder / "config.pbtxt", PYTHON_CONFIG.format(name="m") + "max_batch: 4\n")
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 17)
    assert '"max_batch"' in str(err)


def test_name_differs_from_folder(repo: Path):
    config = "# model: renamed\n" + PYTHON_CONFIG.format(name="renamed")
    folder = python_model(repo, "m", config)
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 2)
    assert "'renamed' differs from the folder name 'm'" in str(err)


def test_line_search_skips_comments(repo: Path):
    config = '# name: "renamed" (old)\n' + PYTHON_CONFIG.format(name="renamed")
    folder = python_model(repo, "m", config)
    assert_points_at(load_error(repo), folder / "config.pbtxt", 2)


def test_empty_name_takes_the_folder_name(repo: Path):
    python_model(repo, "m", python_config("m").replace('name: "m"\n', "", 1))
    model = Repository.load(repo).models["m"]
    assert model.name == "m"
    assert model.config.name == ""


def test_not_utf8(repo: Path):
    folder = python_model(repo, "m")
    (folder / "config.pbtxt").write_bytes(b'name: "m\xff"\n')
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt")
    assert "UTF-8" in str(err)


# --- version folders ----------------------------------------------------------------------------


def test_no_version_folder(repo: Path):
    folder = repo / "m"
    write(folder / "config.pbtxt", PYTHON_CONFIG.format(name="m"))
    write(folder / "model.py")  # beside the config, not in a version folder
    err = load_error(repo)
    assert_points_at(err, folder)
    assert f"put the model in {folder}/1/" in str(err)


def test_non_numeric_folder_in_a_model_folder(repo: Path):
    folder = python_model(repo, "m")
    (folder / "latest").mkdir()
    err = load_error(repo)
    assert_points_at(err, folder / "latest")
    assert "not a version folder" in str(err)


def test_versions_are_sorted_numbers_and_hidden_folders_are_ignored(repo: Path):
    folder = python_model(repo, "m")
    for version in ("10", "2", "3"):
        write(folder / version / "model.py")
    (folder / ".git").mkdir()
    (folder / "__pycache__").mkdir()
    write(folder / "labels.txt", "a\nb\n")  # loose files beside config.pbtxt are fine
    assert Repository.load(repo).models["m"].versions == (1, 2, 3, 10)


# --- backend and platform -----------------------------------------------------------------------


def test_neither_backend_nor_platform(repo: Path):
    folder = python_model(repo, "m", python_config("m", 'backend: "python"\n', ""))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt")
    assert "neither backend nor platform is set" in str(err)


def test_unknown_platform(repo: Path):
    folder = python_model(repo, "m", python_config("m").replace(
        'backend: "python"', 'platform: "caffe2_netdef"'))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 2)
    assert "unknown platform 'caffe2_netdef'" in str(err)


def test_backend_and_platform_disagree(repo: Path):
    folder = python_model(repo, "m", python_config("m").replace(
        'backend: "python"', 'backend: "python"\nplatform: "onnxruntime_onnx"'))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 3)
    assert "does not match platform" in str(err)


@pytest.mark.parametrize("field, backend, filename", [
    ('backend: "python"', "python", "model.py"),
    ('backend: "onnxruntime"', "onnxruntime", "model.onnx"),
    ('platform: "onnxruntime_onnx"', "onnxruntime", "model.onnx"),
    ('platform: "pytorch_libtorch"', "pytorch", "model.pt"),
    ('backend: "pytorch"', "pytorch", "model.pt"),
    ('platform: "tensorflow_savedmodel"', "tensorflow", "model.savedmodel"),
    ('platform: "tensorflow_graphdef"', "tensorflow", "model.graphdef"),
    ('platform: "tensorrt_plan"', "tensorrt", "model.plan"),
    ('backend: "openvino"', "openvino", "model.xml"),
])
def test_model_file_per_backend(repo: Path, field: str, backend: str, filename: str):
    folder = repo / "m"
    write(folder / "config.pbtxt", python_config("m", 'backend: "python"', field))
    write(folder / "1" / filename)
    (folder / "2").mkdir()
    err = load_error(repo)
    assert_points_at(err, folder / "2" / filename)
    assert "missing model file for version 2" in str(err)

    (folder / "2" / filename).mkdir()  # a SavedModel is a folder: existing is enough
    model = Repository.load(repo).models["m"]
    assert model.backend == backend
    assert model.platform == (field.split('"')[1] if field.startswith("platform") else "")


def test_default_model_filename_wins(repo: Path):
    config = python_config("m").replace(
        'backend: "python"', 'backend: "onnxruntime"\ndefault_model_filename: "net.onnx"')
    folder = repo / "m"
    write(folder / "config.pbtxt", config)
    write(folder / "1" / "model.onnx")
    assert_points_at(load_error(repo), folder / "1" / "net.onnx")
    write(folder / "1" / "net.onnx")
    assert Repository.load(repo).models["m"].backend == "onnxruntime"


def test_version_with_a_leading_zero(repo: Path):
    # Triton 2.51 logs "ignore version directory '01' which contains leading zeros" and then
    # fails the model for want of a version: refuse it here.
    folder = repo / "m"
    write(folder / "config.pbtxt", PYTHON_CONFIG.format(name="m"))
    write(folder / "01" / "model.py")
    err = load_error(repo)
    assert_points_at(err, folder / "01")
    assert "leading zero" in str(err) and "rename it to 1" in str(err)


def test_version_zero_is_a_version(repo: Path):
    folder = repo / "m"
    write(folder / "config.pbtxt", PYTHON_CONFIG.format(name="m"))
    write(folder / "0" / "model.py")
    assert Repository.load(repo).models["m"].versions == (0,)


def test_custom_backend_and_ensemble_need_no_model_file(repo: Path):
    folder = repo / "m"
    write(folder / "config.pbtxt", python_config("m").replace("python", "my_backend"))
    (folder / "1").mkdir()
    python_model(repo, "inner")
    ensemble(repo, "ens", [("inner", {"IN": "IN"}, {"OUT": "OUT"})])
    repository = Repository.load(repo)
    assert repository.models["m"].backend == "my_backend"
    assert repository.models["ens"].backend == "ensemble"
    assert repository.backends() == {"my_backend", "python", "ensemble"}


# --- inputs and outputs -------------------------------------------------------------------------


def test_missing_data_type(repo: Path):
    folder = python_model(repo, "m", python_config("m").replace(
        "    data_type: TYPE_FP32\n", "", 1))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 5)
    assert "input 'IN' has no data_type" in str(err)


def test_type_invalid_is_missing(repo: Path):
    head, tail = PYTHON_CONFIG.format(name="m").split("output [")
    folder = python_model(repo, "m", head + "output [" + tail.replace("TYPE_FP32", "TYPE_INVALID"))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 12)
    assert "output 'OUT' has no data_type" in str(err)


@pytest.mark.parametrize("dims", ["[ 0 ]", "[ 3, -2 ]"])
def test_bad_dims(repo: Path, dims: str):
    folder = python_model(repo, "m", python_config("m", "dims: [ 3 ]", f"dims: {dims}", 1))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 5)
    assert f"input 'IN' has dimension {dims.strip('[ ]').split(', ')[-1]}" in str(err)


def test_duplicate_tensor_points_at_the_second(repo: Path):
    config = python_config("m").replace(
        "]\noutput", '  ,{ name: "IN" data_type: TYPE_FP32 dims: [ 3 ] }\n]\noutput')
    folder = python_model(repo, "m", config)
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", '"IN"', 1))
    assert err.line == 9
    assert "duplicate input 'IN'" in str(err)


def test_tensor_line_is_found_in_its_section(repo: Path):
    # the model, an input and an output share a name: the output's line must be found
    head, tail = python_config("same", '"IN"', '"same"').replace('"OUT"', '"same"').split("output [")
    folder = python_model(repo, "same", head + "output [" + tail.replace("[ 3 ]", "[ 0 ]"))
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 12)
    assert "output 'same' has dimension 0" in str(err)


def test_tensor_specs(repo: Path):
    config = """\
backend: "python"
max_batch_size: 2
input [
  { name: "T" data_type: TYPE_STRING dims: [ -1 ] optional: true },
  { name: "B" data_type: TYPE_BF16 dims: [ 2, -1 ] }
]
output [ { name: "O" data_type: TYPE_UINT64 dims: [ 1 ] } ]
"""
    python_model(repo, "m", config)
    model = Repository.load(repo).models["m"]
    assert model.max_batch_size == 2
    assert model.inputs == (TensorSpec("T", "BYTES", (-1,), optional=True),
                            TensorSpec("B", "BF16", (2, -1)))
    assert model.outputs == (TensorSpec("O", "UINT64", (1,)),)
    assert model.inputs[1].shape(model.max_batch_size) == (-1, 2, -1)
    assert model.inputs[1].shape(0) == (2, -1)
    assert {t.datatype for t in (*model.inputs, *model.outputs)} <= set(KSERVE_DTYPES)


def test_kserve_dtypes_cover_every_config_type():
    from tritonclient.grpc import model_config_pb2

    names = {name.removeprefix("TYPE_") for name in model_config_pb2.DataType.keys()} - {"INVALID"}
    assert set(KSERVE_DTYPES) == (names - {"STRING"}) | {"BYTES"}
    assert len(KSERVE_DTYPES) == 14


# --- ensembles ----------------------------------------------------------------------------------


def test_ensemble_step_model_missing(repo: Path):
    python_model(repo, "inner")
    folder = ensemble(repo, "ens", [("inner", {"IN": "IN"}, {"OUT": "mid"}),
                                    ("ghost", {"IN": "mid"}, {"OUT": "OUT"})])
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", '"ghost"'))
    assert "model 'ghost', which is not in the repository" in str(err)


def test_ensemble_uses_itself(repo: Path):
    folder = ensemble(repo, "ens", [("ens", {"IN": "IN"}, {"OUT": "OUT"})])
    err = load_error(repo)
    path = folder / "config.pbtxt"
    assert_points_at(err, path, line_of(path, 'model_name: "ens"'))
    assert "ensemble 'ens' uses itself (ens -> ens)" in str(err)


def test_ensemble_uses_itself_through_another(repo: Path):
    python_model(repo, "inner")
    a = ensemble(repo, "a", [("inner", {"IN": "IN"}, {"OUT": "mid"}),
                             ("b", {"IN": "mid"}, {"OUT": "OUT"})])
    ensemble(repo, "b", [("a", {"IN": "IN"}, {"OUT": "OUT"})])
    err = load_error(repo)
    assert_points_at(err, a / "config.pbtxt", line_of(a / "config.pbtxt", 'model_name: "b"'))
    assert "ensemble 'a' uses itself (a -> b -> a)" in str(err)


def test_ensemble_input_map_key_not_an_input(repo: Path):
    python_model(repo, "inner")
    folder = ensemble(repo, "ens", [("inner", {"IN": "IN"}, {"OUT": "mid"}),
                                    ("inner", {"INPUT": "mid"}, {"OUT": "OUT"})])
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", 'key: "INPUT"'))
    assert err.line == 21
    assert "input_map key 'INPUT' is not an input of model 'inner' (its inputs: IN)" in str(err)


def test_ensemble_output_map_key_not_an_output(repo: Path):
    python_model(repo, "inner")
    folder = ensemble(repo, "ens", [("inner", {"IN": "IN"}, {"OUT": "mid"}),
                                    ("inner", {"IN": "mid"}, {"IN": "OUT"})])
    err = load_error(repo)
    # the output_map's key "IN" (line 22), not an input_map's key "IN" (lines 13 and 21)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", 'key: "IN"', 2))
    assert err.line == 22
    assert "output_map key 'IN' is not an output of model 'inner'" in str(err)


def test_ensemble_step_reads_an_unknown_tensor(repo: Path):
    python_model(repo, "inner")
    folder = ensemble(repo, "ens", [("inner", {"IN": "nowhere"}, {"OUT": "OUT"})])
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", '"nowhere"'))
    assert "reads 'nowhere'" in str(err)


def test_ensemble_output_not_produced(repo: Path):
    python_model(repo, "inner")
    folder = ensemble(repo, "ens", [("inner", {"IN": "IN"}, {"OUT": "mid"})])
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", line_of(folder / "config.pbtxt", 'name: "OUT"'))
    assert "ensemble output 'OUT' is not produced by any step" in str(err)


def test_ensemble_without_steps(repo: Path):
    folder = repo / "ens"
    write(folder / "config.pbtxt", 'name: "ens"\nplatform: "ensemble"\n')
    (folder / "1").mkdir()
    err = load_error(repo)
    assert_points_at(err, folder / "config.pbtxt", 2)
    assert "needs ensemble_scheduling" in str(err)


def test_dependencies_and_top_level(repo: Path):
    python_model(repo, "a")
    python_model(repo, "b")
    python_model(repo, "lonely")
    ensemble(repo, "inner", [("a", {"IN": "IN"}, {"OUT": "mid"}),
                             ("b", {"IN": "mid"}, {"OUT": "OUT"})])
    ensemble(repo, "outer", [("b", {"IN": "IN"}, {"OUT": "m1"}),
                             ("inner", {"IN": "m1"}, {"OUT": "m2"}),
                             ("b", {"IN": "m2"}, {"OUT": "OUT"})])
    repository = Repository.load(repo)
    assert list(repository.models) == ["a", "b", "inner", "lonely", "outer"]
    assert repository.models["outer"].steps == ("b", "inner")
    assert repository.models["outer"].is_ensemble and not repository.models["a"].is_ensemble
    assert repository.dependencies("outer") == ["outer", "b", "inner", "a"]
    assert repository.dependencies("a") == ["a"]
    assert repository.top_level() == ["lonely", "outer"]
    with pytest.raises(NotFound, match="no model 'nope'"):
        repository.dependencies("nope")


# --- symlinks and files -------------------------------------------------------------------------


def test_symlink_outside_the_repository(repo: Path, tmp_path: Path):
    folder = python_model(repo, "m")
    weights = write(tmp_path / "weights.bin", "w")
    (folder / "1" / "weights.bin").symlink_to(weights)
    err = load_error(repo)
    assert_points_at(err, folder / "1" / "weights.bin")
    assert "copy the file into the repository" in str(err)


def test_symlinked_folder_outside_the_repository(repo: Path, tmp_path: Path):
    python_model(tmp_path, "elsewhere")
    (repo / "m").symlink_to(tmp_path / "elsewhere")
    err = load_error(repo)
    assert_points_at(err, repo / "m")
    assert "points outside the repository" in str(err)


def test_broken_symlink(repo: Path):
    folder = python_model(repo, "m")
    (folder / "1" / "vocab.txt").symlink_to("missing.txt")
    err = load_error(repo)
    assert_points_at(err, folder / "1" / "vocab.txt")
    assert "broken symlink (to missing.txt)" in str(err)


def test_symlink_loop(repo: Path):
    folder = python_model(repo, "m")
    (folder / "1" / "again").symlink_to("..")
    err = load_error(repo)
    assert_points_at(err, folder / "1" / "again")
    assert "symlink loop" in str(err)


def test_files(repo: Path):
    folder = python_model(repo, "m")
    write(folder / "1" / "data" / "vocab.txt", "v")
    (folder / "1" / "vocab.txt").symlink_to("data/vocab.txt")  # inside: allowed
    write(folder / "1" / "__pycache__" / "model.cpython-311.pyc")
    write(repo / "__pycache__" / "stray.txt")  # the whole folder is skipped, not only *.pyc
    write(folder / "1" / "stale.pyc")
    write(folder / "1" / ".gitkeep")
    write(repo / "README.md")
    repository = Repository.load(repo)
    assert repository.path == repo.resolve()
    files = list(repository.files())
    assert [rel for rel, _ in files] == [
        "README.md", "m/1/.gitkeep", "m/1/data/vocab.txt", "m/1/model.py", "m/1/vocab.txt",
        "m/config.pbtxt"]
    by_rel = dict(files)
    for path in by_rel.values():
        assert path.is_absolute() and path.is_file() and not path.is_symlink(), path
    assert by_rel["m/1/vocab.txt"] == (folder / "1" / "data" / "vocab.txt").resolve()
    assert by_rel["m/config.pbtxt"] == (folder / "config.pbtxt").resolve()


# --- imports ------------------------------------------------------------------------------------


def test_import_is_light():
    code = ("import sys, deployer.repository; "
            "heavy = [m for m in ('tritonclient', 'google.protobuf', 'numpy') "
            "if m in sys.modules]; "
            "assert not heavy, heavy")
    root = Path(__file__).parent.parent
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# --- the shared test repositories ---------------------------------------------------------------


ADD_SUB_INPUTS = (TensorSpec("INPUT0", "FP32", (4,)), TensorSpec("INPUT1", "FP32", (4,)))
ADD_SUB_OUTPUTS = (TensorSpec("OUTPUT0", "FP32", (4,)), TensorSpec("OUTPUT1", "FP32", (4,)))


def check_add_sub(model) -> None:
    assert (model.backend, model.platform) == ("python", "")
    assert (model.versions, model.max_batch_size) == ((1,), 8)
    assert model.config.HasField("dynamic_batching")
    assert (model.inputs, model.outputs, model.steps) == (ADD_SUB_INPUTS, ADD_SUB_OUTPUTS, ())
    # what Triton's GET /v2/models/add_sub reported for this model
    assert [t.shape(model.max_batch_size) for t in model.inputs + model.outputs] == [(-1, 4)] * 4


def test_shared_add_sub_repository():
    repository = Repository.load(REPOS / "add_sub")
    assert list(repository.models) == ["add_sub"]
    check_add_sub(repository.models["add_sub"])
    assert [rel for rel, _ in repository.files()] == ["add_sub/1/model.py", "add_sub/config.pbtxt"]


def test_shared_multi_repository():
    repository = Repository.load(REPOS / "multi")
    models = repository.models
    assert list(models) == ["add_sub", "pipeline", "scale", "text_len"]
    check_add_sub(models["add_sub"])

    text_len = models["text_len"]
    assert (text_len.backend, text_len.max_batch_size) == ("python", 0)
    assert text_len.inputs == (TensorSpec("TEXT", "BYTES", (-1,)),)
    assert text_len.outputs == (TensorSpec("LENGTHS", "INT32", (-1,)),
                                TensorSpec("UPPER", "BYTES", (-1,)))
    assert text_len.inputs[0].shape(0) == (-1,)

    scale, pipeline = models["scale"], models["pipeline"]
    assert (scale.backend, scale.max_batch_size) == ("python", 4)
    assert scale.inputs == (TensorSpec("X", "FP32", (-1, 3)),)
    assert scale.outputs == (TensorSpec("Y", "FP32", (-1, 3)),)
    assert (pipeline.backend, pipeline.platform) == ("ensemble", "ensemble")
    assert pipeline.max_batch_size == 4
    assert pipeline.is_ensemble and pipeline.steps == ("scale",)
    assert [s.model_name for s in pipeline.config.ensemble_scheduling.step] == ["scale", "scale"]
    assert (pipeline.inputs, pipeline.outputs) == (scale.inputs, scale.outputs)
    assert pipeline.inputs[0].shape(4) == (-1, -1, 3)  # as Triton's metadata reports it
    assert pipeline.versions == (1,)

    assert repository.backends() == {"python", "ensemble"}
    assert repository.dependencies("pipeline") == ["pipeline", "scale"]
    assert repository.top_level() == ["add_sub", "pipeline", "text_len"]
    assert "pipeline/1/.gitkeep" in dict(repository.files())


def test_shared_add_sub_copies_are_identical():
    one, other = REPOS / "add_sub" / "add_sub", REPOS / "multi" / "add_sub"
    for rel in ("config.pbtxt", "1/model.py"):
        assert (one / rel).read_text() == (other / rel).read_text(), rel


def test_shared_models_import_only_numpy_and_the_backend_utils():
    # (tests/repos/pyimports imports what a cloud image lacks on purpose: its tests say so)
    sources = sorted(p for p in REPOS.glob("*/*/*/model.py")
                     if p.relative_to(REPOS).parts[0] != "pyimports")
    assert len(sources) >= 8, sources   # add_sub, multi's three, acc, stream, twice 1 and 2
    for source in sources:
        imported = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
        assert imported <= {"numpy", "triton_python_backend_utils"}, (source, imported)
        assert "class TritonPythonModel" in source.read_text()
