"""Step 3 of the workshop: turn the trained weights into Triton model repositories.

    python export.py

writes
    model_repository/workshop_model/config.pbtxt        backend "python"
    model_repository/workshop_model/1/model.py          the forward pass in numpy (triton_model.py)
    model_repository/workshop_model/1/weights.npz       the trained weights
    model_repository_native/workshop_model/config.pbtxt platform "pytorch_libtorch"
    model_repository_native/workshop_model/1/model.pt   TorchScript
    model_repository_onnx/workshop_model/config.pbtxt   platform "onnxruntime_onnx"
    model_repository_onnx/workshop_model/1/model.onnx   ONNX (needs the onnx package)
    expect.json                                         the PyTorch model's answer to sample.json

The three serve the same trained model under the same names (input "input", output "output"), so
one expect.json checks them all. Every target serves model_repository; the native and ONNX
repositories run on a Triton with the PyTorch / ONNX Runtime backend (sagemaker, azure, docker
with NVIDIA's image) and on the embedded Triton through its Python backend.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from train import WorkshopNet

HERE = Path(__file__).resolve().parent
MODEL = "workshop_model"
MAX_BATCH = 16

CONFIG = """\
# WorkshopNet: three raw sensor readings -> [P(label=0), P(label=1)]. Written by export.py.
name: "{name}"
{runtime}
max_batch_size: {max_batch}
dynamic_batching {{ }}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }}
]
output [
  {{
    name: "output"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }}
]
instance_group [ {{ count: 1, kind: {kind} }} ]
"""


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def check_onnx(path: Path, model: WorkshopNet, x: torch.Tensor) -> str:
    """Run the ONNX file on the batch ``x`` and compare with the PyTorch model; return what ran
    it: onnxruntime when it is importable, else onnx's reference evaluator (numpy)."""
    import onnx

    onnx.checker.check_model(str(path))
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got, how = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0], "onnx"
    else:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got, how = session.run(None, {"input": x.numpy()})[0], "onnxruntime"
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)
    return how


def main() -> None:
    model = WorkshopNet()
    model.load_state_dict(torch.load(HERE / "model_weights.pt", weights_only=True))
    model.eval()

    # 1. the Python-backend repository: numpy forward pass + weights
    version = fresh(HERE / "model_repository" / MODEL / "1")
    np.savez(version / "weights.npz",
             **{name: t.detach().numpy() for name, t in model.state_dict().items()})
    shutil.copy(HERE / "triton_model.py", version / "model.py")
    (version.parent / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, runtime='backend: "python"', max_batch=MAX_BATCH, kind="KIND_CPU"))

    # 2. the native repository: TorchScript for Triton's PyTorch backend. Inputs are matched
    #    to forward()'s argument names; the single output by its place in the config.
    version = fresh(HERE / "model_repository_native" / MODEL / "1")
    native = version / "model.pt"
    torch.jit.script(model).save(str(native))
    (version.parent / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, runtime='platform: "pytorch_libtorch"', max_batch=MAX_BATCH,
        kind="KIND_AUTO"))

    # 3. the ONNX repository: the same model through the TorchScript-based exporter, the batch
    #    axis left free (dims [-1, 3] -> [-1, 2]) so dynamic batching can stack requests
    version = fresh(HERE / "model_repository_onnx" / MODEL / "1")
    with warnings.catch_warnings():   # torch calls this exporter "legacy"; it needs onnx only
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3),), str(version / "model.onnx"),
                          dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    (version.parent / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, runtime='platform: "onnxruntime_onnx"', max_batch=MAX_BATCH,
        kind="KIND_AUTO"))

    # 4. expect.json: what the trained PyTorch model itself answers to sample.json; the
    #    TorchScript and ONNX files must answer the same (ONNX on a batch of 3: the axis is free)
    sample = json.loads((HERE / "sample.json").read_text())
    x = torch.tensor(sample["input"], dtype=torch.float32).reshape(-1, 3)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(torch.jit.load(str(native))(x), expected)
    checked = check_onnx(version / "model.onnx", model, torch.cat([x, x + 1, -x]))
    (HERE / "expect.json").write_text(json.dumps({"output": expected.tolist()}, indent=2) + "\n")
    print(f"wrote model_repository/{MODEL} (python backend, numpy), "
          f"model_repository_native/{MODEL} (pytorch_libtorch), "
          f"model_repository_onnx/{MODEL} (onnxruntime_onnx, checked with {checked}) and "
          f"expect.json: {sample['input']} -> {[round(p, 4) for p in expected[0].tolist()]}")


if __name__ == "__main__":
    main()
