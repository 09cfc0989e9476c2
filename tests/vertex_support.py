"""A fake Vertex AI control plane for the vertex target's tests: an in-memory project behind the
seam's primitives (``deployer_plugins.vertex.seam.Seam``), whose data plane is real.

Hand it in through the Python API: the ``fake`` fixture sets ``seam.factory`` (the CLI runs
in-process in tests). It answers as google-cloud-aiplatform does: ``aiplatform_v1`` ``Model`` /
``Endpoint`` messages, a real ``google.api_core.operation.Operation`` for a deploy (its error a
``google.rpc.Status``, raised by ``result()`` as api_core raises it), and google.api_core's
real exceptions. Ids are numeric strings, names ``projects/P/locations/L/models/ID`` and
``.../endpoints/ID``; lists honour ``labels.k="v" AND ...`` filters.

Every endpoint is a real gateway (:func:`deployer_plugins.vertex.serving.start_gateway`) and
every deployed model a real tritonserver started as NVIDIA's image starts on Vertex
(:func:`~deployer_plugins.vertex.serving.start_model_server`) over the artefact downloaded
from the GCS emulator (``artifact_uri``). One access token (``credential``) opens every
gateway, as a Google token opens every endpoint of the project.

Vertex's rules: a traffic split sums to 100 or 0 and names deployed models only; undeploying
a model that holds traffic is refused unless the request gives the split without it (the only
deployed model excepted); a deployed model's Model cannot be deleted; an endpoint with
deployed models cannot be deleted. A container that fails to start (serving's DeployFailed)
fails the deploy operation; its log is what ``_logs`` answers.

Replicas: a deploy request's machine (the seam's dict, named as ``Endpoint.deploy``'s
arguments) is kept as sent in ``deploys``; Vertex's v1 rules are checked (min_replica_count
>= 1, max >= min, a request-count target above 0); the deployed model is served back with
its ``dedicated_resources`` (range and ``autoscaling_metric_specs``) and
``status.available_replica_count``: its minimum until a test sets ``available(id, n)`` (Vertex
scaling out; the data plane stays one tritonserver).

Faults: ``fail(method, exc, times=1)`` makes the next call of a primitive raise ``exc`` (a
google.api_core or google.auth exception); ``fail("deploy_operation", exc)`` lets the next
deploy start and its operation fail with ``exc``'s code and message; ``stuck`` makes the next
deploy's operation never finish. Every call is in ``calls`` as ``(method, name)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pytest

from deployer import triton
from deployer.errors import DeployFailed
from deployer_plugins.vertex import seam

#: seconds a stopped tritonserver gets after SIGTERM before SIGKILL
STOP_GRACE = 1.0
TOKEN_LIFETIME = 3600.0
LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
FILTER_TERM = re.compile(r'^labels\.([a-z][a-z0-9_-]*)="([^"]*)"$')
#: the metric Vertex scales on for a requests-per-minute target (Vertex's name, not the code's)
REQUEST_COUNT = "aiplatform.googleapis.com/prediction/online/request_count"


def operation(response=None, error=None, stuck: bool = False, stages: tuple[str, ...] = ()):
    """A real google.api_core Operation of a DeployModel: done with ``response`` (a
    DeployModelResponse) or ``error`` (an api_core exception, as a google.rpc.Status), or
    never done (``stuck``). With ``stages`` (DeploymentStage names) it is first running, one
    stage per read of it (its metadata's ``deployment_stage``), then done."""
    from google.api_core import operation as api_operation
    from google.cloud.aiplatform_v1.types import (DeploymentStage,
                                                  DeployModelOperationMetadata,
                                                  DeployModelResponse)
    from google.longrunning import operations_pb2
    from google.protobuf import any_pb2
    from google.rpc import status_pb2

    name = "projects/p/locations/l/operations/1"
    proto = operations_pb2.Operation(name=name, done=not stuck)
    if error is not None:
        proto.error.CopyFrom(status_pb2.Status(code=error.grpc_status_code.value[0],
                                               message=error.message))
    elif response is not None:
        packed = any_pb2.Any()
        packed.Pack(DeployModelResponse.pb(response))
        proto.response.CopyFrom(packed)

    def running(stage: str):
        metadata = any_pb2.Any()
        metadata.Pack(DeployModelOperationMetadata.pb(DeployModelOperationMetadata(
            deployment_stage=DeploymentStage[stage])))
        return operations_pb2.Operation(name=name, done=False, metadata=metadata)

    answers = [running(stage) for stage in stages] + [proto]

    def refresh(**_):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return api_operation.Operation(answers[0], refresh, lambda **_: None, DeployModelResponse,
                                   metadata_type=DeployModelOperationMetadata)


@dataclasses.dataclass
class _Deployed:
    id: str
    model: str
    display_name: str
    tag: str
    machine: dict
    #: replicas serving now (Vertex's status.available_replica_count)
    available: int = 1


@dataclasses.dataclass
class _Endpoint:
    number: str
    display_name: str
    labels: dict
    tag: str
    routes: Path
    base_url: str = ""
    traffic: dict = dataclasses.field(default_factory=dict)
    deployed: dict = dataclasses.field(default_factory=dict)  # id -> _Deployed
    #: the container log of the latest deploy (what Cloud Logging shows)
    log: Path | None = None


class FakeVertex(seam.Seam):
    def __init__(self, root: Path, project: str = "fake-project", region: str = "us-central1"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.project, self.region = project, region
        self.models: dict[str, object] = {}  # name -> aiplatform_v1.Model
        self.endpoints: dict[str, _Endpoint] = {}
        self.tokens = self.root / "tokens"
        self.calls: list[tuple[str, str]] = []
        #: every deploy request as it reached the control plane: endpoint, model,
        #: display_name, machine (as sent), traffic_split
        self.deploys: list[dict] = []
        #: primitive -> exceptions its next calls raise
        self.faults: dict[str, list] = {}
        #: the next deploy's operation never finishes
        self.stuck = False
        #: the next deploy's operation passes through these deployment stages (one per read)
        self.stages: tuple[str, ...] = ()
        self._ids = itertools.count(1000000001)

    def factory(self, settings, progress):
        return self

    def fail(self, method: str, exc: BaseException, times: int = 1) -> None:
        self.faults.setdefault(method, []).extend([exc] * times)

    def _call(self, method: str, name: str = "") -> None:
        self.calls.append((method, name))
        queued = self.faults.get(method)
        if queued:
            raise queued.pop(0)

    def _id(self) -> str:
        return str(next(self._ids))

    def _name(self, kind: str, number: str) -> str:
        return f"projects/{self.project}/locations/{self.region}/{kind}/{number}"

    def available(self, deployed_id: str, count: int) -> None:
        """Vertex has scaled deployed model ``deployed_id`` to ``count`` replicas."""
        for endpoint in self.endpoints.values():
            if deployed_id in endpoint.deployed:
                endpoint.deployed[deployed_id].available = count

    def stop_all(self) -> None:
        for endpoint in list(self.endpoints.values()):
            for deployed in endpoint.deployed.values():
                triton.stop(deployed.tag, STOP_GRACE)
            triton.stop(endpoint.tag, STOP_GRACE)
        self.endpoints.clear()

    # -- checks as Vertex makes them ---------------------------------------------------------
    @staticmethod
    def _check_labels(labels: dict) -> None:
        from google.api_core import exceptions

        bad = [f"{k}={v}" for k, v in labels.items()
               if not LABEL.match(k) or not LABEL_VALUE.match(str(v))]
        if bad or len(labels) > 64:
            raise exceptions.InvalidArgument(f"Invalid labels: {', '.join(bad) or 'too many'}"
                                             ". Keys and values may hold lowercase letters, "
                                             "digits, '_' and '-' (63 at most).")

    @staticmethod
    def _filtered(items, labels_of, filter: str) -> list:
        from google.api_core import exceptions

        wanted = {}
        for term in filter.split(" AND ") if filter else ():
            found = FILTER_TERM.match(term.strip())
            if not found:
                raise exceptions.InvalidArgument(f"Unsupported filter: {filter}")
            wanted[found[1]] = found[2]
        return [i for i in items if wanted.items() <= labels_of(i).items()]

    def _not_found(self, kind: str, name: str):
        from google.api_core import exceptions

        return exceptions.NotFound(f"{kind} {name} does not exist.")

    # -- models ------------------------------------------------------------------------------
    def _check(self):
        self._call("check", self.project)

    def _upload_model(self, display_name, artifact_uri, container, labels):
        from google.api_core import exceptions
        from google.cloud.aiplatform_v1.types import EnvVar, Model, ModelContainerSpec, Port

        self._call("upload_model", display_name)
        self._check_labels(labels)
        if not str(artifact_uri).startswith("gs://"):
            raise exceptions.InvalidArgument(f"artifact_uri {artifact_uri} must be a Cloud "
                                             "Storage uri (gs://...)")
        if not container.get("image_uri"):
            raise exceptions.InvalidArgument("container_spec.image_uri is required")
        name = self._name("models", self._id())
        self.models[name] = Model(
            name=name, display_name=display_name, labels=labels, artifact_uri=artifact_uri,
            container_spec=ModelContainerSpec(
                image_uri=container["image_uri"], args=list(container.get("args") or []),
                env=[EnvVar(name=k, value=str(v)) for k, v in
                     (container.get("env") or {}).items()],
                ports=[Port(container_port=int(p)) for p in container.get("ports") or []]))
        return self.models[name]

    def _model(self, name):
        self._call("get_model", name)
        if name not in self.models:
            raise self._not_found("Model", name)
        return self.models[name]

    def _models(self, filter):
        self._call("find_models", filter)
        return self._filtered(list(self.models.values()), lambda m: dict(m.labels), filter)

    def _delete_model(self, name):
        from google.api_core import exceptions

        self._call("delete_model", name)
        if name not in self.models:
            raise self._not_found("Model", name)
        users = [e for e, ep in self.endpoints.items()
                 if any(d.model == name for d in ep.deployed.values())]
        if users:
            raise exceptions.FailedPrecondition(
                f"The Model \"{name}\" is deployed or being deployed at the following "
                f"Endpoint(s): {', '.join(users)}.")
        del self.models[name]

    # -- endpoints ---------------------------------------------------------------------------
    def _proto(self, name: str, endpoint: _Endpoint):
        from google.cloud.aiplatform_v1.types import (AutoscalingMetricSpec,
                                                      DedicatedResources, DeployedModel,
                                                      Endpoint, MachineSpec)

        deployed = []
        for d in endpoint.deployed.values():
            spec = MachineSpec(machine_type=d.machine.get("machine_type") or "",
                               accelerator_count=int(d.machine.get("accelerator_count") or 0)
                               if d.machine.get("accelerator_type") else 0)
            if d.machine.get("accelerator_type"):
                spec.accelerator_type = d.machine["accelerator_type"]
            target = d.machine.get("autoscaling_target_request_count_per_minute")
            metrics = [AutoscalingMetricSpec(metric_name=REQUEST_COUNT, target=int(target))] \
                if target is not None else []
            deployed.append(DeployedModel(
                id=d.id, model=d.model, display_name=d.display_name,
                dedicated_resources=DedicatedResources(
                    machine_spec=spec,
                    min_replica_count=int(d.machine.get("min_replica_count") or 1),
                    max_replica_count=int(d.machine.get("max_replica_count") or 1),
                    autoscaling_metric_specs=metrics),
                status=DeployedModel.Status(available_replica_count=d.available)))
        return Endpoint(name=name, display_name=endpoint.display_name,
                        labels=dict(endpoint.labels), traffic_split=dict(endpoint.traffic),
                        deployed_models=deployed)

    def _get(self, name: str) -> _Endpoint:
        if name not in self.endpoints:
            raise self._not_found("Endpoint", name)
        return self.endpoints[name]

    def _create_endpoint(self, display_name, labels):
        from deployer_plugins.vertex import serving

        self._call("create_endpoint", display_name)
        self._check_labels(labels)
        number = self._id()
        name = self._name("endpoints", number)
        endpoint = _Endpoint(number, display_name, dict(labels), f"fake-vertex-gateway-{number}",
                             self.root / f"routes-{number}.json")
        self.endpoints[name] = endpoint
        if not self.tokens.exists():
            serving.write_token(self.tokens, TOKEN_LIFETIME)
        serving.update_routes(endpoint.routes, number)
        _, endpoint.base_url = serving.start_gateway(self.root, endpoint.tag, self.tokens,
                                                     endpoint.routes, lambda _: None,
                                                     self.project, self.region)
        return self._proto(name, endpoint)

    def _endpoint(self, name):
        self._call("get_endpoint", name)
        return self._proto(name, self._get(name))

    def _endpoints(self, filter):
        self._call("find_endpoints", filter)
        return [self._proto(n, e) for n, e in self.endpoints.items()
                if e in self._filtered(list(self.endpoints.values()), lambda x: x.labels,
                                       filter)]

    def _check_split(self, endpoint: _Endpoint, split: dict, new: bool = False) -> None:
        from google.api_core import exceptions

        known = set(endpoint.deployed) | ({seam.DEPLOYING} if new else set())
        unknown = sorted(set(split) - known)
        total = sum(split.values())
        if unknown or total not in (0, 100) or any(v < 0 for v in split.values()):
            raise exceptions.InvalidArgument(
                f"Invalid traffic split {split}: " + (f"{', '.join(unknown)} not deployed on "
                                                      "the Endpoint" if unknown else
                                                      f"the percentages sum to {total}, "
                                                      "not 100 (or 0)"))

    @staticmethod
    def _check_replicas(machine: dict) -> None:
        """v1 DedicatedResources' rules, refused as Vertex refuses a request."""
        from google.api_core import exceptions

        low = int(machine.get("min_replica_count") or 0)
        high = int(machine.get("max_replica_count") or low)
        target = machine.get("autoscaling_target_request_count_per_minute")
        if low < 1:
            raise exceptions.InvalidArgument("dedicated_resources.min_replica_count must be "
                                             f"at least 1, got {low}.")
        if high < low:
            raise exceptions.InvalidArgument(f"dedicated_resources.max_replica_count {high} "
                                             f"is below min_replica_count {low}.")
        if target is not None and int(target) <= 0:
            raise exceptions.InvalidArgument(f"autoscaling_metric_specs target {target} of "
                                             f"{REQUEST_COUNT} must be positive.")

    def _begin_deploy(self, endpoint_name, model_name, display_name, machine, traffic_split):
        from google.api_core import exceptions
        from google.cloud.aiplatform_v1.types import DeployedModel, DeployModelResponse

        from deployer_plugins.vertex import serving, storage

        self._call("deploy_model", f"{endpoint_name}/{display_name}")
        self.deploys.append({"endpoint": endpoint_name, "model": model_name,
                             "display_name": display_name, "machine": dict(machine),
                             "traffic_split": dict(traffic_split)})
        endpoint = self._get(endpoint_name)
        self._check_replicas(machine)
        if model_name not in self.models:
            raise self._not_found("Model", model_name)
        self._check_split(endpoint, traffic_split, new=True)
        if not endpoint.deployed and traffic_split.get(seam.DEPLOYING) != 100:
            raise exceptions.InvalidArgument("The first model deployed on an Endpoint must "
                                             "take 100% of its traffic.")
        model = self.models[model_name]
        failure = self.faults.get("deploy_operation")
        if failure:  # accepted, then failed
            self.calls.append(("deploy_operation", display_name))
            return operation(error=failure.pop(0))
        if self.stuck:
            self.stuck = False
            return operation(stuck=True)
        number = self._id()
        tag = f"fake-vertex-model-{number}"
        folder = self.root / f"storage-{number}"
        storage.Storage(self.project).download(model.artifact_uri, folder)
        log = self.root / f"model-server-{number}.log"
        endpoint.log = log
        container = {"image_uri": model.container_spec.image_uri,
                     "args": list(model.container_spec.args),
                     "env": {e.name: e.value for e in model.container_spec.env},
                     "ports": [p.container_port for p in model.container_spec.ports]}
        try:
            served = serving.start_model_server(folder, container, self.root, tag,
                                                lambda _: None, timeout=120.0,
                                                log_name=log.name)
        except DeployFailed as exc:
            triton.stop(tag, STOP_GRACE)
            # on Vertex the container prints why it stops (Triton's own message) last
            text = log.read_text(errors="replace") if log.exists() else ""
            if exc.message not in text:
                with open(log, "a") as handle:
                    handle.write(f"E0000 00:00:00 vertex_ai_server: {exc.message}\n")
            return operation(error=exceptions.FailedPrecondition(
                f"Model server never became ready: {exc.message}"))
        endpoint.deployed[number] = _Deployed(number, model_name, display_name, tag,
                                              dict(machine),
                                              int(machine.get("min_replica_count") or 1))
        serving.update_routes(endpoint.routes, endpoint.number, deployed_id=number,
                              url=served.url, default_model=served.default_model)
        split = {(number if k == seam.DEPLOYING else k): int(v)
                 for k, v in traffic_split.items()}
        self._route_traffic(endpoint, split)
        stages, self.stages = self.stages, ()
        return operation(response=DeployModelResponse(
            deployed_model=DeployedModel(id=number, model=model_name,
                                         display_name=display_name)), stages=stages)

    def _route_traffic(self, endpoint: _Endpoint, split: dict) -> None:
        from deployer_plugins.vertex import serving

        endpoint.traffic = {k: v for k, v in split.items()}
        serving.update_routes(endpoint.routes, endpoint.number, traffic=dict(endpoint.traffic))

    def _set_traffic(self, endpoint_name, split):
        self._call("set_traffic", endpoint_name)
        endpoint = self._get(endpoint_name)
        self._check_split(endpoint, split)
        self._route_traffic(endpoint, dict(split))
        return self._proto(endpoint_name, endpoint)

    def _undeploy(self, endpoint_name, deployed_id, traffic_split):
        from google.api_core import exceptions

        from deployer_plugins.vertex import serving

        self._call("undeploy_model", f"{endpoint_name}/{deployed_id}")
        endpoint = self._get(endpoint_name)
        if deployed_id not in endpoint.deployed:
            raise self._not_found("DeployedModel", f"{endpoint_name}/{deployed_id}")
        others = set(endpoint.deployed) - {deployed_id}
        if traffic_split is None:
            if endpoint.traffic.get(deployed_id) and others:
                raise exceptions.FailedPrecondition(
                    f"DeployedModel {deployed_id} has {endpoint.traffic[deployed_id]}% of the "
                    f"traffic of Endpoint {endpoint_name}: give a traffic_split without it.")
            split = {k: v for k, v in endpoint.traffic.items() if k != deployed_id}
        else:
            if deployed_id in traffic_split and traffic_split[deployed_id]:
                raise exceptions.InvalidArgument(f"The traffic_split gives traffic to "
                                                 f"DeployedModel {deployed_id}, undeployed.")
            split = {k: v for k, v in traffic_split.items() if k != deployed_id}
            if others:
                self._check_split(endpoint, split)
        item = endpoint.deployed.pop(deployed_id)
        self._route_traffic(endpoint, split if others else {})
        serving.update_routes(endpoint.routes, endpoint.number, deployed_id=deployed_id,
                              remove=True)
        triton.stop(item.tag, STOP_GRACE)

    def _delete_endpoint(self, name):
        from google.api_core import exceptions

        self._call("delete_endpoint", name)
        endpoint = self._get(name)
        if endpoint.deployed:
            raise exceptions.FailedPrecondition(
                f"Endpoint {name} has deployed models: undeploy them first.")
        triton.stop(endpoint.tag, STOP_GRACE)
        endpoint.routes.unlink(missing_ok=True)
        del self.endpoints[name]

    # -- reading -----------------------------------------------------------------------------
    def _token(self):
        from deployer_plugins.azure.gateway import parse_keys

        from deployer_plugins.vertex import serving

        self._call("credential", self.project)
        if not self.tokens.exists():
            serving.write_token(self.tokens, TOKEN_LIFETIME)
        secret, expiry = parse_keys(self.tokens.read_text())[-1]
        return secret, expiry

    def _logs(self, endpoint_name, lines):
        self._call("logs", endpoint_name)
        endpoint = self._get(endpoint_name)
        if endpoint.log is None:
            return []
        return triton.tail(endpoint.log, lines).splitlines()

    def _predict_url(self, endpoint_name):
        from deployer_plugins.vertex import serving

        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None or not endpoint.base_url:
            return super()._predict_url(endpoint_name)
        return serving.predict_url(endpoint.base_url, self.project, self.region,
                                   endpoint.number)


# -- fixtures (import them: ``from vertex_support import fake``) -------------------------------
@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A FakeVertex handed to the seam as its factory; every process stopped afterwards."""
    world = FakeVertex(tmp_path / "vertex")
    monkeypatch.setattr(seam, "factory", world.factory)
    try:
        yield world
    finally:
        world.stop_all()
