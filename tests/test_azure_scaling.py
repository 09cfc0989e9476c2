"""Autoscaling on azure (issue 14): an Azure Monitor autoscale setting on the deployment, made
through the seam with azure-mgmt-monitor's own entities, held by the fake control plane
(tests/azure_support.py) as the service holds it; and the twin, which records the range and
runs one instance. Driven through the CLI, over a real Triton."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from azure_support import GROUP_ID, WORKSPACE_ID, azure_error, fake, run_cli  # noqa: F401
from deployer.errors import ValidationError
from deployer_plugins.azure import spec

pytestmark = pytest.mark.server
ADD_SUB = Path(__file__).parent / "repos" / "add_sub"
SCALE = ("-o", "min_instances=1", "-o", "max_instances=4", "-o",
         "target_requests_per_minute=600")


def _line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _resources(record: dict) -> list[tuple[str, str, str]]:
    return [(r["kind"], r["id"], r["status"]) for r in record["resources"]]


def _calls(fake, since: int = 0) -> list[tuple[str, str]]:
    return [c for c in fake.calls[since:] if not c[0].startswith(("get", "model_active",
                                                                  "list"))]


def _status(run_cli, name: str) -> dict:
    code, out, err = run_cli("status", name, "--json")
    assert code == 0, err
    return json.loads(out)


def test_deploy_creates_the_setting_status_shows_it_teardown_removes_it(fake, run_cli):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "sc",
                             "-o", "endpoint=ep-sc", "-o", "tags=team=ml", *SCALE,
                             "-o", "scale_out_cooldown=120", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert _resources(record) == [
        ("endpoint", "ep-sc", "created"), ("model", "sc:1", "created"),
        ("deployment", "ep-sc/blue", "created"), ("traffic", "ep-sc/blue", "created"),
        ("autoscale", "autoscale-ep-sc-blue", "created")]
    assert _calls(fake)[-2:] == [("set_traffic", "ep-sc"),
                                 ("create_autoscale", "autoscale-ep-sc-blue")]

    (setting,) = fake.autoscale.values()
    endpoint_id = f"{WORKSPACE_ID}/onlineEndpoints/ep-sc"
    assert setting["id"] == f"{GROUP_ID}/providers/microsoft.insights/autoscalesettings/" \
                            "autoscale-ep-sc-blue"
    assert setting["location"] == "westeurope"
    assert setting["tags"] == {"team": "ml", spec.NAME_TAG: "sc", spec.ID_TAG: record["id"]}
    properties = setting["properties"]
    assert properties["enabled"] is True
    assert properties["targetResourceUri"] == f"{endpoint_id}/deployments/blue"
    (profile,) = properties["profiles"]
    assert profile["capacity"] == {"minimum": "1", "maximum": "4", "default": "1"}
    out_rule, in_rule = profile["rules"]
    for rule, operator, threshold, direction, cooldown in (
            (out_rule, "GreaterThan", 600.0, "Increase", "PT2M"),
            (in_rule, "LessThan", 300.0, "Decrease", "PT5M")):
        trigger, action = rule["metricTrigger"], rule["scaleAction"]
        assert (trigger["metricName"], trigger["metricResourceUri"]) == (
            "RequestsPerMinute", endpoint_id)  # an endpoint metric, split by deployment
        assert trigger["dimensions"] == [{"DimensionName": "deployment", "Operator": "Equals",
                                          "Values": ["blue"]}]
        assert trigger["dividePerInstance"] is True
        assert (trigger["operator"], trigger["threshold"]) == (operator, threshold)
        assert (trigger["timeGrain"], trigger["timeWindow"]) == ("PT1M", "PT5M")
        assert action == {"direction": direction, "type": "ChangeCount", "value": "1",
                          "cooldown": cooldown}

    status = _status(run_cli, "sc")
    fleet = status["fleet"]
    assert (fleet["minimum"], fleet["maximum"], fleet["desired"], fleet["current"]) == \
        (1, 4, 1, 1)
    assert fleet["rule"].startswith("RequestsPerMinute per instance > 600 over PT5M: "
                                    "Increase by 1 (cooldown PT2M); RequestsPerMinute per "
                                    "instance < 300"), fleet
    code, out, _ = run_cli("status", "sc")
    assert code == 0 and "instances: 1 now, 1 desired, range 1-4; RequestsPerMinute" in out
    code, out, err = run_cli("test", "sc", "--requests", "5", "--json")
    assert code == 0 and json.loads(out)["passed"], out + err

    first = len(fake.calls)
    code, out, err = run_cli("teardown", "sc", "--json")
    assert code == 0, err
    assert [(r["kind"], r["id"]) for r in json.loads(out)["removed"]][:3] == [
        ("autoscale", "autoscale-ep-sc-blue"), ("traffic", "ep-sc/blue"),
        ("deployment", "ep-sc/blue")]
    calls = _calls(fake, first)
    assert calls.index(("delete_autoscale", "autoscale-ep-sc-blue")) < \
        calls.index(("delete_deployment", "ep-sc/blue"))
    assert fake.autoscale == {} and fake.endpoints == {}
    code, out, _ = run_cli("teardown", "sc", "--json")
    assert code == 0 and json.loads(out)["found"] is False


def test_the_range_raises_the_initial_count_and_plan_exports_the_setting(fake, run_cli,
                                                                         tmp_path):
    """min_instances=2 above instance_count=1: the deployment starts with 2 (plan and cloud);
    plan shows the setting with the ids the options give, --export writes its ARM body."""
    options = ("-o", "endpoint=ep-two", "-o", "subscription=sub-1", "-o", "resource_group=grp",
               "-o", "workspace=wsp", "-o", "min_instances=2", "-o", "max_instances=5",
               "-o", "target_requests_per_minute=120")
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", "azure", "--name", "two", *options,
                             "--json", "--export", str(tmp_path / "docs"))
    assert code == 0, err
    planned = json.loads(out)
    assert [r["kind"] for r in planned["resources"]] == ["endpoint", "model", "deployment",
                                                        "traffic", "autoscale"]
    details = {r["kind"]: r["details"] for r in planned["resources"]}
    assert details["deployment"]["instance_count"] == 2
    setting = details["autoscale"]
    ids = "/subscriptions/sub-1/resourceGroups/grp/providers/Microsoft.MachineLearningServices" \
          "/workspaces/wsp/onlineEndpoints/ep-two"
    assert setting["properties"]["targetResourceUri"] == ids + "/deployments/blue"
    assert setting["properties"]["profiles"][0]["capacity"] == {
        "minimum": "2", "maximum": "5", "default": "2"}
    assert "rule-based, not target tracking" in setting["note"]
    assert "6 x Standard_NC4as_T4_v3" in setting["note"]  # 5 and the 20% upgrade reserve
    assert json.loads((tmp_path / "docs" / "autoscale.json").read_text()) == \
        {k: v for k, v in setting.items() if k != "note"}
    assert str(tmp_path / "docs" / "autoscale.json") in planned["exported"]

    # the cloud: 2 instances from the start, and so the fleet
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "two", *options)
    assert code == 0, err
    assert fake.endpoints["ep-two"].deployments["blue"].instance_count == 2
    fleet = _status(run_cli, "two")["fleet"]
    assert (fleet["minimum"], fleet["maximum"], fleet["current"]) == (2, 5, 2)
    assert run_cli("teardown", "two")[0] == 0 and fake.autoscale == {}


@pytest.mark.parametrize("options, message", [
    (("min_instances=5", "max_instances=2", "target_requests_per_minute=10"),
     "min_instances 5 is above max_instances 2"),
    (("min_instances=0", "max_instances=2", "target_requests_per_minute=10"),
     "cannot scale to zero"),
    (("max_instances=3", "target_requests_per_minute=0"),
     "target_requests_per_minute must be a positive number, got 0"),
    (("max_instances=21", "target_requests_per_minute=600"),
     "max_instances 21 is above the endpoint limit of 20 instances per deployment"),
    (("max_instances=3", "target_requests_per_minute=600", "scale_in_cooldown=30"),
     "scale_in_cooldown 30 is outside Azure's range of 60 seconds to 1 week"),
    (("max_instances=3",), "needs a target to scale on"),
], ids=["min-above-max", "zero", "target-0", "over-limit", "cooldown", "no-target"])
def test_refusals_create_nothing(fake, run_cli, options, message):
    args = [arg for option in options for arg in ("-o", option)]
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "no", *args)
    assert code == 2, err
    assert message in _line(err), err
    assert fake.calls == [] and fake.autoscale == {} and fake.endpoints == {}
    assert run_cli("status", "no")[0] == 2  # nothing recorded


def test_a_raised_instance_limit_lets_the_range_through(fake, run_cli):
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", "azure", "--name", "big", "-o",
                             "max_instances=30", "-o", "target_requests_per_minute=600",
                             "-o", "instance_limit=50", "--json")
    assert code == 0, err
    autoscale = [r for r in json.loads(out)["resources"] if r["kind"] == "autoscale"]
    assert autoscale[0]["details"]["properties"]["profiles"][0]["capacity"]["maximum"] == "30"


def test_blue_green_moves_the_setting_in_place_keeps_it(fake, run_cli):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgs",
                   "-o", "endpoint=ep-bgs", *SCALE)[0] == 0
    first = len(fake.calls)
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgs",
                             "--update", "-o", "blue_green=true", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert [(k, i, s) for k, i, s in _resources(record) if k in ("autoscale", "deployment")] \
        == [("deployment", "ep-bgs/blue", "deleted"),
            ("autoscale", "autoscale-ep-bgs-blue", "deleted"),
            ("deployment", "ep-bgs/green", "created"),
            ("autoscale", "autoscale-ep-bgs-green", "created")]
    calls = _calls(fake, first)
    # the new setting before the traffic moves; the old one before the old deployment goes
    assert calls.index(("create_autoscale", "autoscale-ep-bgs-green")) < \
        calls.index(("set_traffic", "ep-bgs"))
    assert calls.index(("delete_autoscale", "autoscale-ep-bgs-blue")) < \
        calls.index(("delete_deployment", "ep-bgs/blue"))
    assert list(fake.autoscale) == ["autoscale-ep-bgs-green"]
    assert fake.autoscale["autoscale-ep-bgs-green"]["properties"]["targetResourceUri"] == \
        f"{WORKSPACE_ID}/onlineEndpoints/ep-bgs/deployments/green"
    assert _status(run_cli, "bgs")["fleet"]["maximum"] == 4

    # in place, with a new maximum: the same deployment, the same setting, updated
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgs",
                             "--update", "-o", "blue_green=false", "-o", "max_instances=3",
                             "--json")
    assert code == 0, err
    live = [(k, i) for k, i, s in _resources(json.loads(out)) if k == "autoscale" and
            s != "deleted"]
    assert live == [("autoscale", "autoscale-ep-bgs-green")]
    assert list(fake.autoscale) == ["autoscale-ep-bgs-green"]
    capacity = fake.autoscale["autoscale-ep-bgs-green"]["properties"]["profiles"][0][
        "capacity"]
    assert capacity == {"minimum": "1", "maximum": "3", "default": "1"}
    assert _status(run_cli, "bgs")["fleet"]["maximum"] == 3

    assert run_cli("teardown", "bgs")[0] == 0
    assert fake.autoscale == {} and fake.endpoints == {}


def _forbidden():
    scope = f"{GROUP_ID}/providers/microsoft.insights/autoscalesettings/autoscale-ep-nr-blue"
    return azure_error(403, "AuthorizationFailed", (
        "The client 'dev@contoso.com' with object id '11111111-2222-3333-4444-555555555555' "
        "does not have authorization to perform action 'microsoft.insights/autoscalesettings/"
        f"write' over scope '{scope}' or the scope is invalid."), "PUT")


def test_a_refused_setting_is_one_line_and_teardown_cleans_up(fake, run_cli):
    fake.fail("create_autoscale", _forbidden())
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "nr",
                           "-o", "endpoint=ep-nr", *SCALE)
    assert code == 3, err
    line = _line(err)
    assert "creating autoscale setting autoscale-ep-nr-blue: AuthorizationFailed" in line
    assert "'Monitoring Contributor' role" in line and f"resource group {GROUP_ID}" in line
    assert "deployer teardown nr" in line
    assert _status(run_cli, "nr")["resources"][-1]["status"] == "creating"
    assert ("autoscale", "autoscale-ep-nr-blue", "creating") in _resources(
        _status(run_cli, "nr"))
    code, _, err = run_cli("teardown", "nr")
    assert code == 0, err
    assert fake.endpoints == {} and fake.autoscale == {}


def test_a_setting_the_service_refuses_fails_the_new_deployment_of_blue_green(fake, run_cli):
    """The service refuses the green setting (400): green is removed, blue keeps serving
    with its own setting."""
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgr",
                   "-o", "endpoint=ep-bgr", *SCALE)[0] == 0
    fake.fail("create_autoscale", azure_error(400, "BadRequest", "the setting is refused",
                                              "PUT"))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgr",
                           "--update", "-o", "blue_green=true")
    assert code == 3, err
    line = _line(err)
    assert "BadRequest" in line and "the new deployment ep-bgr/green was removed" in line
    assert "ep-bgr/blue still serves the previous version" in line
    assert list(fake.endpoints["ep-bgr"].deployments) == ["blue"]
    assert list(fake.autoscale) == ["autoscale-ep-bgr-blue"]
    status = _status(run_cli, "bgr")
    assert status["status"] == "ready" and status["endpoint"]["deployment"] == "blue"
    assert run_cli("test", "bgr")[0] == 0
    assert run_cli("teardown", "bgr")[0] == 0 and fake.autoscale == {}


def test_recover_by_tags_removes_the_setting(fake, run_cli, tmp_path):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "lostsc",
                             *SCALE, "--json")
    assert code == 0, err
    created = [(r["kind"], r["id"]) for r in json.loads(out)["resources"]]
    path = tmp_path / "state" / "deployments" / "lostsc.json"
    path.write_text(path.read_text()[:-40])  # cut short: not JSON any more
    code, out, err = run_cli("teardown", "lostsc", "--json")
    assert code == 0, err
    assert [(r["kind"], r["id"]) for r in json.loads(out)["removed"]] == created[::-1]
    assert fake.autoscale == {} and fake.endpoints == {}


def test_the_twin_records_the_range_and_runs_one_instance(fake, run_cli):
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "tws",
                           *SCALE)
    assert code == 0, err
    fleet = _status(run_cli, "tws")["fleet"]
    assert (fleet["minimum"], fleet["maximum"], fleet["desired"], fleet["current"]) == \
        (1, 4, 1, 1)
    assert fleet["rule"].startswith("RequestsPerMinute per instance > 600")
    assert fleet["rule"].endswith("(recorded; the twin runs one instance and does not scale)")
    code, out, _ = run_cli("status", "tws")
    assert "instances: 1 now, 1 desired, range 1-4" in out
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", "azure-twin", "--name", "tws",
                             *SCALE, "--json")  # it creates no setting of its own
    assert code == 0 and "autoscale" not in [r["kind"] for r in json.loads(out)["resources"]]
    assert run_cli("teardown", "tws")[0] == 0
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "tw0",
                           "-o", "min_instances=0", "-o", "max_instances=2",
                           "-o", "target_requests_per_minute=10")
    assert code == 2 and "cannot scale to zero" in _line(err)
    assert fake.calls == []


def test_the_document_is_what_the_sdk_sends():
    """The setting's document is azure-mgmt-monitor's own serialisation of the entity built
    from it; a field it does not know is refused."""
    import isodate

    for seconds in (60, 90, 300, 3600, 86400, 86461, 7 * 86400):
        assert spec.duration(seconds) == isodate.duration_isoformat(
            datetime.timedelta(seconds=seconds))
    from deployer.target import Scaling

    fleet = Scaling(1, 3, 1, 50, scale_in_cooldown=600)
    document = spec.autoscale_document(fleet, "blue", "/e", "/e/deployments/blue", "westus",
                                       {"k": "v"})
    entity = spec.autoscale_entity(document)
    assert entity.serialize() == document
    assert entity.profiles[0].rules[1].scale_action.cooldown == datetime.timedelta(minutes=10)
    document["properties"]["profiles"][0]["rules"][0]["metricTrigger"]["extra"] = 1
    with pytest.raises(ValidationError, match="otherwise than planned"):
        spec.autoscale_entity(document)


def test_the_real_monitor_client_sends_the_document(monkeypatch):
    """MLSeam's autoscale calls through a real MonitorManagementClient whose HTTP transport
    answers as ARM: the PUT's URL and body (exactly the document the fake keeps), 404 as
    none, a DELETE of a setting that is there, a 403 as one line naming the role."""
    from azure_support import _response, monitor_seam
    from deployer_plugins.azure import seam
    from deployer.target import Scaling

    store, refuse, sent = {}, [], []

    def answer(request):
        body = json.loads(request.content) if request.content else None
        sent.append((request.method, request.url.split("?")[0], body))
        name = request.url.split("?")[0].rsplit("/", 1)[1]
        if refuse:
            return _response(403, {"error": {"code": "AuthorizationFailed", "message": (
                "The client 'x' does not have authorization to perform action "
                "'microsoft.insights/autoscalesettings/write' over scope "
                f"'{GROUP_ID}/providers/microsoft.insights/autoscalesettings/{name}' or "
                "the scope is invalid.")}}, request.method, request.url)
        if request.method == "PUT":
            store[name] = {**body, "id": f"{GROUP_ID}/x/{name}", "name": name}
        elif request.method == "DELETE":
            return _response(200 if store.pop(name, None) else 204, {}, "DELETE", request.url)
        if name not in store:
            return _response(404, {"error": {"code": "ResourceNotFound",
                                              "message": "not found"}}, "GET", request.url)
        return _response(200, store[name], request.method, request.url)

    real, _ = monitor_seam(answer)
    document = spec.autoscale_document(Scaling(1, 3, 1, 50), "blue", "/e",
                                       "/e/deployments/blue", "westus", {"k": "v"})
    info = real.create_autoscale("as1", spec.autoscale_entity(document))
    assert (info.minimum, info.maximum, info.enabled, info.tags) == (1, 3, True, {"k": "v"})
    method, url, body = sent[0]
    assert (method, url) == ("PUT", "https://management.azure.com/subscriptions/sub/"
                             "resourcegroups/rg/providers/Microsoft.Insights/"
                             "autoscalesettings/as1")
    assert body == document
    assert spec.autoscale_rule(info.document) == spec.autoscale_rule(document)
    assert real.get_autoscale("missing") is None
    assert real.delete_autoscale("as1") is True and real.delete_autoscale("as1") is False
    refuse.append(True)
    with pytest.raises(seam.ForbiddenError) as refused:
        real.create_autoscale("as2", spec.autoscale_entity(document))
    assert "creating autoscale setting as2: AuthorizationFailed" in str(refused.value)
    assert "'Monitoring Contributor' role" in refused.value.hint
