"""When Azure says no: the first errors a real subscription returns, raised by the fake
control plane (tests/azure_support.py) as azure-core's own exception types on Azure's own JSON
error body, and seen through the CLI: one line, the exit code, nothing left in the workspace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from azure_support import OperationFailure, azure_error, fake, run_cli  # noqa: F401 (fixtures)

pytestmark = pytest.mark.server
ADD_SUB = Path(__file__).parent / "repos" / "add_sub"
SCOPE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
         "Microsoft.MachineLearningServices/workspaces/ws")
CREATES = ("create_or_update_endpoint", "register_model", "create_or_update_deployment",
           "set_traffic")


def untimed(line: str) -> str:
    """A progress line without the timestamp piped output starts it with."""
    return re.sub(r"^\d\d:\d\d:\d\d ", "", line).strip()


def _line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _forbidden(action: str, scope: str = SCOPE):
    return azure_error(403, "AuthorizationFailed", (
        "The client 'dev@contoso.com' with object id '11111111-2222-3333-4444-555555555555' "
        f"does not have authorization to perform action '{action}' over scope '{scope}' or "
        "the scope is invalid. If access was recently granted, please refresh your "
        "credentials."))


def _recorded(run_cli, name: str) -> list[tuple[str, str, str]]:
    code, out, err = run_cli("status", name, "--json")
    assert code == 0, err
    return [(r["kind"], r["id"], r["status"]) for r in json.loads(out)["resources"]]


def _torn_down(fake, run_cli, name: str) -> None:
    code, _, err = run_cli("teardown", name)
    assert code == 0, err
    assert fake.endpoints == {}
    assert all(m["archived"] for m in fake.models.values())
    assert run_cli("status", name)[0] == 2  # the record is gone


# -- found by the first read, before anything is created: exit 2 ------------------------------
def test_no_credential_is_one_line(fake, run_cli):
    fake.no_credential = True  # the real azure-identity chain, with nothing set up here
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "nocred",
                           "-o", "endpoint=ep-nocred")
    assert code == 2, err
    line = _line(err)
    assert "no Azure credential is set up (tried EnvironmentCredential, AzureCliCredential)" \
        in line
    assert "az login" in line and "AZURE_CLIENT_ID" in line
    assert len(err.strip().splitlines()) == 2  # the progress line, then the error
    assert [c for c, _ in fake.calls] == ["get_workspace"]
    assert run_cli("status", "nocred")[0] == 2  # nothing created, nothing recorded


@pytest.mark.parametrize("fault, words", [
    (lambda f: f.fail("get_workspace", azure_error(
        401, "InvalidAuthenticationTokenTenant", "The access token is from the wrong issuer "
        "'https://sts.windows.net/aaaa/'. It must match the tenant associated with this "
        "subscription.")),
     ["InvalidAuthenticationTokenTenant", "Azure refused the credential", "az login --tenant"]),
    (lambda f: f.fail("get_workspace", _forbidden(
        "Microsoft.MachineLearningServices/workspaces/read")),
     ["AuthorizationFailed", "lacks permission Microsoft.MachineLearningServices/workspaces/read",
      f"'AzureML Data Scientist' role (or Contributor) on the workspace {SCOPE}"]),
    (lambda f: setattr(f, "workspace_missing", True),
     ["workspace was not found", "ResourceNotFound", "check -o subscription, -o "
      "resource_group and -o workspace"]),
    (lambda f: f.fail("get_endpoint", azure_error(
        404, "ParentResourceNotFound", "Can not perform requested operation on nested resource."
        " Parent resource 'ws' not found.")),
     ["ParentResourceNotFound", "check -o subscription"]),
], ids=["401-wrong-tenant", "403-no-role", "workspace-missing", "parent-missing"])
def test_checked_before_anything_is_created(fake, run_cli, fault, words):
    fault(fake)
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "early",
                           "-o", "endpoint=ep-early")
    assert code == 2, err
    line = _line(err)
    assert all(word in line for word in words), line
    assert "nothing was created" in line
    assert not any(c in CREATES for c, _ in fake.calls), fake.calls
    assert run_cli("status", "early")[0] == 2 and fake.endpoints == {}


# -- after the first create: exit 3, the record keeps what was created ---------------------------
def test_no_role_to_register_the_model(fake, run_cli):
    """The identity may create endpoints but not register models: exit 3 with the role and
    the scope; the endpoint stays recorded and teardown removes it."""
    fake.fail("register_model", _forbidden(
        "Microsoft.MachineLearningServices/workspaces/models/versions/write",
        SCOPE + "/models/rbac"))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "rbac",
                           "-o", "endpoint=ep-rbac")
    assert code == 3, err
    line = _line(err)
    assert "registering model rbac: AuthorizationFailed" in line
    assert f"'AzureML Data Scientist' role (or Contributor) on the workspace {SCOPE} " in line
    assert "deployer teardown rbac" in line
    assert _recorded(run_cli, "rbac") == [("endpoint", "ep-rbac", "created"),
                                          ("model", "rbac", "creating")]
    _torn_down(fake, run_cli, "rbac")


def test_out_of_quota_during_provisioning(fake, run_cli):
    """The deployment is accepted, then fails OutOfQuota (a new subscription has no GPU quota):
    the VM family's quota to raise and the region, the provisioning state, the logs."""
    fake.fail("create_or_update_deployment", OperationFailure("OutOfQuota", (
        "Not enough quota available for Standard_NC4as_T4_v3 in SubscriptionId "
        "00000000-0000-0000-0000-000000000000. Current usage/limit: 0/0. Additional needed: "
        "4 Please see troubleshooting guide, available here: "
        "https://aka.ms/oe-tsg#error-outofquota")))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "quota",
                           "-o", "endpoint=ep-quota")
    assert code == 3, err
    line = _line(err)
    assert "deployment ep-quota/blue failed, provisioning state Failed" in line
    assert "OutOfQuota: Not enough quota available for Standard_NC4as_T4_v3" in line
    assert "raise the 'Standard NCASv3_T4 Family vCPUs' quota" in line and "westeurope" in line
    assert "deployer teardown quota" in line
    assert "--- storage-initializer" in err  # the logs follow the line
    assert _recorded(run_cli, "quota") == [
        ("endpoint", "ep-quota", "created"), ("model", "quota:1", "created"),
        ("deployment", "ep-quota/blue", "creating")]
    _torn_down(fake, run_cli, "quota")


def test_throttled_after_the_sdks_retries(fake, run_cli):
    fake.fail("create_or_update_endpoint", azure_error(
        429, "TooManyRequests", "The request is being throttled as the limit has been reached "
        "for operation type - Write_ObservationWindow_00:01:00. For more information, see - "
        "https://aka.ms/srpthrottlinglimits", "PUT"))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "busy",
                           "-o", "endpoint=ep-busy")
    assert code == 3, err
    line = _line(err)
    assert "creating endpoint ep-busy: TooManyRequests: The request is being throttled" in line
    assert "wait a few minutes and run it again" in line
    assert _recorded(run_cli, "busy") == [("endpoint", "ep-busy", "creating")]
    _torn_down(fake, run_cli, "busy")


def test_a_deployment_stuck_in_creating_meets_its_deadline(fake, run_cli):
    """The deployment never leaves Creating: the wait's state line says so once (a change is
    printed at once; the same state again only after 30 real seconds, and the poller's waits
    move the fake clock, no real time passes), then at startup_timeout exit 3 with the
    provisioning state and both containers' logs."""
    fake.stuck.add("create_or_update_deployment")
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "stuck",
                           "-o", "endpoint=ep-stuck", "-o", "startup_timeout=95")
    assert code == 3, err
    states = [untimed(line) for line in err.splitlines() if "creating deployment" in line
              and not line.startswith("error:")]
    label = "creating deployment ep-stuck/blue on Standard_NC4as_T4_v3 x1 (10-20 minutes)"
    assert states == [label, f"{label}: Creating"], err
    reads = [c for c in fake.calls if c == ("get_deployment_state", "ep-stuck/blue")]
    assert len(reads) >= 95 // 10, "the state is read every STATE_EVERY s of the fake clock"
    line = _line(err)
    assert "deployment ep-stuck/blue did not finish in time, provisioning state Creating" in line
    assert "startup_timeout=95s" in line and "raise -o startup_timeout" in line
    details = err.split(line, 1)[1]
    assert "--- inference-server" in details and "stuck-marker" in details
    assert "--- storage-initializer" in details and "Model download complete" in details
    _torn_down(fake, run_cli, "stuck")


def test_stuck_traffic_update_in_run_still_tears_down(fake, run_cli):
    """run: the traffic update stays Updating; the deploy stops at the deadline (exit 3) and
    run's teardown still leaves nothing."""
    fake.stuck.add("set_traffic")
    code, out, err = run_cli("run", str(ADD_SUB), "-t", "azure", "--name", "jam",
                             "-o", "endpoint=ep-jam", "-o", "startup_timeout=40", "--json")
    assert code == 3, err
    assert "setting traffic on ep-jam: still Updating after 40s" in json.loads(out)["error"]
    deploying = err.split("tearing down", 1)[0]
    assert [untimed(line) for line in deploying.splitlines() if "setting traffic" in line] == [
        "setting traffic on ep-jam", "setting traffic on ep-jam: Updating"], err
    assert fake.endpoints == {} and fake.models[("jam", "1")]["archived"]


# -- teardown: a failing delete is reported per resource, the rest goes on -----------------------
def test_teardown_carries_on_and_finishes_when_run_again(fake, run_cli):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "td",
                   "-o", "endpoint=ep-td")[0] == 0
    throttled = azure_error(429, "TooManyRequests", "The request is being throttled.",
                            "DELETE")
    fake.fail("delete_deployment", throttled)
    fake.fail("delete_endpoint", throttled)
    code, out, err = run_cli("teardown", "td", "--json")
    assert code == 4, err
    answer = json.loads(out)
    assert "2 of 4 resource(s) not removed" in answer["error"], answer
    assert answer["details"].splitlines() == [
        "deployment ep-td/blue: deleting deployment ep-td/blue: TooManyRequests: The request "
        "is being throttled. (Azure throttled the calls even after the SDK's retries: wait a "
        "few minutes and run it again; then run 'deployer teardown td' again)",
        "endpoint ep-td: deleting endpoint ep-td: TooManyRequests: The request is being "
        "throttled. (Azure throttled the calls even after the SDK's retries: wait a few "
        "minutes and run it again; then run 'deployer teardown td' again)"], answer["details"]
    # the rest went on: traffic set to 0, the model archived; the record stays
    assert fake.get_endpoint("ep-td").traffic == {"blue": 0}
    assert fake.models[("td", "1")]["archived"]
    assert [(k, i) for k, i, s in _recorded(run_cli, "td") if s != "deleted"] == [
        ("endpoint", "ep-td"), ("deployment", "ep-td/blue")]
    _torn_down(fake, run_cli, "td")


# -- a record that cannot be read: its resources found by their tags -----------------------------
@pytest.mark.parametrize("keep_id", [True, False], ids=["by-id", "by-name"])
def test_recover_by_tags_tears_down_a_corrupt_record(fake, run_cli, tmp_path, keep_id):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "lost",
                             "--json")
    assert code == 0, err
    record = json.loads(out)
    created = [(r["kind"], r["id"]) for r in record["resources"]]
    path = tmp_path / "state" / "deployments" / "lost.json"
    if keep_id:
        path.write_text(path.read_text()[:-40])  # cut short: not JSON any more
    else:  # nothing but the target is left: the resources are found by the name tag
        path.write_text('{"name": "lost", "target": "azure", "res')
        for identity in (tmp_path / "state" / "work" / "lost").glob("*"):
            if identity.is_file() and record["id"] in identity.read_text(errors="replace"):
                identity.unlink()
    code, out, err = run_cli("teardown", "lost", "--json")
    assert code == 0, err
    assert [(r["kind"], r["id"]) for r in json.loads(out)["removed"]] == created[::-1]
    assert f"(id {record['id'] if keep_id else 'unknown'})" in err, err
    assert fake.endpoints == {} and fake.models[("lost", "1")]["archived"]


def test_blue_green_whose_old_deployment_cannot_be_deleted_still_succeeds(fake, run_cli):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgd",
                   "-o", "endpoint=ep-bgd")[0] == 0
    fake.fail("delete_deployment", azure_error(
        429, "TooManyRequests", "The request is being throttled.", "DELETE"))
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "bgd",
                             "--update", "-o", "blue_green=true", "--json")
    assert code == 0, err  # green serves: the update succeeded
    record = json.loads(out)
    assert record["error"] is None and record["endpoint"]["deployment"] == "green"
    assert "warning: could not remove the previous deployment ep-bgd/blue" in err
    assert fake.get_endpoint("ep-bgd").traffic.get("green") == 100
    assert ("deployment", "ep-bgd/blue", "created") in _recorded(run_cli, "bgd"), \
        "what could not be removed stays recorded for teardown"
    _torn_down(fake, run_cli, "bgd")
