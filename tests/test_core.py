"""The core against a fake target: plugin loading, options, state, lifecycle, exit codes."""

from __future__ import annotations

import json
import multiprocessing
import signal
from importlib.metadata import EntryPoint

import pytest

from deployer import hookimpl
from deployer.api import Deployer
from deployer.errors import (AlreadyDeployed, DeployFailed, TeardownIncomplete, UsageError)
from deployer.plugins import load
from deployer.state import Deployment, StateStore
from deployer.testing import FakePlugin, FakeTarget, FakeWorld, TargetContract
from deployer.tester import TestOptions

from conftest import REPOS, one_line_error


@pytest.fixture
def world(tmp_path):
    return FakeWorld(tmp_path / "world.json")


@pytest.fixture
def core(tmp_path):
    return Deployer(state_dir=tmp_path / "state", plugins=[FakePlugin()], progress=lambda _: None)


@pytest.fixture
def fake_cli(cli, monkeypatch, world):
    """The CLI with the fake target registered through a stand-in entry point."""
    import importlib.metadata as md

    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: list(real(**kw)) + (
        [EntryPoint("fake", "deployer.testing:FakePlugin", "deployer.targets")]
        if kw.get("group") == "deployer.targets" else []))
    # FakePlugin is a class: register an instance, as entry points of objects would
    monkeypatch.setattr("deployer.testing.FakePlugin", FakePlugin())
    return lambda *args: cli(*args)


class TestFakeContract(TargetContract):
    @pytest.fixture
    def contract_plugins(self):
        return [FakePlugin()]

    @pytest.fixture
    def target_name(self):
        return "fake"

    @pytest.fixture
    def target_options(self, world):
        return {"world": str(world.path)}

    @pytest.fixture
    def repository(self):
        return REPOS / "multi"


def test_builtin_targets_come_through_entry_points():
    registry = load()
    assert "local" in registry.targets
    assert registry.targets["local"].__module__ == "deployer_plugins.local"


def test_disabled_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setenv("DEPLOYER_DISABLE_PLUGINS", "local")
    assert "local" not in load().targets


def test_broken_plugin_is_unavailable_not_a_crash(monkeypatch, cli):
    import importlib.metadata as md

    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: list(real(**kw)) + (
        [EntryPoint("broken", "no_such_module_for_deployer", "deployer.targets")]
        if kw.get("group") == "deployer.targets" else []))
    result = cli("targets", "--json")
    assert result.code == 0, result
    rows = {row["name"]: row for row in result.json()}
    assert rows["local"]["available"] is True
    assert rows["broken"]["available"] is False
    assert "ModuleNotFoundError" in rows["broken"]["reason"]
    failed = cli("deploy", REPOS / "add_sub", "--target", "broken")
    assert failed.code == 2 and "could not be loaded" in one_line_error(failed)


def test_duplicate_target_name_is_refused():
    class Other:
        @hookimpl
        def deployer_register_targets(self):
            return [type("Dup", (FakeTarget,), {"name": "fake"})]

    with pytest.raises(UsageError, match="provided by both"):
        load([FakePlugin(), Other()], entry_points=False)


def test_misspelled_hook_fails_loudly():
    from pluggy import PluginValidationError

    class Typo:
        @hookimpl
        def deployer_register_target(self):  # missing "s"
            return []

    with pytest.raises(PluginValidationError):
        load([Typo()], entry_points=False)


def test_observer_hooks_see_the_lifecycle(tmp_path, world):
    seen = []

    class Observer:
        @hookimpl
        def deployer_deploy_finished(self, deployment, error):
            seen.append(("deploy", deployment.name, error))

        @hookimpl
        def deployer_test_finished(self, deployment, report):
            seen.append(("test", deployment.name, report.passed))

        @hookimpl
        def deployer_teardown_finished(self, deployment, report):
            seen.append(("teardown", deployment.name, len(report.removed)))

    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin(), Observer()],
                    progress=lambda _: None)
    report = core.run(REPOS / "add_sub", "fake", "obs", {"world": str(world.path)})
    assert report.passed
    assert seen == [("deploy", "obs", None), ("test", "obs", True), ("teardown", "obs", 2)]


def test_unknown_target_lists_installed(cli):
    result = cli("deploy", REPOS / "add_sub", "--target", "nope")
    assert result.code == 2
    assert "unknown target 'nope'; installed targets:" in one_line_error(result)
    assert "local" in result.err


@pytest.mark.parametrize("option, message", [
    ("colour=red", "has no option 'colour'"),
    ("world", "is not KEY=VALUE"),
    ("fail_deploy=maybe", "option 'fail_deploy' expects bool"),
])
def test_bad_options_are_one_line(fake_cli, world, option, message, tmp_path):
    result = fake_cli("deploy", REPOS / "add_sub", "--target", "fake", "-o", option)
    assert result.code == 2
    assert message in one_line_error(result)
    assert not (tmp_path / "state" / "deployments").exists() or not list(
        (tmp_path / "state" / "deployments").iterdir())


@pytest.mark.parametrize("options, message", [
    (["min_instances=3", "max_instances=2"], "min_instances 3 is above max_instances 2"),
    (["max_instances=4"], "a range of 2 to 4 instances needs a target to scale on"),
    (["max_instances=4", "target_requests_per_minute=0"],
     "target_requests_per_minute must be a positive number"),
    (["max_instances=1"], "instance_count 2 is above max_instances 1"),
    (["min_instances=-1"], "min_instances must be 0 or more"),
    (["scale_in_cooldown=60"], "scale_in_cooldown needs target_requests_per_minute"),
    (["max_instances=3", "target_requests_per_minute=60", "scale_out_cooldown=-5"],
     "scale_out_cooldown must be 0 or more seconds"),
])
def test_scaling_options_are_checked_before_anything_is_created(fake_cli, world, options,
                                                                message):
    args = [arg for option in options for arg in ("-o", option)]
    result = fake_cli("deploy", REPOS / "add_sub", "--target", "fake", "-o",
                      f"world={world.path}", *args)
    assert result.code == 2, result
    assert message in one_line_error(result)
    assert world.read().get("servers", []) == [] and fake_cli("list", "--json").json() == []


@pytest.mark.parametrize("target", ["local", "docker"])
def test_targets_that_run_one_instance_refuse_the_scaling_options(cli, target):
    result = cli("deploy", REPOS / "add_sub", "--target", target, "-o", "max_instances=3")
    assert result.code == 2, result
    assert (f"target {target!r} runs one instance and does not scale: 'max_instances' is for "
            "the cloud targets") in one_line_error(result)
    assert cli("list", "--json").json() == []


def test_status_shows_the_fleets_range_and_counts(fake_cli, world):
    deployed = fake_cli("deploy", REPOS / "add_sub", "--target", "fake", "--name", "fleet",
                        "-o", f"world={world.path}", "-o", "min_instances=3", "-o",
                        "max_instances=6", "-o", "target_requests_per_minute=900")
    assert deployed.code == 0, deployed
    status = fake_cli("status", "fleet", "--json").json()
    assert status["fleet"] == {"minimum": 3, "maximum": 6, "desired": 3, "current": 3,
                               "rule": "target 900 requests/minute per instance"}
    text = fake_cli("status", "fleet").out
    assert ("instances: 3 now, 3 desired, range 3-6; target 900 requests/minute per "
            "instance") in text
    plain = fake_cli("deploy", REPOS / "add_sub", "--target", "fake", "--name", "plain",
                     "-o", f"world={world.path}")
    assert plain.code == 0 and fake_cli("status", "plain", "--json").json()["fleet"] is None
    assert "instances:" not in fake_cli("status", "plain").out
    for name in ("fleet", "plain"):
        assert fake_cli("teardown", name).code == 0


def test_the_test_step_sets_the_clouds_own_view_beside_its_load(fake_cli, world):
    assert fake_cli("deploy", REPOS / "add_sub", "--target", "fake", "--name", "seen", "-o",
                    f"world={world.path}", "-o", "instance_type=ml.g4dn.xlarge", "-o",
                    "cloud_ms=model=0.02").code == 0
    data = fake_cli("test", "seen", "--requests", "40", "--json").json()
    cloud = data["cloud_time"]
    assert cloud["parts"] == ["model_latency_ms"] and cloud["endpoint_ms"] == 0.02
    assert cloud["client_mean_ms"] == data["load"][0]["latency_ms"]["mean"]
    text = fake_cli("test", "seen", "--requests", "40").out
    assert "the cloud's metrics: model_latency 0.02 ms; outside the endpoint" in text
    assert fake_cli("test", "seen", "--json").json()["cloud_time"] is None  # no load
    assert fake_cli("teardown", "seen").code == 0


def test_config_file_and_cli_override(fake_cli, world, tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(f'target = "fake"\nname = "from-config"\n[options]\nworld = "{world.path}"\n'
                      'fail_deploy = true\n')
    failed = fake_cli("deploy", REPOS / "add_sub", "--config", config)
    assert failed.code == 3 and "did not become ready" in one_line_error(failed)
    assert fake_cli("teardown", "from-config").code == 0
    ok = fake_cli("deploy", REPOS / "add_sub", "--config", config, "-o", "fail_deploy=false",
                  "--json")
    assert ok.code == 0, ok
    assert ok.json()["name"] == "from-config" and ok.json()["options"]["fail_deploy"] is False


@pytest.mark.parametrize("text, message", [
    (None, "cannot read config file"),
    ('target = "fake"\n[options\n', "the config file is TOML (or JSON if it ends in .json)"),
    ('target = "fake"\nregion = "x"\n', "unknown key(s) region (allowed: target, name, options)"),
    ('target = "fake"\noptions = "world=x"\n', "options must be a table"),
])
def test_a_bad_config_file_is_one_line_and_creates_nothing(fake_cli, tmp_path, text, message):
    config = tmp_path / "deploy.toml"
    if text is not None:
        config.write_text(text)
    for command in ("validate", "plan", "deploy", "run"):
        result = fake_cli(command, REPOS / "add_sub", "--config", config)
        assert result.code == 2, (command, result)
        assert message in one_line_error(result) and str(config) in result.err
    assert not (tmp_path / "state" / "deployments").exists() or not list(
        (tmp_path / "state" / "deployments").iterdir())


def test_the_api_reads_config_files_explicit_arguments_win(core, world, tmp_path):
    config = tmp_path / "deploy.json"
    config.write_text(json.dumps({"target": "fake", "name": "from-json",
                                  "options": {"world": str(world.path), "fail_deploy": True}}))
    assert list(core.validate(REPOS / "add_sub", config=config).models) == ["add_sub"]
    plan = core.plan(REPOS / "add_sub", config=config)
    assert (plan.target, plan.name) == ("fake", "from-json")
    with pytest.raises(DeployFailed):
        core.deploy(REPOS / "add_sub", config=config)
    core.teardown("from-json")
    deployment = core.deploy(REPOS / "add_sub", name="explicit", options={"fail_deploy": False},
                             config=config)
    assert (deployment.target, deployment.name) == ("fake", "explicit")
    assert deployment.options["world"] == str(world.path)
    assert deployment.options["fail_deploy"] is False
    core.teardown("explicit")
    report = core.run(REPOS / "add_sub", name="ran", options={"fail_deploy": "no"},
                      config=config)
    assert report.passed and report.target == "fake", report.to_dict()
    assert world.read() == {"buckets": [], "servers": []}
    # an explicit target wins over the file's (whose options local does not have)
    with pytest.raises(UsageError, match="target 'local' has no option 'world', 'fail_deploy'"):
        core.plan(REPOS / "add_sub", "local", config=config)
    with pytest.raises(UsageError, match="rehearse needs --target"):
        core.rehearse(REPOS / "add_sub")


def test_plan_exports_only_what_a_target_can(fake_cli, world, tmp_path):
    out = tmp_path / "documents"
    result = fake_cli("plan", REPOS / "add_sub", "-t", "fake", "-o", f"world={world.path}",
                      "--export", out)
    assert result.code == 2
    assert one_line_error(result).startswith("error: target fake has nothing to export")
    assert not out.exists() and not world.path.exists()


class LeakyPlanTarget(FakeTarget):
    name = "leaky"

    def plan(self, repository, name):
        with open("plan-notes.txt", "w") as notes:  # the current folder
            notes.write(name)
        return super().plan(repository, name)


class LeakyPlugin:
    @hookimpl
    def deployer_register_targets(self):
        return [LeakyPlanTarget]


def test_the_contract_catches_a_plan_that_writes(tmp_path, monkeypatch):
    deployer = Deployer(state_dir=tmp_path / "state", plugins=[LeakyPlugin()],
                        progress=lambda _: None)
    contract = TargetContract()
    with pytest.raises(AssertionError, match="plan wrote .*plan-notes.txt"):
        contract.test_plan_has_no_side_effect(
            deployer, "leaky", {"world": str(tmp_path / "world.json")}, REPOS / "add_sub",
            tmp_path, monkeypatch)


def test_secret_option_never_reaches_state(core, world, tmp_path):
    core.deploy(REPOS / "add_sub", "fake", "sec", {"world": str(world.path),
                                                   "token": "s3cr3t-token-value"})
    stored = (tmp_path / "state" / "deployments" / "sec.json").read_text()
    assert "s3cr3t-token-value" not in stored
    assert "token" not in json.loads(stored)["options"]


def test_failed_deploy_keeps_record_and_teardown_removes_all(core, world):
    with pytest.raises(DeployFailed):
        core.deploy(REPOS / "add_sub", "fake", "bad", {"world": str(world.path),
                                                       "fail_deploy": True})
    stored = core.store.load("bad")
    assert stored.status == "failed" and "did not become ready" in stored.error
    assert world.read() == {"buckets": [stored.id], "servers": [stored.id]}
    report = core.teardown("bad")
    assert [r["kind"] for r in report.removed] == ["server", "bucket"]  # newest first
    assert world.read() == {"buckets": [], "servers": []}
    assert not core.store.exists("bad")


def test_teardown_verifies_and_keeps_record_when_something_survives(core, world):
    core.deploy(REPOS / "add_sub", "fake", "stuck", {"world": str(world.path), "stuck": True})
    with pytest.raises(TeardownIncomplete) as raised:
        core.teardown("stuck")
    assert raised.value.details.count("still exists after delete") == 2
    assert core.store.exists("stuck")


def test_teardown_carries_on_past_a_failing_resource(fake_cli, world):
    options = ["--target", "fake", "-o", f"world={world.path}"]
    assert fake_cli("deploy", REPOS / "add_sub", "--name", "half", *options).code == 0
    data = world.read()
    world.write({**data, "fail_delete": {"server": 1}})  # the newest resource fails once
    first = fake_cli("teardown", "half")
    assert first.code == 4, first
    line = one_line_error(first)
    assert "1 of 2 resource(s) not removed" in line and "deployer teardown half" in line
    assert "server half-server: RuntimeError: the fake cloud refused" in first.err
    assert "removed: bucket half-bucket" in first.err, "the rest must go on"
    assert world.read()["buckets"] == [] and world.read()["servers"]
    listed = fake_cli("list", "--json").json()
    assert [(d["name"], d["status"]) for d in listed] == [("half", "teardown-incomplete")]
    second = fake_cli("teardown", "half", "--json")
    assert second.code == 0, second
    assert second.json()["removed"] == [{"kind": "server", "id": "half-server"}]
    assert world.read()["servers"] == [] and fake_cli("list", "--json").json() == []


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_record_is_listed_and_torn_down_by_its_tags(fake_cli, world, tmp_path,
                                                              damage):
    options = ["--target", "fake", "-o", f"world={world.path}"]
    assert fake_cli("deploy", REPOS / "add_sub", "--name", "bent", *options).code == 0
    record = tmp_path / "state" / "deployments" / "bent.json"
    text = record.read_text()
    record.write_text("" if damage == "truncated" else text[: len(text) // 2])
    listed = fake_cli("list", "--json")
    assert listed.code == 0, listed
    (entry,) = listed.json()
    assert entry["status"] == "corrupt" and "deployer teardown bent" in entry["error"]
    assert "corrupt" in fake_cli("list").out
    tested = fake_cli("test", "bent")
    assert tested.code == 2 and "deployer teardown bent" in one_line_error(tested)
    torn = fake_cli("teardown", "bent", "--json")
    assert torn.code == 0, torn
    assert sorted(r["kind"] for r in torn.json()["removed"]) == ["bucket", "server"]
    assert world.read() == {"buckets": [], "servers": []}
    assert not record.exists()


@pytest.mark.parametrize("bad", ["sample-not-json", "sample-wrong-input", "expect-missing",
                                 "junit-folder"])
def test_run_checks_its_files_before_creating_anything(fake_cli, world, tmp_path, bad):
    sample = tmp_path / "sample.json"
    sample.write_text({"sample-not-json": "{oops",
                       "sample-wrong-input": json.dumps({"NOPE": [1, 2, 3, 4]})}.get(
        bad, json.dumps({"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1]})))
    args = ["run", REPOS / "add_sub", "--target", "fake", "-o", f"world={world.path}",
            "--sample", sample]
    if bad == "expect-missing":
        args += ["--expect", tmp_path / "missing.json"]
    if bad == "junit-folder":
        args += ["--junit-xml", tmp_path / "no" / "such" / "folder" / "j.xml"]
    result = fake_cli(*args)
    assert result.code == 2, result
    one_line_error(result)
    assert world.read() == {}, "nothing may be created"
    assert fake_cli("list", "--json").json() == []


def test_name_taken_suggests_teardown(core, world):
    core.deploy(REPOS / "add_sub", "fake", "taken", {"world": str(world.path)})
    with pytest.raises(AlreadyDeployed, match="deployer teardown taken"):
        core.deploy(REPOS / "add_sub", "fake", "taken", {"world": str(world.path)})


def test_run_exit_codes(core, world, tmp_path):
    options = {"world": str(world.path)}
    assert core.run(REPOS / "add_sub", "fake", "r1", options).exit_code == 0
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"OUTPUT0": [[1, 1, 1, 1]]}))
    failed = core.run(REPOS / "add_sub", "fake", "r2", options, TestOptions(expect=expect))
    assert failed.exit_code == 1 and not failed.passed
    assert failed.teardown and failed.teardown.removed
    broken = core.run(REPOS / "add_sub", "fake", "r3", {**options, "fail_deploy": True})
    assert broken.exit_code == 3 and broken.test is None and broken.teardown.removed
    assert world.read() == {"buckets": [], "servers": []}


def _reserve(args):
    root, index = args
    try:
        StateStore(root).reserve(Deployment(name="race", target="fake", repository="r",
                                            models=[], options={"i": index}))
        return "won"
    except AlreadyDeployed:
        return "lost"


def test_the_cli_gives_back_the_signal_handlers(cli):
    """An in-process CLI call (as every test makes) restores the handlers it replaced: a
    process forked after it (a multiprocessing pool) must still die on SIGTERM."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert cli("list", "--json").code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_two_processes_cannot_take_one_name(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        outcomes = pool.map(_reserve, [(str(tmp_path), i) for i in range(8)])
    assert outcomes.count("won") == 1 and outcomes.count("lost") == 7
    assert json.loads((tmp_path / "deployments" / "race.json").read_text())["name"] == "race"
    assert not [p for p in (tmp_path / "deployments").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, message", [
    (("test", "ghost"), "no deployment named 'ghost'"),
    (("status", "ghost"), "no deployment named 'ghost'"),
    (("deploy", "/no/such/repository"), "no such model repository"),
    (("deploy", REPOS / "add_sub", "--name", "Bad_Name"), "invalid deployment name"),
])
def test_bad_input_is_one_line_exit_2(cli, args, message):
    result = cli(*args)
    assert result.code == 2, result
    assert message in one_line_error(result)


def test_teardown_of_unknown_name_is_nothing_to_do(cli):
    result = cli("teardown", "ghost", "--json")
    assert result.code == 0 and result.json()["found"] is False


def test_json_error_goes_to_stdout_too(cli):
    result = cli("status", "ghost", "--json")
    assert result.code == 2 and "no deployment" in result.json()["error"]


def test_targets_describes_options(cli):
    result = cli("targets", "local", "--json")
    assert result.code == 0
    names = {o["name"] for o in result.json()["options"]}
    assert {"server", "http_port", "startup_timeout", "args"} <= names


def test_a_corrupt_record_stays_when_a_target_cannot_look(tmp_path, world):
    class Blind(FakeTarget):
        name = "blind"

        def recover(self, name, deployment_id):
            raise RuntimeError("no credentials to list resources")

    class Plugin:
        @hookimpl
        def deployer_register_targets(self):
            return [FakeTarget, Blind]

    core = Deployer(state_dir=tmp_path / "state", plugins=[Plugin()], entry_points=False,
                    progress=lambda _: None)
    core.deploy(REPOS / "add_sub", "fake", "gone", {"world": str(world.path)})
    record = tmp_path / "state" / "deployments" / "gone.json"
    record.write_text("{not json")
    (tmp_path / "state" / "work" / "gone" / "deployment.json").unlink()  # no trace of the id
    with pytest.raises(TeardownIncomplete) as raised:
        core.teardown("gone")
    assert "blind: no credentials to list resources" in raised.value.details
    assert record.exists(), "what it owned may still exist: the record must stay"
