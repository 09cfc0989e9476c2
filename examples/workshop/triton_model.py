"""The served model: WorkshopNet's forward pass in numpy, for Triton's Python backend.

export.py copies this file to model_repository/workshop_model/1/model.py, next to weights.npz.
It imports numpy only: the embedded Triton's Python environment has numpy and nothing else
(and NVIDIA's Triton images have no torch in the Python backend's interpreter either).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with np.load(os.path.join(folder, "weights.npz")) as weights:
            self.w = {name: weights[name].astype(np.float32) for name in weights.files}
        config = json.loads(args["model_config"])
        self.output_name = config["output"][0]["name"]

    def forward(self, x):
        w = self.w
        x = (x.astype(np.float32) - w["mean"]) / w["std"]
        x = np.maximum(x @ w["hidden1.weight"].T + w["hidden1.bias"], 0.0)
        x = np.maximum(x @ w["hidden2.weight"].T + w["hidden2.bias"], 0.0)
        logits = x @ w["head.weight"].T + w["head.bias"]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
                out = pb_utils.Tensor(self.output_name, self.forward(x))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"workshop_model: {exc}")))
        return responses
