"""Repositories with real ONNX and TorchScript models, exported here from one PyTorch module.

``framework_repository(root)`` writes (needs torch and onnx in the test environment):

    net_onnx/    platform onnxruntime_onnx, inputs x [4], y [3]; outputs probs [3], twice [1]
    net_pt/      platform pytorch_libtorch, the same module, INPUT__0/1 -> OUTPUT__0/1
    scale/       backend python: y * 10 (numpy), for the ensemble
    mixed/       ensemble: scale (python) -> net_onnx, so Python and ONNX run in one request

and ``net_module()`` returns the module both files were exported from (fixed weights).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

CONFIG = """\
name: "{name}"
{runtime}
max_batch_size: 8
dynamic_batching {{ }}
input [
  {{ name: "{i0}" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "{i1}" data_type: TYPE_FP32 dims: [ 3 ] }}
]
output [
  {{ name: "{o0}" data_type: TYPE_FP32 dims: [ 3 ] }},
  {{ name: "{o1}" data_type: TYPE_FP32 dims: [ 1 ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""

SCALE_CONFIG = """\
name: "scale"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""

SCALE_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * np.float32(10))])
            for r in requests]
"""

MIXED_CONFIG = """\
name: "mixed"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "y" data_type: TYPE_FP32 dims: [ 3 ] }
]
output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling {
  step [
    { model_name: "scale" model_version: -1
      input_map { key: "IN" value: "y" } output_map { key: "OUT" value: "y10" } },
    { model_name: "net_onnx" model_version: -1
      input_map [ { key: "x" value: "x" }, { key: "y" value: "y10" } ]
      output_map { key: "probs" value: "probs" } }
  ]
}
"""


def net_module():
    """The PyTorch module both files come from: (x, y) -> (softmax(Wx + b + y), sum(2x))."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x, y):
            return torch.softmax(self.lin(x) + y, dim=-1), (x * 2).sum(dim=-1, keepdim=True)

    torch.manual_seed(7)
    return Net().eval()


def framework_repository(root: Path, with_ensemble: bool = True) -> Path:
    import torch

    module = net_module()
    example = (torch.ones(1, 4), torch.ones(1, 3))
    (root / "net_onnx" / "1").mkdir(parents=True)
    torch.onnx.export(module, example, str(root / "net_onnx" / "1" / "model.onnx"),
                      dynamo=False, input_names=["x", "y"], output_names=["probs", "twice"],
                      dynamic_axes={n: {0: "batch"} for n in ("x", "y", "probs", "twice")})
    (root / "net_onnx" / "config.pbtxt").write_text(CONFIG.format(
        name="net_onnx", runtime='platform: "onnxruntime_onnx"', i0="x", i1="y", o0="probs",
        o1="twice"))
    (root / "net_pt" / "1").mkdir(parents=True)
    torch.jit.trace(module, example).save(str(root / "net_pt" / "1" / "model.pt"))
    (root / "net_pt" / "config.pbtxt").write_text(CONFIG.format(
        name="net_pt", runtime='platform: "pytorch_libtorch"', i0="INPUT__0", i1="INPUT__1",
        o0="OUTPUT__0", o1="OUTPUT__1"))
    if with_ensemble:
        (root / "scale" / "1").mkdir(parents=True)
        (root / "scale" / "config.pbtxt").write_text(SCALE_CONFIG)
        (root / "scale" / "1" / "model.py").write_text(SCALE_PY)
        (root / "mixed" / "1").mkdir(parents=True)
        (root / "mixed" / "1" / ".gitkeep").write_text("")   # uploads carry files, not folders
        (root / "mixed" / "config.pbtxt").write_text(MIXED_CONFIG)
    return root


#: run by the embedded runtime's Python: the ONNX file's own answer, from an InferenceSession
_DIRECT_ONNX = """
import json, sys
import numpy as np
import onnxruntime
path, feed = sys.argv[1], json.loads(sys.argv[2])
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
out = session.run(None, {k: np.asarray(v, dtype=np.float32) for k, v in feed.items()})
print(json.dumps([o.tolist() for o in out]))
"""


def direct_onnx(python: str, model: Path, feed: dict) -> list:
    """What onnxruntime itself answers for ``model`` (in the runtime's Python, where it is)."""
    done = subprocess.run([python, "-c", _DIRECT_ONNX, str(model), json.dumps(feed)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)
