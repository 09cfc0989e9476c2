"""The test step's outputs check: what comes back from each inference must be what config.pbtxt
declares (names, datatypes, shapes with the batch dimension). tests/repos/wrong_outputs holds
Python models that answer otherwise; the real tritonserver serves them without complaint, so
only this check can catch them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import REPOS

WRONG = REPOS / "wrong_outputs"

#: model → the one line its outputs check must fail with
LINES = {
    "missing": "missing output B: expected FP32 [1, 4], got nothing (it did not come back)",
    "wrong_type": "wrong_type output OUT: expected FP32 [4], got INT64 [4]",
    "wrong_shape": "wrong_shape output OUT: expected FP32 [1, 4], got FP32 [1, 3]",
    "stream_shape": "response 1 (and 1 more): stream_shape output OUT: expected INT32 [1], "
                    "got INT32 [2]",
}


@pytest.mark.usefixtures("tritonserver")
def test_outputs_unlike_the_config_fail_the_test_step(cli, tmp_path):
    """Each model answers (its infer or stream check passes) but not as its config says: the
    outputs check fails with one line naming the model, the output, expected and got, in
    --json, JUnit and the table; the report fails (exit 1)."""
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"stream_shape": {"N": [2]}}))
    assert cli("deploy", WRONG, "--name", "wrong").code == 0
    try:
        junit = tmp_path / "junit.xml"
        tested = cli("test", "wrong", "--sample", sample, "--json", "--junit-xml", junit)
        assert tested.code == 1, tested
        report = tested.json()
        assert report["passed"] is False
        for model in report["models"]:
            checks = {c["name"]: c for c in model["checks"]}
            answered = "stream" if model["model"] == "stream_shape" else "infer"
            assert list(checks) == ["metadata", answered, "outputs"], model
            assert checks["metadata"]["status"] == checks[answered]["status"] == "passed"
            assert checks["outputs"]["status"] == "failed"
            assert checks["outputs"]["passed"] is False
            assert checks["outputs"]["message"] == LINES[model["model"]]
        suite = ET.parse(junit).getroot()
        failures = {case.get("classname"): case.find("failure").get("message")
                    for case in suite.iter("testcase") if case.find("failure") is not None}
        assert failures == LINES
        assert suite.get("failures") == "4" and suite.get("skipped") == "0"

        text = cli("test", "wrong", "--sample", sample)
        assert text.code == 1, text
        rows = [line.split(None, 3) for line in text.out.splitlines()]
        assert {row[0]: row[3] for row in rows if row[1:3] == ["outputs", "FAIL"]} == LINES
        assert "FAILED: wrong (local)" in text.out
    finally:
        assert cli("teardown", "wrong").code == 0


# -- what the check accepts and refuses, answer by answer ----------------------------------------

def _model(repository, name):
    from deployer.repository import Repository

    return Repository.load(REPOS / repository).models[name]


def test_what_the_client_sees_is_what_counts():
    """-1 matches any size, the batch dimension is the request's, BYTES is an object or bytes
    array; an output the config does not declare, or one the request did not ask for, is a
    problem, and the missing ones are the requested ones."""
    from deployer.tester import output_problems

    text_len = _model("multi", "text_len")   # max_batch_size 0; LENGTHS INT32 [-1], UPPER BYTES
    good = {"LENGTHS": np.array([5, 3], dtype=np.int32),
            "UPPER": np.array([b"HELLO", b"ABC"], dtype=object)}
    assert output_problems(text_len, good, None) == []
    assert output_problems(text_len, {**good, "UPPER": np.array([b"A"], dtype="S1")},
                           None) == []
    assert output_problems(text_len, {**good, "UPPER": np.array(["A"])}, None) == [
        "text_len output UPPER: expected BYTES [-1], got <U1 [1]"]
    assert output_problems(text_len, {"UPPER": good["UPPER"]}, None, requested=["UPPER"]) == []
    assert output_problems(text_len, {**good, "EXTRA": np.zeros(1, np.int8)}, None) == [
        "text_len output EXTRA: expected no such output (config.pbtxt declares LENGTHS, "
        "UPPER), got INT8 [1]"]
    assert output_problems(text_len, good, None, requested=["UPPER"]) == [
        "text_len output LENGTHS: expected no such output (the request asked for UPPER), "
        "got INT32 [2]"]

    scale = _model("multi", "scale")   # max_batch_size 4; Y FP32 [-1, 3]
    assert output_problems(scale, {"Y": np.zeros((2, 7, 3), np.float32)}, 2) == []
    assert output_problems(scale, {"Y": np.zeros((1, 7, 3), np.float32)}, 2) == [
        "scale output Y: expected FP32 [2, -1, 3], got FP32 [1, 7, 3]"]
    assert output_problems(scale, {"Y": np.zeros((7, 3), np.float32)}, 2) == [
        "scale output Y: expected FP32 [2, -1, 3], got FP32 [7, 3]"]


def test_a_json_stream_is_checked_for_what_it_carries():
    """HTTP generate_stream answers are JSON: a number, text or flat list, with no datatype
    or shape; the kind of value and the element count are what can be compared."""
    from deployer.client import StreamAnswer
    from deployer.tester import _stream_outputs_problem

    model = _model("wrong_outputs", "stream_shape")   # OUT INT32 [1]

    def problem(*responses):
        return _stream_outputs_problem(model, {"N": np.array([2], np.int32)}, StreamAnswer(
            [{"OUT": np.asarray(r)} for r in responses], [0.0] * len(responses), True,
            typed=False))

    assert problem(0, 1) is None
    assert problem([0, 0], 1) == ("response 1: stream_shape output OUT: expected INT32 [1] "
                                  "(1 element), got 2 JSON integer values")
    assert problem(0.5) == ("response 1: stream_shape output OUT: expected INT32 [1] "
                            "(1 element), got 1 JSON decimal")
    assert problem("a") == ("response 1: stream_shape output OUT: expected INT32 [1] "
                            "(1 element), got 1 JSON text")
