"""add_sub through modules of its own folder, with the imports a cloud image copes without:
an optional one, one for type checkers only, and standard modules of every image."""

import json
from typing import TYPE_CHECKING

import numpy as np
import triton_python_backend_utils as pb_utils

import shared_code
from . import arith

try:
    import scipy.special  # noqa: F401  (optional: not in the image, the model copes)
except ImportError:
    scipy = None

if TYPE_CHECKING:
    import torch  # noqa: F401


class TritonPythonModel:
    def initialize(self, args):
        self.name = json.loads(args["model_config"])["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", shared_code.as_float(arith.add(in0, in1))),
                pb_utils.Tensor("OUTPUT1", shared_code.as_float(arith.sub(in0, in1))),
            ]))
        return responses
