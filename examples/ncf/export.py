"""Export both NCF models into one Triton model repository (and a TorchScript twin).

    python export.py

writes
    model_repository/ncf_food_model/{config.pbtxt, 1/model.py, 1/weights.npz}      python backend
    model_repository/ncf_fashion_model/{config.pbtxt, 1/model.py, 1/weights.npz}   (numpy)
    model_repository_native/ncf_*_model/{config.pbtxt, 1/model.pt}                 pytorch_libtorch
    expect.json     what the PyTorch models themselves answer to sample.json, keyed by model

model_repository is served by every target; model_repository_native needs a Triton with the
PyTorch backend (docker with NVIDIA's image, sagemaker, azure), as in the SageMaker workshop.
"""

from __future__ import annotations

import json
import shutil
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


def main() -> None:
    for repository in ("model_repository", "model_repository_native"):
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
        torch.jit.script(model).save(str(version / "model.pt"))
        (version.parent / "config.pbtxt").write_text(CONFIG.format(
            name=name, runtime='platform: "pytorch_libtorch"', max_batch=MAX_BATCH,
            kind="KIND_AUTO"))
        # 3. the expected answer, from the PyTorch model itself
        user = torch.tensor(sample[name]["user_id"], dtype=torch.int64).reshape(-1, 1)
        item = torch.tensor(sample[name]["item_id"], dtype=torch.int64).reshape(-1, 1)
        with torch.no_grad():
            score = model(user, item)
            assert torch.allclose(torch.jit.load(str(version / "model.pt"))(user, item), score)
        expected[name] = {"score": score.tolist()}
        print(f"exported {name}: scores {[round(s, 3) for s in score.reshape(-1).tolist()]}")
    (HERE / "expect.json").write_text(json.dumps(expected, indent=2) + "\n")
    print("wrote model_repository/ (python backend, numpy), model_repository_native/ "
          "(pytorch_libtorch) and expect.json")


if __name__ == "__main__":
    main()
