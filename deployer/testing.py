"""Test helpers for targets, ours and third parties': a contract suite and a fake target.

Use the contract suite by subclassing :class:`TargetContract` in a test module and defining
three fixtures::

    class TestMyTarget(TargetContract):
        @pytest.fixture
        def target_name(self): return "mytarget"
        @pytest.fixture
        def target_options(self): return {"region": "test"}
        @pytest.fixture
        def repository(self): return "tests/repos/add_sub"

Optionally override ``contract_plugins`` (plugin objects to register besides the entry points).
Every test drives the real core: deploy, the test step, teardown and its verification.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from . import hookimpl
from .api import Deployer
from .client import EndpointClient, EndpointError
from .errors import DeployFailed, Interrupted
from .target import (GPU, SCALING, CloudTime, DeployContext, Fleet, Option, PlannedResource,
                     RequestLimits, Target, scaling)


class TargetContract:
    """What every target must do. Subclass it; see the module docstring."""

    @pytest.fixture
    def contract_plugins(self) -> list[object]:
        return []

    @pytest.fixture
    def deployer(self, tmp_path: Path, contract_plugins: list[object]) -> Deployer:
        return Deployer(state_dir=tmp_path / "state", plugins=contract_plugins,
                        progress=lambda _: None)

    def _impl(self, deployer: Deployer, name: str, options: dict[str, Any]) -> Target:
        return deployer.registry.create(name, options, lambda _: None)

    def test_declares_itself(self, deployer, target_name):
        cls = deployer.registry.get(target_name)
        assert cls.description, "a target needs a one-line description"
        for option in cls.options:
            assert option.help, f"option {option.name} has no help"
            if option.default is not None:
                option.parse(option.default)
        # the scaling words mean the same everywhere: all of them, as declared, or none
        declared = {option.name: option for option in cls.options}
        shared = [option for option in SCALING if option.name in declared]
        assert not shared or len(shared) == len(SCALING), \
            f"declare all of deployer.target.SCALING or none (has {[o.name for o in shared]})"
        for option in shared:
            assert declared[option.name].type is option.type, f"{option.name} is retyped"
        # the hardware word: declared together with a vocabulary column whose every choice
        # sets options the target declares, to values they accept
        assert (GPU.name in declared) == bool(cls.hardware), \
            "declare deployer.target.GPU and set Target.hardware together"
        if cls.hardware:
            from . import hardware

            for entries in hardware.types(cls.hardware).values():
                for entry in entries:
                    for key, value in entry["options"].items():
                        assert key in declared, f"{entry['name']} sets undeclared {key!r}"
                        declared[key].parse(value)

    def test_plan_has_no_side_effect(self, deployer, target_name, target_options, repository,
                                     tmp_path, monkeypatch):
        """plan records nothing and leaves no file or folder behind, nor changes one: not in
        the state directory, the test's folder, the current folder, the temporary folder or
        the repository."""
        repository = Path(repository).resolve()
        cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
        cwd.mkdir()
        tmp.mkdir()
        monkeypatch.chdir(cwd)
        for var in ("TMPDIR", "TEMP", "TMP"):
            monkeypatch.setenv(var, str(tmp))
        monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
        watched = [tmp_path, repository]
        before = _snapshot(watched)
        plan = deployer.plan(repository, target_name, "contract-plan", target_options)
        after = _snapshot(watched)
        assert plan.resources, "plan must list what deploy would create"
        assert deployer.list() == []
        written = sorted(set(after) - set(before)) + sorted(
            p for p in set(before) & set(after) if before[p] != after[p])
        assert not written, f"plan wrote {', '.join(written)} (put documents in Target.export)"
        assert sorted(set(before) - set(after)) == [], "plan removed files"

    def test_deploy_test_teardown(self, deployer, target_name, target_options, repository):
        """Deploy, test and tear down; ``exists`` sees every resource before the teardown and
        none after it, and the test step sent each model at least one inference."""
        deployment = deployer.deploy(repository, target_name, "contract-e2e", target_options)
        assert deployment.status == "ready" and deployment.resources
        assert all(r.status == "created" for r in deployment.resources)
        assert deployer.status("contract-e2e")["live"] is True
        impl = self._impl(deployer, target_name, target_options)
        for resource in deployment.resources:  # else "none left behind" below proves nothing
            assert impl.exists(resource, deployment), f"exists does not see {resource.kind}"
        report = deployer.test("contract-e2e")
        assert report.passed, report.to_dict()
        assert report.models, "the test step tested no model"
        for result in report.models:
            sent = [c for c in result.checks if c.name in ("infer", "stream")]
            assert sent and all(c.passed for c in sent), \
                f"{result.model}: no inference passed: {report.to_dict()}"
        torn = deployer.teardown("contract-e2e")
        assert torn.found and not torn.failed
        handled = {(r["kind"], r["id"]) for r in torn.removed + torn.already_gone}
        assert handled == {(r.kind, r.id) for r in deployment.resources}, torn
        for resource in deployment.resources:
            assert not impl.exists(resource, deployment), f"{resource.kind} left behind"
        again = deployer.teardown("contract-e2e")
        assert not again.found, "teardown must be idempotent"

    @pytest.mark.parametrize("when", ["record", "created"])
    def test_interrupted_deploy_can_be_torn_down(self, deployer, target_name, target_options,
                                                 repository, monkeypatch, when):
        """Ctrl-C right after a resource is recorded, or right after it was created."""
        original = getattr(DeployContext, when)

        def interrupt(self, *args, **kwargs):
            original(self, *args, **kwargs)
            raise KeyboardInterrupt
        with monkeypatch.context() as patch:
            patch.setattr(DeployContext, when, interrupt)
            with pytest.raises(Interrupted):
                deployer.deploy(repository, target_name, "contract-int", target_options)
        stored = deployer.store.load("contract-int")
        assert stored.status == "failed" and stored.resources
        impl = self._impl(deployer, target_name, target_options)
        if when == "created":  # the resource it was creating is there to be torn down
            made = [r for r in stored.resources if r.status == "created"]
            assert made and all(impl.exists(r, stored) for r in made), stored.resources
        deployer.teardown("contract-int")
        for resource in stored.resources:
            assert not impl.exists(resource, stored), f"{resource.kind} left behind"
        assert not deployer.store.exists("contract-int")


def _snapshot(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folders``; a file with its size and modification time
    (ns). A temporary file removed again leaves no trace, so it does not count."""
    found = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            stat = path.lstat()
            found[str(path)] = (0, 0) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return found


# -- a fake target for core tests ----------------------------------------------------------

class FakeWorld:
    """The fake target's 'cloud': a JSON file of resource ids that exist."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data))


class FakeClient(EndpointClient):
    """Answers from the repository's config: every declared output, zeros. It serves no
    metadata: made from the config, it would only compare the config with itself."""

    serves_metadata = False
    no_metadata = "the fake target serves no model metadata (it answers from the config)"

    def __init__(self, world: FakeWorld, deployment_id: str, models: dict[str, Any],
                 max_concurrent: int | None = None):
        self.world, self.deployment_id, self.models = world, deployment_id, models
        # a throttle like a cloud's: past ``max_concurrent`` requests in flight, HTTP 429
        self.max_concurrent, self.in_flight, self.lock = max_concurrent, 0, threading.Lock()

    def _up(self) -> bool:
        return self.deployment_id in self.world.read().get("servers", [])

    def ready(self) -> bool:
        return self._up()

    def metadata(self, model: str) -> dict[str, Any]:
        raise EndpointError(f"metadata of {model}: {self.no_metadata}", kind="unsupported")

    def _declared(self, model: str) -> dict[str, Any]:
        if not self._up() or model not in self.models:
            raise EndpointError(f"model {model} not found", kind="http-404")
        return self.models[model]

    def infer(self, model, inputs):
        if self.max_concurrent is None:
            return self._answer(model, inputs)
        with self.lock:
            if self.in_flight >= self.max_concurrent:
                raise EndpointError("Too many pending requests", kind="http-429")
            self.in_flight += 1
        try:
            threading.Event().wait(0.002)  # a request takes a while, so requests overlap
            return self._answer(model, inputs)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, model, inputs):
        """Every declared output, of its declared datatype, zeros (``b"fake"`` for BYTES)."""
        import numpy as np

        from .samples import NUMPY_DTYPES

        meta = self._declared(model)
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        outputs = {}
        for out in meta["outputs"]:
            shape = [batch if d == -1 else d for d in out["shape"]]
            outputs[out["name"]] = (np.full(shape, b"fake", dtype=object)
                                    if out["datatype"] == "BYTES"
                                    else np.zeros(shape, dtype=NUMPY_DTYPES[out["datatype"]]))
        return outputs


class FakeTarget(Target):
    """A target whose 'resources' are entries in a JSON file (option ``world``)."""

    name = "fake"
    description = "a fake target for core tests: resources live in a JSON file"
    options = (
        Option("world", str, "fake-world.json", "the JSON file that plays the cloud"),
        Option("fail_deploy", bool, False, "fail after creating the server"),
        Option("stuck", bool, False, "delete does nothing (to test teardown verification)"),
        Option("token", str, None, "a secret that must never reach state", secret=True),
        Option("instance_type", str, None, "an instance type it pretends to bill (for compare)"),
        Option("max_concurrent", int, None, "requests in flight it serves; past it, HTTP 429"),
        Option("cloud_ms", list, [], "the cloud's own latency parts it reports after a load, "
               "NAME=MS items (e.g. overhead=0.01,model=0.02); none published when empty"),
        *SCALING,
    )
    runs_here = False

    def validate(self, repository):
        scaling(self.settings, instance_count=2)

    def instances(self, deployment):
        fleet = scaling(self.settings, instance_count=2)
        count = fleet.minimum if fleet else 2
        return [(self.settings.instance_type, count)] if self.settings.instance_type else []

    def fleet(self, deployment):
        fleet = scaling(self.settings, instance_count=2)
        if fleet is None:
            return None
        rule = (f"target {fleet.target_requests_per_minute} requests/minute per instance"
                if fleet.scales else "")
        return Fleet(fleet.minimum, fleet.maximum, fleet.initial, fleet.initial, rule)

    def cloud_time(self, deployment, start, end, *, wait, progress):
        if not self.settings.instance_type:
            return None   # runs nowhere billed: no cloud to ask
        source = f"the fake cloud's metrics for {deployment.name}"
        parts = dict(item.split("=", 1) for item in self.settings.cloud_ms)
        if not parts:
            progress(f"waiting up to {wait:g} s for the fake cloud's metrics")
            return CloudTime({}, None, source, note=f"not yet published after {wait:g} s")
        figures = {f"{name}_latency_ms": float(ms) for name, ms in parts.items()}
        return CloudTime(figures, round(sum(figures.values()), 3), source)

    def request_limits(self, deployment):
        if self.settings.max_concurrent is None:
            return None
        return RequestLimits(self.settings.max_concurrent, None,
                             f"max_concurrent {self.settings.max_concurrent}")

    @property
    def world(self) -> FakeWorld:
        return FakeWorld(self.settings.world)

    def plan(self, repository, name):
        return [PlannedResource("bucket", f"{name}-bucket"),
                PlannedResource("server", f"{name}-server", {"models": list(repository.models)})]

    def deploy(self, repository, context):
        deployment = context.deployment
        for kind in ("bucket", "server"):
            resource = context.record(kind, f"{deployment.name}-{kind}")
            data = self.world.read()
            data.setdefault(f"{kind}s", []).append(deployment.id)
            self.world.write(data)
            context.created(resource)
        context.set_endpoint(url=f"fake://{deployment.name}")
        if self.settings.fail_deploy:
            raise DeployFailed("the fake server did not become ready; last log lines: boom")

    def client(self, deployment):
        from .repository import Repository

        repo = Repository.load(deployment.repository)
        models = {m.name: {"name": m.name, "versions": [str(v) for v in m.versions],
                           "platform": m.backend,
                           "inputs": [{"name": s.name, "datatype": s.datatype,
                                       "shape": list(s.shape(m.max_batch_size))}
                                      for s in m.inputs],
                           "outputs": [{"name": s.name, "datatype": s.datatype,
                                        "shape": list(s.shape(m.max_batch_size))}
                                       for s in m.outputs]}
                  for m in repo.models.values()}
        return FakeClient(self.world, deployment.id, models, self.settings.max_concurrent)

    def delete(self, resource, deployment):
        if self.settings.stuck:
            return True
        data = self.world.read()
        faults = data.get("fail_delete", {})  # kind → how many deletes of it still fail
        if faults.get(resource.kind, 0) > 0:
            faults[resource.kind] -= 1
            self.world.write(data)
            raise RuntimeError(f"the fake cloud refused to delete {resource.id} (throttled)")
        present = deployment.id in data.get(f"{resource.kind}s", [])
        if present:
            data[f"{resource.kind}s"].remove(deployment.id)
            self.world.write(data)
        return present

    def exists(self, resource, deployment):
        return deployment.id in self.world.read().get(f"{resource.kind}s", [])

    def recover(self, name, deployment_id):
        from .state import Resource

        data = self.world.read()
        return [Resource(kind, f"{name}-{kind}", "created") for kind in ("bucket", "server")
                if deployment_id and deployment_id in data.get(f"{kind}s", [])]


class FakePlugin:
    """Register with ``Deployer(plugins=[FakePlugin()])``."""

    @hookimpl
    def deployer_register_targets(self):
        return [FakeTarget]
