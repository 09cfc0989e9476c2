"""``deploy --update`` on Azure in named steps, shared by ``azure`` and ``azure-twin``.

Each target checks its own world, then runs the same steps with a *backend*: the object that
does the few operations that differ (the cloud's goes through the seam, the twin's starts a
local tritonserver and edits its gateway's routes)::

    plan = update.plan(settings, repository, record)        # checked, no call yet
    update.run(backend, plan, repository, context)

``run`` is: register the model -> create (or, in place, update) the deployment -> in place:
switch to it and retire the old model; blue/green: smoke-test the new deployment through
the ``azureml-model-deployment`` header -> move the traffic -> retire the old deployment.
Until the traffic moves, a failure removes what the update created and the old version keeps
serving; after it, what cannot be removed is a warning and stays recorded for teardown.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

from deployer.errors import DeployerError, DeployFailed, UsageError

from . import spec

#: how long the blue/green smoke check waits for the new deployment to answer ready
SMOKE_READY_SECONDS = 60.0


def toggled(name: str) -> str:
    """The blue/green partner of a deployment name."""
    for this, other in (("blue", "green"), ("green", "blue")):
        if name.endswith(this):
            return name[:-len(this)] + other
    return f"{name}-green"


def live(record, kind: str, **match) -> list:
    """The recorded resources of ``kind`` not deleted, whose data match ``match``."""
    return [r for r in record.resources if r.kind == kind and r.status != "deleted"
            and all(r.data.get(k) == v for k, v in match.items())]


@dataclasses.dataclass
class UpdatePlan:
    """What an update does, decided before any call."""

    endpoint: str          #: the recorded endpoint (an update never moves)
    old: str               #: the deployment serving now
    new: str               #: the deployment that will serve (``old`` when in place)
    names: spec.Names
    endpoint_doc: dict
    deployment_doc: dict   #: of ``new``
    traffic: int           #: percent for ``new`` (blue/green)
    model_version: str | None
    old_models: list       #: the recorded models the new version replaces

    @property
    def in_place(self) -> bool:
        return self.new == self.old

    @property
    def keeps(self) -> str:
        """What stays true when the update fails."""
        return f"{self.endpoint}/{self.old} still serves the previous version"


class Backend(Protocol):
    """The operations of an update that differ between the cloud and its twin."""

    #: the Target whose ``progress``, ``client``, ``delete`` and ``models_served`` the steps use
    target: Any
    #: extra data of the traffic resource blue/green records
    traffic_data: dict

    def register_model(self, plan: UpdatePlan, context) -> Any:
        """Record and create the new model version; return its resource."""

    # optional: ``fresh``, what create_deployment made besides the deployment (removed with it
    # when the smoke test fails)

    def create_deployment(self, plan: UpdatePlan, context, model) -> Any:
        """Create the new deployment (blue/green: with no traffic), or update ``old`` in
        place; return its resource. On failure remove what the update created, ``model``
        included (:func:`abandon`), and raise DeployFailed."""

    def switch(self, plan: UpdatePlan, context, deployment) -> list:
        """In place, once ``deployment`` is up: make it serve; return the resources it
        replaced (besides the old models)."""

    def traffic(self) -> dict:
        """The endpoint's traffic split."""

    def set_traffic(self, traffic: dict) -> None:
        """Set the endpoint's traffic split."""


def serving_limits(record, defaults: dict | None = None):
    """The RequestLimits of the deployment the record's endpoint serves, from its recorded
    settings (:func:`.spec.limits`); a deployment recorded without them gets ``defaults``
    (the cloud's) or, without those, None."""
    serving = record.endpoint.get("deployment")
    for resource in reversed(live(record, "deployment", deployment=serving)):
        data = resource.data
        if not data.get("request_settings") and defaults is not None:
            data = {**data, "request_settings": defaults}
        return spec.limits(data)
    return None


def plan(settings, repository, record) -> UpdatePlan:
    """Step 0: the names, documents and models of the update; UsageError if it cannot be."""
    ep, old, new = _deployments(settings, record)
    names, endpoint_doc, deployment_doc = spec.documents(settings, repository, record.name,
                                                         record.id, endpoint=ep, deployment=new)
    version = settings.model_version
    if version and any(r.data.get("version") == version and
                       r.data.get("name", r.id.split(":")[0]) == names.model
                       for r in live(record, "model")):
        raise UsageError(f"model {names.model}:{version} is already what {record.name!r} "
                         "serves", hint="pass a new -o model_version, or leave it unset for "
                                        "the next version")
    return UpdatePlan(ep, old, new, names, endpoint_doc, deployment_doc, settings.traffic,
                      version, live(record, "model"))


def _deployments(settings, record) -> tuple[str, str, str]:
    """(the recorded endpoint, the deployment serving now, the one that will serve)."""
    endpoint = record.endpoint
    if not endpoint.get("endpoint") or not endpoint.get("deployment"):
        raise UsageError(f"{record.name!r} has no endpoint recorded",
                         hint=f"run 'deployer teardown {record.name}' and deploy again")
    ep, old = endpoint["endpoint"], endpoint["deployment"]
    if settings.endpoint and settings.endpoint != ep:
        raise UsageError(f"{record.name!r} lives on endpoint {ep}; an update cannot move it "
                         f"to {settings.endpoint}",
                         hint=f"drop -o endpoint, or tear {record.name} down and deploy again")
    if not settings.blue_green:
        return ep, old, old
    new = spec.check_name("deployment", settings.new_deployment or toggled(old),
                          "new_deployment")
    if new == old:
        raise UsageError(f"the new deployment must not be named like the old one ({old})",
                         hint="pass another -o new_deployment=NAME")
    return ep, old, new


def run(backend: Backend, plan: UpdatePlan, repository, context) -> None:
    """The steps, in order (see the module's docstring)."""
    model = backend.register_model(plan, context)
    deployment = backend.create_deployment(plan, context, model)
    if plan.in_place:
        replaced = backend.switch(plan, context, deployment)
    else:
        # with what create_deployment made beside it (the cloud's autoscale setting)
        fresh = [*getattr(backend, "fresh", []), deployment, model]
        smoke_test(backend, plan, repository, context, fresh=fresh)
        move_traffic(backend, plan, context)
        replaced = old_deployment(backend, plan, context)
    retire(backend.target, replaced + plan.old_models, context)


def smoke_test(backend: Backend, plan: UpdatePlan, repository, context, fresh: list) -> None:
    """Blue/green: the new deployment answers every served model; else ``fresh`` is
    removed and DeployFailed says why."""
    backend.target.progress(f"  smoke test of {plan.endpoint}/{plan.new} "
                            f"({spec.DEPLOYMENT_HEADER}: {plan.new})")
    # the recorded endpoint, routed to the new deployment by its header
    routed = dataclasses.replace(context.deployment,
                                 endpoint={**context.deployment.endpoint, "deployment": plan.new})
    failure = smoke(lambda: backend.target.client(routed), repository,
                    backend.target.models_served(repository))
    if failure:
        abandon(backend.target, fresh, context)
        raise DeployFailed(f"the new deployment {plan.endpoint}/{plan.new} failed its smoke "
                           f"test, so it was removed: {failure}", hint=plan.keeps)


def smoke(connect: Callable[[], Any], repository, models: list[str]) -> str | None:
    """Ready, then one inference per model with generated inputs on the client ``connect``
    returns. Returns why it failed, or None."""
    from deployer.samples import generated_inputs

    try:
        client = connect()
    except DeployerError as exc:
        return str(exc)
    try:
        if not client.wait_ready(SMOKE_READY_SECONDS):
            return f"not ready after {SMOKE_READY_SECONDS:.0f}s"
        for model_name in models:
            model = repository.models[model_name]
            answer = client.infer(model_name, generated_inputs(model))
            missing = [o.name for o in model.outputs if o.name not in answer]
            if missing:
                return f"{model_name}: outputs missing: {', '.join(missing)}"
    except (DeployerError, Exception) as exc:  # EndpointError and anything else
        return " ".join(str(exc).split())[:500]  # one line: Triton's messages hold newlines
    finally:
        client.close()
    return None


def move_traffic(backend: Backend, plan: UpdatePlan, context) -> None:
    """Blue/green: ``new`` gets ``plan.traffic`` percent, ``old`` none (recorded first)."""
    backend.target.progress(f"  moving traffic: {plan.new} {plan.traffic}%, {plan.old} 0%")
    resource = context.record("traffic", f"{plan.endpoint}/{plan.new}", endpoint=plan.endpoint,
                              deployment=plan.new, percent=plan.traffic, **backend.traffic_data)
    backend.set_traffic({**backend.traffic(), plan.old: 0, plan.new: plan.traffic})
    context.created(resource)
    context.set_endpoint(deployment=plan.new)


def old_deployment(backend: Backend, plan: UpdatePlan, context) -> list:
    """Blue/green, once the traffic moved: the old deployment's autoscale setting, its
    traffic and the deployment, to retire in that order."""
    backend.target.progress(f"  removing the old deployment {plan.endpoint}/{plan.old}")
    record = context.deployment
    return (live(record, "autoscale", deployment=plan.old) +
            live(record, "traffic", deployment=plan.old) +
            live(record, "deployment", deployment=plan.old))


def retire(target, resources: list, context) -> None:
    """Remove what the new version replaced. It already serves: what cannot be removed now
    is a warning and stays recorded, so teardown removes it."""
    _remove(target, resources, context, "the previous ")


def abandon(target, resources: list, context) -> None:
    """Best effort after a failed update: remove what it created; what cannot be removed
    stays recorded for teardown."""
    _remove(target, resources, context, "")


def _remove(target, resources: list, context, which: str) -> None:
    for resource in resources:
        try:
            target.delete(resource, context.deployment)
        except DeployerError as exc:
            target.progress(f"  warning: could not remove {which}{resource.kind} "
                            f"{resource.id}: {exc}; teardown will retry")
            continue
        context.deleted(resource)
        target.progress(f"  removed {which}{resource.kind} {resource.id}")
