"""Inputs for the test step: user samples in three shapes, generated inputs, expectations."""

from __future__ import annotations

import numpy as np
import pytest

from deployer import samples
from deployer.errors import UsageError
from deployer.repository import Repository

from conftest import REPOS


@pytest.fixture(scope="module")
def multi():
    return Repository.load(REPOS / "multi")


def test_three_sample_shapes_give_the_same_inputs(multi):
    model = multi.models["add_sub"]
    as_map = samples.sample_inputs({"INPUT0": [1, 2, 3, 4], "INPUT1": [0, 0, 0, 1]}, model, "s")
    kserve = samples.sample_inputs({"inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 1]}]},
        model, "s")
    for inputs in (as_map, kserve):
        assert inputs["INPUT0"].dtype == np.float32 and inputs["INPUT0"].shape == (1, 4)
        np.testing.assert_array_equal(inputs["INPUT1"], [[0, 0, 0, 1]])
    text = samples.sample_inputs(["hello", "triton"], multi.models["text_len"], "s")
    assert text["TEXT"].dtype == object and list(text["TEXT"]) == [b"hello", b"triton"]


@pytest.mark.parametrize("document, message", [
    ({"INPUT0": [1, 2, 3, 4]}, "lacks input(s) INPUT1"),
    ({"INPUT9": [1]}, "has no input(s) INPUT9"),
    ({"INPUT0": [1, 2, 3], "INPUT1": [1, 2, 3]}, "has shape [1, 3], the model expects [-1, 4]"),
    ([1, 2, 3, 4], "a bare list is only for a model with one input"),
    ({"INPUT0": ["a", "b", "c", "d"], "INPUT1": [1, 2, 3, 4]}, "cannot be read as FP32"),
])
def test_bad_samples_say_what_is_wrong(multi, document, message):
    with pytest.raises(UsageError) as caught:
        samples.sample_inputs(document, multi.models["add_sub"], "s")
    assert message in str(caught.value)


def test_generated_inputs_follow_the_config(multi):
    scale = samples.generated_inputs(multi.models["scale"], batch_size=3)
    assert scale["X"].shape == (3, 2, 3) and scale["X"].dtype == np.float32  # [-1, 3] → 2
    text = samples.generated_inputs(multi.models["text_len"])
    assert text["TEXT"].shape == (2,) and text["TEXT"][0] == b"triton-deployer-0"
    capped = samples.generated_inputs(multi.models["add_sub"], batch_size=100)
    assert capped["INPUT0"].shape == (8, 4)  # max_batch_size


def test_every_dtype_can_be_generated():
    from deployer.repository import Model, TensorSpec

    specs = tuple(TensorSpec(f"T_{kind}", kind, (-1, 2)) for kind in samples.NUMPY_DTYPES)
    model = Model(name="all", path=None, config_path=None, config=None, backend="python",
                  platform="", versions=(1,), max_batch_size=2, inputs=specs, outputs=(),
                  steps=())
    inputs = samples.generated_inputs(model, batch_size=2)
    for spec in specs:
        array = inputs[spec.name]
        assert array.shape == (2, 2, 2)
        assert str(array.dtype) == samples.NUMPY_DTYPES[spec.datatype]


def test_per_model_documents(multi):
    keyed = samples.per_model({"scale": {"X": [[1, 2, 3]]}, "add_sub": [1]}, multi,
                              ["scale", "add_sub"], "sample", "f")
    assert set(keyed) == {"scale", "add_sub"}
    with pytest.raises(UsageError, match="key it by model name"):
        samples.per_model({"X": [1]}, multi, ["scale", "add_sub"], "sample", "f")


def test_compare_with_tolerance_and_bytes():
    actual = {"Y": np.array([[1.0, 2.0]], dtype=np.float32),
              "S": np.array([b"A", b"B"], dtype=object)}
    close = samples.expected_outputs({"Y": [[1.0, 2.0000001]], "S": ["A", "B"]}, "e")
    assert samples.compare(actual, close, rtol=1e-5, atol=1e-6) == []
    far = samples.expected_outputs({"outputs": [{"name": "Y", "shape": [1, 2],
                                                 "data": [1.0, 2.5]}]}, "e")
    problems = samples.compare(actual, far, rtol=1e-5, atol=1e-6)
    assert len(problems) == 1 and "differs by up to 0.5" in problems[0]
    assert "missing" in samples.compare(actual, {"Z": ([1], None)}, 0, 0)[0]
    assert "got ['A', 'B'], expected ['A', 'C']" in samples.compare(
        actual, {"S": (["A", "C"], None)}, 0, 0)[0]
