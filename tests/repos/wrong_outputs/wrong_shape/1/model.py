"""OUT = the first 3 of IN's 4 columns, where the config declares dims [4]."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[:, :3])])
            for r in requests]
