"""The served model: NCF's forward pass in numpy, for Triton's Python backend.

export.py copies this file to model_repository/<model>/1/model.py, next to weights.npz, for both
ncf_food_model and ncf_fashion_model. numpy only: that is all the embedded Triton's Python
environment (and the Python backend of NVIDIA's images) has.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def relu(x):
    return np.maximum(x, 0.0)


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with np.load(os.path.join(folder, "weights.npz")) as weights:
            self.w = {name: weights[name].astype(np.float32) for name in weights.files}
        self.name = json.loads(args["model_config"])["name"]
        self.users = self.w["user_embedding.weight"].shape[0]
        self.items = self.w["item_embedding.weight"].shape[0]

    def score(self, user_id, item_id):
        """user_id, item_id: INT64 [N, 1] -> FP32 [N, 1]"""
        w = self.w
        for ids, count, what in ((user_id, self.users, "user_id"),
                                 (item_id, self.items, "item_id")):
            if ids.size and (ids.min() < 0 or ids.max() >= count):
                raise ValueError(f"{what} must be in [0, {count - 1}], got {ids.min()}..{ids.max()}")
        u = w["user_embedding.weight"][user_id[:, 0]]
        i = w["item_embedding.weight"][item_id[:, 0]]
        x = np.concatenate([u, i, u * i], axis=-1)
        x = relu(x @ w["fc1.weight"].T + w["fc1.bias"])
        x = relu(x @ w["fc2.weight"].T + w["fc2.bias"])
        logits = x @ w["out.weight"].T + w["out.bias"]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                user_id = pb_utils.get_input_tensor_by_name(request, "user_id").as_numpy()
                item_id = pb_utils.get_input_tensor_by_name(request, "item_id").as_numpy()
                if user_id.shape != item_id.shape:
                    raise ValueError(f"user_id {list(user_id.shape)} and item_id "
                                     f"{list(item_id.shape)} differ in shape")
                score = pb_utils.Tensor("score", self.score(user_id, item_id))
                responses.append(pb_utils.InferenceResponse(output_tensors=[score]))
            except Exception as exc:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {exc}")))
        return responses
