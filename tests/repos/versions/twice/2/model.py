"""Version 2: OUT = IN * 2."""

import numpy as np
import triton_python_backend_utils as pb_utils

VERSION = 2


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUT", (value * VERSION).astype(np.int32)),
            ]))
        return responses
