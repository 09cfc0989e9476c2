"""Step 3 of the workshop: turn the trained weights into Triton model repositories.

    python export.py

writes
    model_repository/workshop_model/config.pbtxt        backend "python"
    model_repository/workshop_model/1/model.py          the forward pass in numpy (triton_model.py)
    model_repository/workshop_model/1/weights.npz       the trained weights
    model_repository_native/workshop_model/config.pbtxt platform "pytorch_libtorch"
    model_repository_native/workshop_model/1/model.pt   TorchScript
    expect.json                                         the PyTorch model's answer to sample.json

model_repository runs on every target (the embedded Triton has the Python backend and numpy);
model_repository_native needs a Triton with the PyTorch backend (docker with NVIDIA's image,
sagemaker, azure).
"""

from __future__ import annotations

import json
import shutil
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
    scripted = torch.jit.script(model)
    scripted.save(str(version / "model.pt"))
    (version.parent / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, runtime='platform: "pytorch_libtorch"', max_batch=MAX_BATCH,
        kind="KIND_AUTO"))

    # 3. expect.json: what the trained PyTorch model itself answers to sample.json
    sample = json.loads((HERE / "sample.json").read_text())
    x = torch.tensor(sample["input"], dtype=torch.float32).reshape(-1, 3)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(torch.jit.load(str(version / "model.pt"))(x), expected)
    (HERE / "expect.json").write_text(json.dumps({"output": expected.tolist()}, indent=2) + "\n")
    print(f"wrote model_repository/{MODEL} (python backend, numpy), "
          f"model_repository_native/{MODEL} (pytorch_libtorch) and expect.json: "
          f"{sample['input']} -> {[round(p, 4) for p in expected[0].tolist()]}")


if __name__ == "__main__":
    main()
