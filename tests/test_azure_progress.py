"""What the azure target reports while it works (deployer.progress): each long-running
operation (endpoint, model registration, deployment, traffic, deletes) as a wait that hears
the provisioning state Azure reports while it runs. The in-memory workspace
(tests/azure_support.py) runs them through several states on its fake clock; a recording sink
(tests/progress_support.py) stands in for the terminal's live view."""

from __future__ import annotations

import pytest

from azure_support import OperationFailure, fake  # noqa: F401 (a fixture)
from conftest import REPOS
from deployer.api import Deployer
from deployer.errors import DeployFailed
from progress_support import RecordingSink

ADD_SUB = REPOS / "add_sub"


def _size(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_each_operation_is_a_wait_with_the_states_azure_reports(fake, tmp_path):
    from deployer.progress import amount

    fake.slow.update({"create_or_update_endpoint": ["Creating", "Creating"],
                      "create_or_update_deployment": ["Creating", "Creating", "Creating"],
                      "set_traffic": ["Updating"]})
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    deployer.deploy(ADD_SUB, "azure", "prog", {"endpoint": "ep-prog"})
    endpoint, model, deployment, traffic = sink.waits()
    assert endpoint.what == "  creating endpoint ep-prog (a few minutes)"
    assert endpoint.changes() == ["Creating", "Succeeded"], endpoint.states
    assert model.what == (f"  registering model prog (uploads the repository, "
                          f"{amount(_size(ADD_SUB), 'bytes')})")
    assert model.states == []  # the SDK does not tell how far its upload is
    assert deployment.what.startswith("  creating deployment ep-prog/blue on ")
    assert deployment.states == ["Creating", "Creating", "Creating", "Succeeded"]
    assert traffic.what == "  setting traffic on ep-prog"
    assert traffic.changes() == ["Updating", "Succeeded"]
    assert all(w.entered and w.exited and w.error is None for w in sink.waits())
    assert sink.transfers() == []
    # the waits replace the lines the target printed before them
    assert not any("creating endpoint" in line or "registering" in line
                   for line in sink.lines), sink.lines

    fake.slow.update({"delete_deployment": ["Deleting", "Deleting"],
                      "delete_endpoint": ["Deleting"]})
    deployer.teardown("prog")
    removal = sink.waits("deleting")
    assert [w.what for w in removal] == ["  deleting deployment ep-prog/blue",
                                         "  deleting endpoint ep-prog"]
    assert [w.changes() for w in removal] == [["Deleting", "Succeeded"]] * 2
    # traffic to 0 before the deployment goes: over at once, so no state was read while it
    # ran; its end says how it ended
    assert sink.waits("setting traffic")[-1].calls == [("end", "Succeeded")]
    assert fake.endpoints == {}


def test_a_failed_operation_ends_its_wait_by_the_error(fake, tmp_path):
    fake.fail("create_or_update_deployment", OperationFailure(
        "OutOfQuota", "Not enough quota available for Standard_NC4as_T4_v3"))
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    with pytest.raises(DeployFailed, match="OutOfQuota"):
        deployer.deploy(ADD_SUB, "azure", "quota", {"endpoint": "ep-quota"})
    failed = sink.waits("creating deployment")[-1]
    assert failed.exited and failed.error is not None
    deployer.teardown("quota")
    assert fake.endpoints == {}
