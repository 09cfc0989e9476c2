"""Export both NCF models into one Triton model repository (and TorchScript and ONNX twins).

    python export.py

writes
    model_repository/ncf_food_model/{config.pbtxt, 1/model.py, 1/weights.npz}      python backend
    model_repository/ncf_fashion_model/{config.pbtxt, 1/model.py, 1/weights.npz}   (numpy)
    model_repository_native/ncf_*_model/{config.pbtxt, 1/model.pt}                 pytorch_libtorch
    model_repository_onnx/ncf_*_model/{config.pbtxt, 1/model.onnx}                 onnxruntime_onnx
    expect.json     what the PyTorch models themselves answer to sample.json, keyed by model

The three repositories serve the same trained models under the same names (inputs user_id and
item_id, output score), so one expect.json checks them all. Every target serves model_repository;
the native (TorchScript, as in the SageMaker workshop) and ONNX repositories run on a Triton with
the PyTorch / ONNX Runtime backend (sagemaker, azure, docker with NVIDIA's image) and on the
embedded Triton through its Python backend. The ONNX export needs the onnx package.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from train import DOMAINS, NCF

HERE = Path(__file__).resolve().parent
MAX_BATCH = 64

CONFIG = """\
# Neural Collaborative Filtering: (user_id, item_id) -> score in [0, 1]. Written by export.py.
name: "{name}"
{runtime}
max_batch_size: {max_batch}
dynamic_batching {{ }}
input [
  {{
    name: "user_id"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }},
  {{
    name: "item_id"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "score"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
instance_group [ {{ count: 1, kind: {kind} }} ]
"""


def load(name: str) -> NCF:
    users, items, _ = DOMAINS[name]
    model = NCF(users, items)
    model.load_state_dict(torch.load(HERE / "weights" / f"{name}.pt", weights_only=True))
    return model.eval()


def export_onnx(model: NCF, path: Path) -> None:
    """The model as ONNX through the TorchScript-based exporter, the batch axis left free (dims
    [-1, 1] -> [-1, 1]) so dynamic batching can stack requests."""
    example = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64))
    with warnings.catch_warnings():   # torch calls this exporter "legacy"; it needs onnx only
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, str(path), dynamo=False,
                          input_names=["user_id", "item_id"], output_names=["score"],
                          dynamic_axes={n: {0: "batch"} for n in ("user_id", "item_id", "score")})


def check_onnx(path: Path, model: NCF, user: torch.Tensor, item: torch.Tensor) -> str:
    """Run the ONNX file on the batch (user, item) and compare with the PyTorch model; return
    what ran it: onnxruntime when it is importable, else onnx's reference evaluator (numpy)."""
    import onnx

    onnx.checker.check_model(str(path))
    feed = {"user_id": user.numpy(), "item_id": item.numpy()}
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got, how = ReferenceEvaluator(str(path)).run(None, feed)[0], "onnx"
    else:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got, how = session.run(None, feed)[0], "onnxruntime"
    with torch.no_grad():
        want = model(user, item).numpy()
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)
    return how


def main() -> None:
    for repository in ("model_repository", "model_repository_native", "model_repository_onnx"):
        shutil.rmtree(HERE / repository, ignore_errors=True)
    sample = json.loads((HERE / "sample.json").read_text())
    expected = {}
    for name in DOMAINS:
        model = load(name)
        # 1. Python backend: numpy forward pass + weights
        version = HERE / "model_repository" / name / "1"
        version.mkdir(parents=True)
        np.savez(version / "weights.npz",
                 **{key: t.detach().numpy() for key, t in model.state_dict().items()})
        shutil.copy(HERE / "triton_model.py", version / "model.py")
        (version.parent / "config.pbtxt").write_text(CONFIG.format(
            name=name, runtime='backend: "python"', max_batch=MAX_BATCH, kind="KIND_CPU"))
        # 2. TorchScript for Triton's PyTorch backend (inputs matched to forward()'s argument
        #    names, the single output by its place in the config)
        version = HERE / "model_repository_native" / name / "1"
        version.mkdir(parents=True)
        native = version / "model.pt"
        torch.jit.script(model).save(str(native))
        (version.parent / "config.pbtxt").write_text(CONFIG.format(
            name=name, runtime='platform: "pytorch_libtorch"', max_batch=MAX_BATCH,
            kind="KIND_AUTO"))
        # 3. ONNX for Triton's ONNX Runtime backend (inputs and output by name)
        version = HERE / "model_repository_onnx" / name / "1"
        version.mkdir(parents=True)
        export_onnx(model, version / "model.onnx")
        (version.parent / "config.pbtxt").write_text(CONFIG.format(
            name=name, runtime='platform: "onnxruntime_onnx"', max_batch=MAX_BATCH,
            kind="KIND_AUTO"))
        # 4. the expected answer, from the PyTorch model itself; TorchScript and ONNX agree
        user = torch.tensor(sample[name]["user_id"], dtype=torch.int64).reshape(-1, 1)
        item = torch.tensor(sample[name]["item_id"], dtype=torch.int64).reshape(-1, 1)
        with torch.no_grad():
            score = model(user, item)
            assert torch.allclose(torch.jit.load(str(native))(user, item), score)
        checked = check_onnx(version / "model.onnx", model, user, item)
        expected[name] = {"score": score.tolist()}
        print(f"exported {name}: scores {[round(s, 3) for s in score.reshape(-1).tolist()]}")
    (HERE / "expect.json").write_text(json.dumps(expected, indent=2) + "\n")
    print("wrote model_repository/ (python backend, numpy), model_repository_native/ "
          f"(pytorch_libtorch), model_repository_onnx/ (onnxruntime_onnx, checked with "
          f"{checked}) and expect.json")


if __name__ == "__main__":
    main()
