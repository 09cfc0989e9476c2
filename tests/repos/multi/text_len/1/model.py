"""LENGTHS = the byte length of each string of TEXT; UPPER = each string upper-cased (UTF-8)."""

import numpy as np
import triton_python_backend_utils as pb_utils


def _upper(value):
    return value.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            items = [item if isinstance(item, bytes) else str(item).encode() for item in text.flat]
            lengths = np.array([len(item) for item in items], dtype=np.int32).reshape(text.shape)
            upper = np.array([_upper(item) for item in items], dtype=np.object_).reshape(text.shape)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LENGTHS", lengths),
                pb_utils.Tensor("UPPER", upper),
            ]))
        return responses
