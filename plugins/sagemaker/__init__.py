"""Targets ``sagemaker`` (single- and multi-model Triton endpoints) and ``sagemaker-twin``.

Both build their artefacts and container spec with spec.py. ``sagemaker`` uploads the artefacts
to S3 and creates model → endpoint config → endpoint with boto3; ``sagemaker-twin`` (twin.py)
serves the very same artefacts here as SageMaker's Triton container would, and
``deployer rehearse REPO --target sagemaker`` runs it. boto3 and the image map (sagemaker-core
2.x or the SDK v2, see images.py) are imported inside methods only: the CLI loads every plugin.
"""

from __future__ import annotations

from deployer import hookimpl, progress
from deployer.errors import AlreadyDeployed, DeployFailed, TeardownIncomplete, UsageError
from deployer.target import CloudTime, Fleet, PlannedResource, Target

from . import spec
from .twin import SageMakerTwin

VARIANT = "AllTraffic"


class SageMakerTarget(Target):
    name = "sagemaker"
    description = "an Amazon SageMaker real-time endpoint (single- or multi-model) on Triton"
    requires = ("boto3",)
    install_hint = "pip install 'triton-deployer[sagemaker]'"
    twin = "sagemaker-twin"
    runs_here = False
    options = spec.OPTIONS
    hardware = "sagemaker"

    @classmethod
    def choose_hardware(cls, gpu, settings):
        return spec.choose_hardware(gpu, settings)

    def models_served(self, repository):
        return spec.models_served(self.settings, repository)

    # -- contract ----------------------------------------------------------------------------
    def _session_region(self):
        from . import aws, rules

        with aws.failures(UsageError, self._facts(self.settings.region)):  # e.g. ProfileNotFound
            session = aws.session(self.settings.region)
            return session, rules.cloud(self.settings, session)

    def _facts(self, region):
        from . import aws

        return aws.Facts(region=region, bucket=self.settings.bucket, role=self.settings.role,
                         instance_type=self.settings.instance_type)

    def _preflight(self, session, region, endpoint: str) -> None:
        """Checks before anything is created (exit 2): the endpoint name is free, the bucket
        exists, in ``region``, the execution role exists and trusts SageMaker, and a scaling
        fleet's max_instances is within the instance type's quota."""
        from botocore.exceptions import ClientError

        from . import aws, rules

        with aws.failures(UsageError, self._facts(region)):
            try:
                session.client("sagemaker").describe_endpoint(EndpointName=endpoint)
            except ClientError as exc:
                if not aws.not_found(exc):
                    raise
            else:
                raise AlreadyDeployed(f"SageMaker endpoint {endpoint} already exists in "
                                      f"{region}", hint="pass another --name, or delete it first")
            aws.check_bucket(session.client("s3"), self.settings.bucket, region)
            aws.check_role(session.client("iam"), self.settings.role, self.progress)
            rules.quota_check(self.settings, session, region, self.progress)

    def validate(self, repository) -> None:
        from . import rules

        spec.check_repository(self.settings, repository)
        rules.scaling(self.settings)
        rules.python_imports(self.settings, repository)
        _, region = self._session_region()
        rules.image(self.settings, region)
        rules.multi_gpu(self.settings, region, self.progress)
        rules.sequences(self.settings, repository, self.progress)

    def _names(self, name: str, deployment_id: str, revision: int = 0) -> dict[str, str]:
        """Endpoint, config and model names; an update's revision N adds ``-rN`` to the
        config and model, so the new ones never collide with those still serving."""
        from . import rules

        suffix = f"-r{revision}" if revision else ""
        base = name[:63 - 11 - len(suffix)]
        names = {"endpoint": name,
                 "endpoint-config": f"{base}-c-{deployment_id[:8]}{suffix}",
                 "model": f"{base}-m-{deployment_id[:8]}{suffix}"}
        for kind, value in names.items():
            rules.check_name(kind, value)
        return names

    def _keys(self, layout: str, items, base: str) -> list[tuple[str, object]]:
        """(S3 key, artefact or file) for everything to upload."""
        return [(f"{base}/{key}", item) for key, item in spec.objects(layout, items)]

    def _base(self, digest: str) -> str:
        prefix = self.settings.prefix.strip("/")
        return f"{prefix}/{digest}" if prefix else digest

    def plan(self, repository, name):
        from . import aws, rules

        _, region = self._session_region()
        layout, items = spec.layout(self.settings, repository)
        base = self._base(spec.digest(layout, items))
        names = self._names(name, "0" * 8)
        return [
            PlannedResource("s3-artifacts", f"s3://{self.settings.bucket}/{base}/", {
                "layout": layout, "objects": [k for k, _ in self._keys(layout, items, base)],
                "bytes_before_compression": sum(a.size for a in items),
                "kept_on_teardown": self.settings.keep_artifacts}),
            PlannedResource("model", names["model"].replace("00000000", "<id>"), {
                "image": rules.image(self.settings, region), "mode": self.settings.mode,
                "environment": spec.container_env(self.settings, repository),
                "role": self.settings.role}),
            PlannedResource("endpoint-config", names["endpoint-config"].replace(
                "00000000", "<id>"), {"instance_type": self.settings.instance_type,
                                      "instance_count": rules.initial_count(self.settings),
                                      "startup_timeout": self.settings.startup_timeout}),
            PlannedResource("endpoint", name, {
                "region": region, "models": spec.models_served(self.settings, repository),
                "log_group": aws.log_group(name),
                "log_group_kept_on_teardown": not self.settings.delete_logs}),
            *self._planned_scaling(name),
        ]

    def _planned_scaling(self, endpoint: str) -> list[PlannedResource]:
        """The scalable target and its policy, when the options ask for scaling."""
        from . import autoscaling, rules

        fleet = rules.scaling(self.settings)
        if fleet is None or not fleet.scales:
            return []
        rid = autoscaling.resource_id(endpoint, VARIANT)
        return [PlannedResource("scalable-target", rid, {
                    "service": "Application Auto Scaling", "dimension": autoscaling.DIMENSION,
                    "min_capacity": fleet.minimum, "max_capacity": fleet.maximum,
                    "initial_instances": fleet.initial,
                    "billed_up_to": f"{fleet.maximum} x {self.settings.instance_type}"}),
                PlannedResource("scaling-policy", autoscaling.policy_name(endpoint), {
                    "type": "TargetTrackingScaling", "resource_id": rid,
                    "configuration": autoscaling.configuration(fleet)})]

    # -- deploy's steps: upload → model → endpoint config → endpoint → wait -----------------
    def _upload(self, repository, session, region, context) -> tuple[dict, dict]:
        """Upload what S3 lacks; return the PrimaryContainer's model data fields and what the
        endpoint record says about the artefacts (``artifacts``, ``uploaded_bytes``...)."""
        from . import aws

        bucket = self.settings.bucket
        layout, items = spec.layout(self.settings, repository)
        base = self._base(spec.digest(layout, items))
        s3 = session.client("s3")
        existing = aws.existing_keys(s3, bucket, base + "/")
        wanted = self._keys(layout, items, base)
        missing = [(key, item) for key, item in wanted if key not in existing]
        uri = f"s3://{bucket}/{base}/"
        resource = None
        if missing and not self.settings.keep_artifacts:
            resource = context.record("s3-artifacts", uri, region=region, bucket=bucket,
                                      keys=[key for key, _ in missing])
        sent = self._send(s3, layout, missing)
        # the transfer's own line gave the content's bytes and time; this gives what S3 got
        self.progress(f"  artefacts: {uri} ({len(wanted) - len(missing)} of {len(wanted)} "
                      f"object(s) already there, {sent:,} bytes stored)")
        if resource is not None:
            context.created(resource, uploaded_bytes=sent)
        stats = {"artifacts": uri, "uploaded_bytes": sent,
                 "reused_objects": len(wanted) - len(missing)}
        return self._model_data(layout, uri), stats

    def _send(self, s3, layout: str, missing: list[tuple[str, object]]) -> int:
        """Upload ``(key, artefact or file)`` pairs (archives packed on the fly); bytes sent."""
        from . import artefacts, aws

        bucket = self.settings.bucket
        config = aws.transfer_config()
        if not missing:
            return 0
        if layout == "uncompressed":
            size = sum(path.stat().st_size for _, path in missing)
            prefix = aws.common_prefix([key for key, _ in missing])
            with progress.transfer(self.progress, f"  uploading {len(missing)} file(s) to "
                                   f"s3://{bucket}/{prefix}", size) as moving:
                return aws.upload_files(s3, bucket, missing, config, moving.advance)
        sent = 0
        for key, artefact in missing:
            size = artefact.size
            with progress.transfer(self.progress, f"  packing and uploading s3://{bucket}/{key}",
                                   size) as moving:
                sent += artefacts.upload_tar_gz(artefact, s3, bucket, key, config,
                                                artefacts.PackedMeter(size, moving.update))
                moving.update(size)
        return sent

    @staticmethod
    def _model_data(layout: str, uri: str) -> dict:
        """The PrimaryContainer fields that point the model at its artefacts."""
        if layout == "uncompressed":
            return {"ModelDataSource": {"S3DataSource": {
                "S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}}}
        if layout == "multi":
            return {"ModelDataUrl": uri}
        return {"ModelDataUrl": f"{uri}model.tar.gz"}

    def _tags(self, deployment) -> list[dict[str, str]]:
        from . import aws, rules

        return [{"Key": aws.TAG_KEY, "Value": deployment.id},
                {"Key": aws.NAME_TAG, "Value": deployment.name},
                *rules.tags(self.settings)]

    def _model_and_config(self, repository, session, region, names, context) -> dict:
        """Upload the artefacts, then create the model and the endpoint config (each recorded
        before and marked created after, tagged with the deployment id). Returns what the
        endpoint record says about them."""
        from . import rules

        image = rules.image(self.settings, region)
        sm = session.client("sagemaker")
        self.progress(f"  uploading artefacts to s3://{self.settings.bucket}")
        data, stats = self._upload(repository, session, region, context)
        tags = self._tags(context.deployment)
        container = {"Image": image,
                     "Environment": spec.container_env(self.settings, repository),
                     "Mode": "MultiModel" if self.settings.mode == "multi" else "SingleModel",
                     **data}
        self._create_model(sm, names["model"], container, tags, region, context)
        self._create_config(sm, names, tags, region, context)
        return {"mode": self.settings.mode, "image": image, **stats}

    def _create_model(self, sm, model: str, container: dict, tags, region, context) -> None:
        resource = context.record("model", model, region=region)
        self.progress(f"  creating model {model} ({container['Image']})")
        arn = sm.create_model(ModelName=model, ExecutionRoleArn=self.settings.role,
                              PrimaryContainer=container, Tags=tags)["ModelArn"]
        context.created(resource, arn=arn)

    def _create_config(self, sm, names: dict[str, str], tags, region, context) -> None:
        from . import rules

        resource = context.record("endpoint-config", names["endpoint-config"], region=region)
        arn = sm.create_endpoint_config(
            EndpointConfigName=names["endpoint-config"], Tags=tags,
            ProductionVariants=[{
                "VariantName": VARIANT, "ModelName": names["model"],
                "InstanceType": self.settings.instance_type,
                "InitialInstanceCount": rules.initial_count(self.settings),
                "ContainerStartupHealthCheckTimeoutInSeconds": self.settings.startup_timeout}],
        )["EndpointConfigArn"]
        context.created(resource, arn=arn)

    def _wait_in_service(self, sm, endpoint: str, what: str) -> None:
        """The ``endpoint_in_service`` waiter, which also stops at UpdateRollbackFailed and
        Deleting; raises botocore's WaiterError. Reported as a wait (``what``) with the
        EndpointStatus of every poll."""
        from . import aws

        delay = 15
        with progress.waiting(self.progress, what) as wait:
            aws.wait_in_service(sm, endpoint, delay,
                                (self.settings.startup_timeout + 1800) // delay, wait.state)

    def deploy(self, repository, context) -> None:
        """Checks (exit 2, nothing created), then upload → model → endpoint config → endpoint;
        any AWS error after the checks is DeployFailed (exit 3) with the one line. With the
        scaling options, the InService endpoint's variant is then registered with Application
        Auto Scaling and given its target tracking policy (each recorded first)."""
        from . import aws, rules

        session, region = self._session_region()
        deployment = context.deployment
        names = self._names(deployment.name, deployment.id)
        image = rules.image(self.settings, region)
        self._preflight(session, region, names["endpoint"])
        with aws.failures(DeployFailed, self._facts(region), then=lambda: (
                f"'deployer teardown {deployment.name}' removes what was created"
                if deployment.resources else "nothing was created")):
            sm = session.client("sagemaker")
            context.set_endpoint(endpoint=names["endpoint"], region=region,
                                 mode=self.settings.mode, image=image)
            context.set_endpoint(**self._model_and_config(repository, session, region, names,
                                                          context))
            resource = self._create_endpoint(sm, names, region, context)
            if self.settings.wait:
                self._wait_created(sm, session, names["endpoint"], deployment.name)
            context.created(resource)
            fleet = rules.scaling(self.settings)
            if fleet is not None and fleet.scales:
                self._autoscale(session, names["endpoint"], region,
                                fleet, context)

    def _create_endpoint(self, sm, names: dict[str, str], region, context):
        """``create_endpoint`` on the new config; the resource stays ``creating`` until it
        serves (or is not waited for). With ``-o delete_logs`` the log group SageMaker will
        write is recorded first, so teardown removes it after the endpoint."""
        logs = self._record_logs(names["endpoint"], region, context)
        resource = context.record("endpoint", names["endpoint"], region=region)
        from . import rules

        self.progress(f"  creating endpoint {names['endpoint']} on "
                      f"{rules.initial_count(self.settings)} x {self.settings.instance_type}")
        arn = sm.create_endpoint(EndpointName=names["endpoint"],
                                 EndpointConfigName=names["endpoint-config"],
                                 Tags=self._tags(context.deployment))["EndpointArn"]
        context.update(resource, arn=arn)
        if logs is not None:
            context.created(logs)
        return resource

    def _autoscale(self, session, endpoint: str, region, wanted, context) -> None:
        """Register the variant as a scalable target, then put its target tracking policy:
        each recorded before its call and marked created after, with the values it got."""
        from . import autoscaling

        aas = session.client("application-autoscaling")
        rid = autoscaling.resource_id(endpoint, VARIANT)
        deployment = context.deployment
        tags = {t["Key"]: t["Value"] for t in self._tags(deployment)}
        target = context.record("scalable-target", rid, region=region,
                                min_capacity=wanted.minimum, max_capacity=wanted.maximum)
        self.progress(f"  registering {rid} with Application Auto Scaling: "
                      f"{wanted.minimum} to {wanted.maximum} instances")
        context.created(target, arn=autoscaling.register(aas, rid, wanted, tags))
        target_value = wanted.target_requests_per_minute
        if target_value is None:  # restoring a target whose policy was never put
            return
        name = autoscaling.policy_name(endpoint)
        policy = context.record("scaling-policy", name, region=region, resource_id=rid,
                                target_value=target_value,
                                scale_in_cooldown=wanted.scale_in_cooldown,
                                scale_out_cooldown=wanted.scale_out_cooldown)
        self.progress(f"  scaling policy {name}: {autoscaling.rule(target_value)}")
        context.created(policy, arn=autoscaling.put_policy(aas, rid, name, wanted))

    def _unscale(self, session, context, scaled: list) -> None:
        """Delete the policy and deregister the target (newest first), as SageMaker asks
        before an update of an autoscaled variant; each marked deleted."""
        from . import autoscaling

        if not scaled:
            return
        aas = session.client("application-autoscaling")
        for resource in reversed(scaled):
            autoscaling.delete(aas, resource)
            context.deleted(resource)
            self.progress(f"  removed {resource.kind} {resource.id} for the update "
                          "(SageMaker refuses to update an autoscaled variant)")

    def _record_logs(self, endpoint: str, region, context):
        """The ``log-group`` resource (``-o delete_logs=true`` only, once per deployment)."""
        from . import aws

        group = aws.log_group(endpoint)
        if not self.settings.delete_logs or any(
                r.kind == "log-group" and r.id == group and r.status != "deleted"
                for r in context.deployment.resources):
            return None
        return context.record("log-group", group, region=region)

    def _wait_created(self, sm, session, endpoint: str, name: str) -> None:
        from botocore.exceptions import WaiterError

        try:
            self._wait_in_service(sm, endpoint, "  waiting for the endpoint to be InService "
                                  "(often 5-15 minutes)")
        except WaiterError as exc:
            raise self._not_in_service(sm, session, endpoint, exc, name) from None

    def _not_in_service(self, sm, session, endpoint: str, exc, name: str) -> DeployFailed:
        """The waiter gave up: the endpoint's status and FailureReason (or the AWS error that
        stopped the waiter) in the line, its last CloudWatch lines as details."""
        from . import aws

        reason, tail = aws.failure_parts(sm, session.client("logs"), endpoint)
        if (getattr(exc, "last_response", None) or {}).get("Error"):
            reason = f"{aws.waiter_reason(exc)} ({reason})"
        return DeployFailed(
            f"endpoint {endpoint} did not come up: {reason}",
            hint=f"run 'deployer teardown {name}' to remove what was created",
            details=(f"last log lines of /aws/sagemaker/Endpoints/{endpoint}:\n{tail}" if tail
                     else None))

    def update(self, repository, context) -> None:
        """Blue/green: upload → a new model and endpoint config (``-rN``) → ``update_endpoint``
        → wait InService on the new config → remove the previous config, model and artefacts.

        SageMaker keeps the previous fleet serving until the new one passes its health checks
        and rolls back if it does not: on any failure the previous resources are left alone
        (the new ones stay recorded; teardown removes them). The mode may change (single ↔
        multi): the endpoint record follows only once the new config serves. Any AWS error
        is DeployFailed with the one line (the bucket check before any create: exit 2).

        An autoscaled variant cannot be updated (SageMaker's "Update endpoints that use auto
        scaling"): its policy and scalable target go just before ``update_endpoint`` and come
        back (new records, the options' values) once the new config serves; if the update
        fails they are put back as they were on the version that still serves."""
        from . import autoscaling, aws, rules

        session, region = self._session_region()
        deployment = context.deployment
        endpoint = deployment.endpoint.get("endpoint", deployment.name)
        self._check_region(endpoint, deployment.endpoint.get("region"), region)
        facts = self._facts(region)
        with aws.failures(DeployFailed, facts, then=self._rerun_hint(deployment.name)):
            sm = session.client("sagemaker")
            current = self._check_updatable(sm, session, region, endpoint, deployment.name)
            rules.quota_check(self.settings, session, region, self.progress)
            previous = self._replaced(deployment)
            scaled = [r for r in deployment.resources
                      if r.kind in autoscaling.KINDS and r.status != "deleted"]
            names = self._names(deployment.name, deployment.id,
                                sum(r.kind == "model" for r in deployment.resources))
            details = self._model_and_config(repository, session, region, names, context)
            logs = self._record_logs(endpoint, region, context)  # -o delete_logs given now
            if logs is not None:
                context.created(logs)
            new_config = names["endpoint-config"]
            old = self._old_scaling(scaled)
            self._unscale(session, context, scaled)
            try:
                self._switch(sm, endpoint, current, new_config, facts, deployment.name)
                if not self.settings.wait:
                    self.progress(f"  not waiting (-o wait=false): {current} and its model "
                                  "stay until the next update or teardown")
                    context.set_endpoint(**details)
                    return
                self._wait_switched(sm, session, endpoint, current, new_config,
                                    deployment.name)
            except BaseException:
                if old is not None:
                    self._rescale(session, endpoint, region, old, context, "restored on "
                                  f"{current}, which still serves")
                raise
            context.set_endpoint(**details)
            fleet = rules.scaling(self.settings)
            if fleet is not None and fleet.scales:
                self._rescale(session, endpoint, region, fleet,
                              context, f"registered again on {new_config}")
            self._retire(context, previous, details["artifacts"])

    @staticmethod
    def _old_scaling(scaled: list):
        """The recorded scaling the update removes (to put back if it fails), or None."""
        from . import autoscaling

        target = next((r for r in scaled if r.kind == "scalable-target"), None)
        policy = next((r for r in scaled if r.kind == "scaling-policy"), None)
        return autoscaling.recorded(target, policy) if target is not None else None

    def _rescale(self, session, endpoint: str, region, wanted, context, what: str) -> None:
        """:meth:`_autoscale` during an update: its failure is a warning (the endpoint
        serves; what was recorded stays for teardown), not the update's."""
        from . import aws

        try:
            self._autoscale(session, endpoint, region, wanted, context)
            self.progress(f"  autoscaling {what}")
        except Exception as exc:  # noqa: BLE001 - reported, never masks the update's own error
            if not aws.is_cloud_error(exc):
                raise
            self.progress(f"  warning: autoscaling could not be {what.split(' ', 1)[0]}: "
                          f"{aws.explain(exc, self._facts(region))[0]}; the endpoint runs "
                          "at a fixed count until the next update")

    # -- update's steps ------------------------------------------------------------------------
    @staticmethod
    def _rerun_hint(name: str) -> str:
        return (f"fix the cause and run the update again ('deployer teardown {name}' removes "
                "everything)")

    @staticmethod
    def _check_region(endpoint: str, recorded: str | None, region: str) -> None:
        """An update stays in the region the endpoint was deployed to (UsageError)."""
        if recorded and recorded != region:
            raise UsageError(f"endpoint {endpoint} is in {recorded}: an update cannot move it to "
                             f"{region}", hint=f"pass -o region={recorded}, or tear it down "
                                               "and deploy again")

    def _check_updatable(self, sm, session, region: str, endpoint: str, name: str) -> str:
        """The endpoint still exists (DeployFailed), the bucket and the execution role are
        usable (UsageError) and the endpoint is InService (DeployFailed). Returns the config
        it serves now."""
        from botocore.exceptions import ClientError

        from . import aws

        teardown = f"run 'deployer teardown {name}' and deploy again"
        try:
            described = sm.describe_endpoint(EndpointName=endpoint)
        except ClientError as exc:
            if aws.not_found(exc):
                raise DeployFailed(f"endpoint {endpoint} no longer exists in {region}",
                                   hint=teardown) from None
            raise
        with aws.failures(UsageError, self._facts(region)):
            aws.check_bucket(session.client("s3"), self.settings.bucket, region)
            aws.check_role(session.client("iam"), self.settings.role, self.progress)
        if described.get("EndpointStatus") != "InService":
            raise DeployFailed(
                f"endpoint {endpoint} is {described.get('EndpointStatus')}; only an InService "
                "endpoint can be updated", hint="retry once it is InService, or " + teardown)
        return described.get("EndpointConfigName", "?")

    @staticmethod
    def _replaced(deployment) -> list:
        """What the new version replaces: everything but the endpoint, leftovers of a failed
        or unwaited update too."""
        return [r for r in deployment.resources if r.status != "deleted"
                and r.kind in ("endpoint-config", "model", "s3-artifacts")]

    def _switch(self, sm, endpoint: str, current: str, new_config: str, facts,
                name: str) -> None:
        """``update_endpoint`` to the new config; a refusal leaves ``current`` serving."""
        from botocore.exceptions import ClientError

        from . import aws

        self.progress(f"  updating endpoint {endpoint}: {current} → {new_config} (blue/green: "
                      "the current version serves until the new one is InService)")
        try:
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=new_config)
        except ClientError as exc:
            line, hint = aws.explain(exc, facts)
            raise DeployFailed(f"{line}; {current} still serves", hint="; ".join(filter(None, (
                hint, self._rerun_hint(name))))) from None

    def _wait_switched(self, sm, session, endpoint: str, current: str, new_config: str,
                       name: str) -> None:
        """Wait until the endpoint is InService on ``new_config``; DeployFailed with its
        reason and CloudWatch lines if it failed or rolled back to ``current``."""
        from botocore.exceptions import WaiterError

        from . import aws

        serving, status = None, None
        try:
            self._wait_in_service(sm, endpoint, "  waiting for the endpoint to be InService on "
                                  "the new config (often 5-15 minutes)")
            serving = sm.describe_endpoint(EndpointName=endpoint).get("EndpointConfigName")
        except WaiterError as exc:
            status = (getattr(exc, "last_response", None) or {}).get("EndpointStatus")
        if serving == new_config:
            return
        # Failed, rolled back to the previous config (InService with a FailureReason), or
        # UpdateRollbackFailed: the rollback failed too, and it serves a mix of both configs
        reason, tail = aws.failure_parts(sm, session.client("logs"), endpoint)
        details = (f"last log lines of {aws.log_group(endpoint)}:\n{tail}" if tail else None)
        if status == "UpdateRollbackFailed":
            raise DeployFailed(
                f"update of endpoint {endpoint} to {new_config} failed and so did SageMaker's "
                f"rollback ({reason}); it serves a mix of {current} and {new_config}, both left "
                "in place", hint="restore it as SageMaker's 'rolling deployments' guide says "
                "(it must be InService before another update), or run 'deployer teardown "
                f"{name}'", details=details)
        raise DeployFailed(
            f"update of endpoint {endpoint} to {new_config} failed ({reason}); {current} "
            "and its model were left in place", hint="fix the cause and run the update again",
            details=details)

    def _retire(self, context, previous: list, new_artifacts: str) -> None:
        """Remove the previous config, model and artefacts (not those the new model reads, nor
        kept ones); one that cannot go is a warning and stays recorded for teardown."""
        for kind in ("endpoint-config", "model", "s3-artifacts"):
            for resource in (r for r in previous if r.kind == kind):
                if kind == "s3-artifacts" and (resource.id == new_artifacts
                                               or self.settings.keep_artifacts):
                    continue  # still what the new model reads, or kept: teardown decides
                try:
                    self.delete(resource, context.deployment)
                except TeardownIncomplete as exc:
                    self.progress(f"  warning: {exc}; teardown will retry")
                    continue
                context.deleted(resource)
                self.progress(f"  removed previous {kind} {resource.id}")

    # -- the rest of the contract -------------------------------------------------------------
    def client(self, deployment):
        from deployer.repository import Repository

        from . import aws
        from .invoke import SageMakerClient

        endpoint = deployment.endpoint
        repository = Repository.load(deployment.repository)
        with aws.failures(DeployFailed, self._facts(endpoint["region"])):
            return SageMakerClient(aws.session(endpoint["region"]), endpoint["endpoint"],
                                   repository, endpoint.get("mode") == "multi", self.progress)

    def cloud_time(self, deployment, start, end, *, wait, progress):
        """CloudWatch's ``AWS/SageMaker`` OverheadLatency and ModelLatency (microseconds, as
        ms) for the endpoint and its variant over the minute-aligned periods covering
        ``[start, end]``, per request; Invocations as ``requests`` (see cloudwatch.py). Polls
        until published or ``wait`` s; an AWS error is the note, with AWS's code."""
        from botocore.config import Config

        from . import aws, cloudwatch

        endpoint = deployment.endpoint
        if "endpoint" not in endpoint:
            return None
        facts = self._facts(endpoint["region"])

        def explain(exc) -> str:
            line, hint = aws.explain(exc, facts)
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("AccessDenied", "AccessDeniedException") or "not authorized" in line:
                hint = (f"the caller needs {cloudwatch.PERMISSION} (an IAM policy statement: "
                        f"Action {cloudwatch.PERMISSION}, Resource *)")
            return f"{line} ({hint})" if hint else line

        try:
            client = aws.session(endpoint["region"]).client("cloudwatch", config=Config(
                connect_timeout=5, read_timeout=20))
        except Exception as exc:  # noqa: BLE001 - e.g. a profile that is gone: a note
            if not aws.is_cloud_error(exc):
                raise
            return CloudTime({}, None, cloudwatch.source(endpoint["endpoint"], VARIANT),
                             note=explain(exc))
        return cloudwatch.cloud_time(client, endpoint["endpoint"], VARIANT, start, end,
                                     wait=wait, progress=progress, explain=explain)

    def _region(self, resource, deployment) -> str | None:
        return resource.data.get("region") or deployment.endpoint.get("region") or \
            self.settings.region

    def _sm_call(self, sm, verb: str, kind: str):
        """(bound method, name parameter) of ``delete``/``describe`` for a SageMaker kind."""
        noun = {"endpoint": "endpoint", "endpoint-config": "endpoint_config",
                "model": "model"}[kind]
        key = {"endpoint": "EndpointName", "endpoint-config": "EndpointConfigName",
               "model": "ModelName"}[kind]
        return getattr(sm, f"{verb}_{noun}"), key

    def delete(self, resource, deployment) -> bool:
        """Any AWS error is TeardownIncomplete with the one line; the core records it against
        this resource and goes on with the others."""
        from . import aws

        region = self._region(resource, deployment)
        with aws.failures(TeardownIncomplete, self._facts(region)):
            return self._delete(aws.session(region), resource, deployment)

    def _delete(self, session, resource, deployment) -> bool:
        from botocore.exceptions import WaiterError

        from . import autoscaling, aws

        if resource.kind in autoscaling.KINDS:
            return autoscaling.delete(session.client("application-autoscaling"), resource)
        if resource.kind == "s3-artifacts":  # a bucket that is itself gone holds nothing
            return aws.unless_gone(lambda: aws.delete_keys(
                session.client("s3"), resource.data["bucket"],
                resource.data.get("keys", [])) > 0)
        if resource.kind == "log-group":
            return aws.unless_gone(lambda: session.client("logs").delete_log_group(
                logGroupName=resource.id) or True)
        sm = session.client("sagemaker")
        call, key = self._sm_call(sm, "delete", resource.kind)
        if resource.kind == "endpoint":
            self._name_logs(resource, deployment, session.region_name)
        if not aws.unless_gone(lambda: call(**{key: resource.id}) or True):
            return False
        if resource.kind == "endpoint":
            try:
                with progress.waiting(self.progress, f"  waiting for endpoint {resource.id} to "
                                      "be deleted") as wait, aws.answers(
                        sm, "DescribeEndpoint", lambda a: wait.state(aws.endpoint_state(a))):
                    sm.get_waiter("endpoint_deleted").wait(
                        EndpointName=resource.id, WaiterConfig={"Delay": 15, "MaxAttempts": 80})
            except WaiterError as exc:
                raise TeardownIncomplete(
                    f"endpoint {resource.id} is not deleted yet: {aws.waiter_reason(exc)}",
                    hint="it may still be Deleting; run the teardown again in a few minutes") \
                    from None
        return True

    def _name_logs(self, endpoint, deployment, region) -> None:
        """Say what becomes of the endpoint's CloudWatch log group: it goes when recorded
        (``-o delete_logs=true``), else it stays, and the line says how to remove it."""
        from . import aws

        group = aws.log_group(endpoint.id)
        if any(r.kind == "log-group" and r.id == group and r.status != "deleted"
               for r in deployment.resources):
            self.progress(f"  CloudWatch log group {group} goes too (-o delete_logs=true)")
        else:
            self.progress(f"  CloudWatch log group {group} stays (deployed without -o "
                          "delete_logs=true); to remove it: aws logs delete-log-group "
                          f"--log-group-name {group} --region {region}")

    def exists(self, resource, deployment) -> bool:
        from . import autoscaling, aws

        region = self._region(resource, deployment)
        with aws.failures(TeardownIncomplete, self._facts(region)):
            session = aws.session(region)
            if resource.kind in autoscaling.KINDS:
                return autoscaling.exists(session.client("application-autoscaling"), resource)
            if resource.kind == "s3-artifacts":
                return aws.unless_gone(lambda: aws.any_key(
                    session.client("s3"), resource.data["bucket"],
                    resource.data.get("keys", [])))
            if resource.kind == "log-group":
                return aws.log_group_exists(session.client("logs"), resource.id)
            call, key = self._sm_call(session.client("sagemaker"), "describe", resource.kind)
            return aws.unless_gone(lambda: call(**{key: resource.id}) or True)

    def recover(self, name, deployment_id):
        """The models, endpoint configs and endpoint tagged with the deployment's id (or its
        name when the id is lost), oldest first, in the configured region. Listings are
        narrowed by our naming (the endpoint is ``name``, the others carry the id's first 8
        characters, or the name) and every match is confirmed by its tag. The S3 objects stay:
        they carry no tag and, being content addressed, may serve other deployments."""
        from deployer.state import Resource

        from . import aws

        with aws.failures(TeardownIncomplete, self._facts(self.settings.region)):
            session = aws.session(self.settings.region)
            region = session.region_name
            if not region:
                raise TeardownIncomplete(f"no AWS region to look for {name}'s resources in",
                                         hint="pass -o region=REGION, or set AWS_REGION")
            sm = session.client("sagemaker")
            tag = (aws.TAG_KEY, deployment_id) if deployment_id else (aws.NAME_TAG, name)
            found = []
            for kind, listing, field in (("model", "list_models", "Model"),
                                         ("endpoint-config", "list_endpoint_configs",
                                          "EndpointConfig"),
                                         ("endpoint", "list_endpoints", "Endpoint")):
                needle = name if kind == "endpoint" else (
                    deployment_id[:8] if deployment_id else name[:48])
                items = [item for page in sm.get_paginator(listing).paginate(NameContains=needle)
                         for item in page[f"{field}s"]
                         if needle in item[f"{field}Name"]
                         and aws.tagged(sm, item[f"{field}Arn"], *tag)]
                found += [Resource(kind, item[f"{field}Name"], status="created",
                                   data={"region": region, "arn": item[f"{field}Arn"]})
                          for item in sorted(items, key=lambda i: i["CreationTime"])]
        return found

    def instances(self, deployment):
        """The fleet's floor: ``min_instances`` when it scales (what runs when idle; the core
        notes the price at ``max_instances`` from :meth:`fleet`), else its fixed count."""
        from . import rules

        fleet = rules.scaling(self.settings)
        count = fleet.minimum if fleet is not None and fleet.scales else \
            rules.initial_count(self.settings)
        return [(self.settings.instance_type, count)]

    def fleet(self, deployment):
        """DescribeEndpoint's CurrentInstanceCount and DesiredInstanceCount of the variant,
        and, when scaling was registered, the scalable target's range and the policy's rule
        as Application Auto Scaling reports them now."""
        from . import autoscaling, aws, rules

        endpoint = deployment.endpoint
        if "endpoint" not in endpoint:
            return None
        active = {r.kind: r for r in deployment.resources
                  if r.kind in autoscaling.KINDS and r.status == "created"}
        with aws.failures(DeployFailed, self._facts(endpoint["region"])):
            session = aws.session(endpoint["region"])
            described = session.client("sagemaker").describe_endpoint(
                EndpointName=endpoint["endpoint"])
            variant = next((v for v in described.get("ProductionVariants", [])
                            if v.get("VariantName") == VARIANT), {})
            desired, current = (variant.get("DesiredInstanceCount"),
                                variant.get("CurrentInstanceCount"))
            registered = found = None
            if "scalable-target" in active:
                aas = session.client("application-autoscaling")
                rid = active["scalable-target"].id
                registered = autoscaling.target(aas, rid)
                if "scaling-policy" in active:
                    found = autoscaling.policy(aas, rid, active["scaling-policy"].id)
        if registered is not None:
            return Fleet(registered["MinCapacity"], registered["MaxCapacity"], desired,
                         current, autoscaling.described_rule(found))
        count = desired or rules.initial_count(self.settings)
        return Fleet(count, count, desired, current, "")

    def logs(self, deployment, lines=100) -> str:
        from . import aws

        endpoint = deployment.endpoint
        if "endpoint" not in endpoint:
            return ""
        return aws.log_tail(aws.session(endpoint["region"]).client("logs"),
                            endpoint["endpoint"], lines)


@hookimpl
def deployer_register_targets():
    return [SageMakerTarget, SageMakerTwin]
