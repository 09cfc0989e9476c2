"""The local target end to end: the real tritonserver, driven through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deployer.triton import tagged
from deployer.testing import TargetContract

from conftest import (EXAMPLES, REPOS, crashing_repository, like_a_background_job,
                      one_line_error, tensorrt_repository, wait_for)

pytestmark = pytest.mark.usefixtures("tritonserver")


def processes_with(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


class TestLocalContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "local"

    @pytest.fixture
    def target_options(self):
        return {}

    @pytest.fixture
    def repository(self):
        return REPOS / "add_sub"


def test_run_multi_model_repository_json(cli, tmp_path):
    junit = tmp_path / "junit.xml"
    result = cli("run", REPOS / "multi", "--json", "--requests", "200", "--concurrency", "4",
                 "--batch-size", "2", "--junit-xml", junit)
    assert result.code == 0, result
    report = result.json()
    assert report["passed"] is True and report["exit_code"] == 0
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {"add_sub", "pipeline", "scale", "text_len"}
    for model in models.values():
        assert [c["name"] for c in model["checks"]] == ["metadata", "infer", "outputs"]
        assert model["passed"]
    # BYTES in and out, dynamic dims: two generated strings of 17 bytes
    assert models["text_len"]["outputs"]["LENGTHS"]["first"] == [17, 17]
    assert models["text_len"]["outputs"]["UPPER"]["first"][0] == "TRITON-DEPLOYER-0"
    assert models["pipeline"]["outputs"]["Y"]["shape"] == [2, 2, 3]  # batch 2, -1 → 2
    load = report["test"]["load"][0]
    assert load["model"] == "add_sub" and load["requests"] >= 200 and load["errors"] == {}
    assert 0 < load["latency_ms"]["p50"] <= load["latency_ms"]["p90"] <= load["latency_ms"]["p99"]
    assert report["teardown"]["removed"][0]["kind"] == "process"
    assert tagged(report["deployment"]["id"]) == []
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 1 + 4 * 3 + 1


def test_step_by_step_with_sample_and_expect(cli, tmp_path):
    example = EXAMPLES / "add_sub"
    deployed = cli("deploy", example / "models", "--name", "steps", "--json")
    assert deployed.code == 0, deployed
    record = deployed.json()
    assert record["status"] == "ready" and record["endpoint"]["url"].startswith("http://127.0.0.1:")
    pid = int(record["resources"][0]["id"])
    assert tagged(record["id"]) and pid in tagged(record["id"])

    listed = cli("list", "--json").json()
    assert [d["name"] for d in listed] == ["steps"]
    assert cli("status", "steps", "--json").json()["live"] is True

    tested = cli("test", "steps", "--sample", example / "sample.json", "--expect",
                 example / "expect.json", "--json")
    assert tested.code == 0, tested
    checks = tested.json()["models"][0]["checks"]
    assert [(c["name"], c["passed"]) for c in checks] == [
        ("metadata", True), ("infer", True), ("outputs", True),
        ("expect", True)]

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"OUTPUT0": [[0, 0, 0, 0]]}))
    junit = tmp_path / "fail.xml"
    failed = cli("test", "steps", "--sample", example / "sample.json", "--expect", wrong,
                 "--junit-xml", junit)
    assert failed.code == 1, failed
    assert "FAILED" in failed.out and "differs by up to 4.5" in failed.out
    assert ET.parse(junit).getroot().get("failures") == "1"

    assert "Started HTTPService" in cli("logs", "steps").out
    again = cli("deploy", example / "models", "--name", "steps")
    assert again.code == 2 and "deployer teardown steps" in one_line_error(again)

    torn = cli("teardown", "steps", "--json")
    assert torn.code == 0 and torn.json()["removed"] == [{"kind": "process", "id": str(pid)}]
    assert tagged(record["id"]) == []
    assert cli("teardown", "steps", "--json").json()["found"] is False


def test_server_that_fails_to_start_shows_its_log(cli, tmp_path):
    repo = crashing_repository(tmp_path / "broken", "weights file is corrupt")
    result = cli("deploy", repo, "--name", "broken")
    assert result.code == 3, result
    assert "tritonserver cannot serve: failed to load 'add_sub' version 1: Internal: " \
           "RuntimeError: weights file is corrupt" in one_line_error(result)
    assert cli("status", "broken", "--json").json()["status"] == "failed"
    torn = cli("teardown", "broken", "--json")
    assert torn.code == 0 and torn.json()["found"] is True
    assert processes_with(str(repo)) == []


def test_backend_the_embedded_server_lacks(cli, tmp_path):
    repo = tensorrt_repository(tmp_path / "trt")
    result = cli("deploy", repo)
    assert result.code == 2
    line = one_line_error(result)
    assert "needs the tensorrt backend" in line and "--target docker" in line
    assert cli("list", "--json").json() == []


def _deploy_process(repo: Path, name: str, state: Path) -> subprocess.Popen:
    env = {**os.environ, "DEPLOYER_STATE_DIR": str(state)}
    return subprocess.Popen([sys.executable, "-m", "deployer", "deploy", str(repo), "--name",
                             name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=like_a_background_job)


@pytest.mark.parametrize("delay", [0.3, 0.9, "spawned", "ready"])
def test_kill_9_of_deploy_then_teardown_cleans(cli, tmp_path, delay):
    repo = tmp_path / "killed-repo"
    shutil.copytree(REPOS / "add_sub", repo)
    state = Path(os.environ["DEPLOYER_STATE_DIR"])
    record = state / "deployments" / "k9.json"
    proc = _deploy_process(repo, "k9", state)
    if isinstance(delay, float):
        time.sleep(delay)
    else:
        def reached():
            try:
                resources = json.loads(record.read_text())["resources"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return False
            return bool(resources) and (resources[0]["id"].isdigit() if delay == "spawned"
                                        else resources[0]["status"] == "created")
        try:
            wait_for(f"the deploy to record its server as {delay}", reached)
        except BaseException:
            proc.kill()
            raise
    proc.kill()
    proc.wait()
    torn = cli("teardown", "k9")
    assert torn.code == 0, torn
    assert processes_with(str(repo)) == [], "a tritonserver survived teardown"
    assert not record.exists()


def test_ctrl_c_during_deploy_is_recorded(cli, tmp_path):
    state = Path(os.environ["DEPLOYER_STATE_DIR"])
    repo = tmp_path / "interrupted"
    shutil.copytree(REPOS / "add_sub", repo)
    proc = _deploy_process(repo, "intr", state)
    record = state / "deployments" / "intr.json"
    try:
        wait_for("the deploy to record a resource being created",
                 lambda: record.exists() and '"creating"' in record.read_text())
    except BaseException:
        proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"deployer teardown intr" in err and b"Traceback" not in err
    assert cli("teardown", "intr").code == 0
    assert processes_with(str(repo)) == []


def test_update_is_blue_green(cli, tmp_path):
    first = cli("deploy", REPOS / "add_sub", "--name", "bg", "--json")
    assert first.code == 0, first
    old = first.json()
    old_url, old_tag = old["endpoint"]["url"], old["resources"][0]["data"]["tag"]
    updated = cli("deploy", REPOS / "multi", "--name", "bg", "--update", "--json")
    assert updated.code == 0, updated
    new = updated.json()
    assert new["id"] == old["id"] and new["endpoint"]["url"] != old_url
    assert [r["status"] for r in new["resources"]] == ["deleted", "created"]
    assert tagged(old_tag) == [], "the old server must be gone"
    assert tagged(new["resources"][1]["data"]["tag"]), "the new server must run"
    assert sorted(new["models"]) == ["add_sub", "pipeline", "scale", "text_len"]
    tested = cli("test", "bg", "--json")
    assert tested.code == 0 and len(tested.json()["models"]) == 4
    torn = cli("teardown", "bg", "--json").json()
    assert torn["removed"] == [{"kind": "process", "id": new["resources"][1]["id"]}]
    assert tagged(new["resources"][1]["data"]["tag"]) == []


def test_update_that_fails_keeps_the_old_version_serving(cli, tmp_path):
    assert cli("deploy", REPOS / "add_sub", "--name", "keep").code == 0
    broken = crashing_repository(tmp_path / "broken", "bad")
    failed = cli("deploy", broken, "--name", "keep", "--update")
    assert failed.code == 3 and "failed to load 'add_sub'" in one_line_error(failed)
    status = cli("status", "keep", "--json").json()
    assert status["status"] == "ready" and status["live"] is True
    assert status["error"].startswith("update failed:")
    assert status["repository"] == str((REPOS / "add_sub").resolve()), "the old one serves"
    assert cli("test", "keep").code == 0
    assert cli("teardown", "keep").code == 0
    assert processes_with(str(broken)) == []


def test_update_needs_an_existing_deployment_on_the_same_target(cli):
    missing = cli("deploy", REPOS / "add_sub", "--name", "nothing", "--update")
    assert missing.code == 2 and "no deployment named 'nothing' to update" in \
        one_line_error(missing)


def test_list_orphans_finds_a_server_whose_record_was_lost(cli):
    deployed = cli("deploy", REPOS / "add_sub", "--name", "lost", "--json").json()
    state = Path(os.environ["DEPLOYER_STATE_DIR"])
    record = state / "deployments" / "lost.json"
    saved = record.read_text()
    record.unlink()  # the state is lost; the server still runs
    try:
        found = cli("list", "--orphans", "--json").json()["orphans"]
        mine = [o for o in found if o["tag"] == deployed["id"]]
        assert len(mine) == 1 and mine[0]["target"] == "local"
        assert mine[0]["remove"].startswith("kill ")
        assert "lost" not in [d["name"] for d in cli("list", "--json").json()]
    finally:
        record.write_text(saved)
    assert not [o for o in cli("list", "--orphans", "--json").json()["orphans"]
                if o["tag"] == deployed["id"]]
    assert cli("teardown", "lost").code == 0


def test_a_corrupt_record_loses_nothing(cli, tmp_path):
    deployed = cli("deploy", REPOS / "add_sub", "--name", "bent", "--json")
    assert deployed.code == 0, deployed
    tag = deployed.json()["id"]
    record = Path(os.environ["DEPLOYER_STATE_DIR"]) / "deployments" / "bent.json"
    record.write_text('{"name": "bent", "target": "lo')  # cut off mid-write
    (entry,) = cli("list", "--json").json()
    assert entry["status"] == "corrupt" and "deployer teardown bent" in entry["error"]
    assert tagged(tag), "the server still runs"
    torn = cli("teardown", "bent", "--json")
    assert torn.code == 0, torn
    assert [r["kind"] for r in torn.json()["removed"]] == ["process"]
    assert tagged(tag) == [] and not record.exists()
