"""add_sub computed with torch, imported the way a static scan can still see it: torch is in
the embedded runtime, not in the cloud's Triton image."""

import importlib

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.torch = importlib.import_module("torch")

    def execute(self, requests):
        responses = []
        for request in requests:
            in0, in1 = (self.torch.from_numpy(pb_utils.get_input_tensor_by_name(
                request, name).as_numpy()) for name in ("INPUT0", "INPUT1"))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (in0 + in1).numpy().astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (in0 - in1).numpy().astype(np.float32)),
            ]))
        return responses
