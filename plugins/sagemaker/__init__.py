"""Targets ``sagemaker`` (single- and multi-model Triton endpoints) and ``sagemaker-twin``.

``sagemaker`` uploads the artefacts to S3 and creates model → endpoint config → endpoint with
boto3. ``sagemaker-twin`` builds the very same artefacts into a local folder, unpacks them as the
container would and runs the embedded ``tritonserver`` with the flags and environment of
SageMaker's Triton ``serve`` script; ``deployer rehearse REPO --target sagemaker`` runs it.
boto3 and the image map (sagemaker-core 2.x or the SDK v2, see images.py) are imported inside
methods only: the CLI loads every plugin.
"""

from __future__ import annotations

import time
from pathlib import Path

from deployer import hookimpl
from deployer.errors import AlreadyDeployed, DeployFailed, TeardownIncomplete, UsageError
from deployer.target import Option, PlannedResource, Rehearsal, Target

VARIANT = "AllTraffic"


class SageMakerTarget(Target):
    name = "sagemaker"
    description = "an Amazon SageMaker real-time endpoint (single- or multi-model) on Triton"
    requires = ("boto3",)
    install_hint = "pip install 'triton-deployer[sagemaker]'"
    twin = "sagemaker-twin"
    runs_here = False
    options = (
        Option("region", str, None, "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / "
                                    "the profile's)"),
        Option("role", str, None, "execution role ARN SageMaker assumes to read the artefacts "
                                  "(required)"),
        Option("bucket", str, None, "S3 bucket for the artefacts (required)"),
        Option("prefix", str, "triton-deployer", "S3 key prefix; artefacts go under "
                                                 "PREFIX/<sha256 of their content>/"),
        Option("instance_type", str, "ml.g4dn.xlarge", "instance type; CPU families (ml.m5, "
               "ml.c5...) get the -cpu image"),
        Option("instance_count", int, 1, "initial instance count"),
        Option("image_version", str, None, "Triton image version, e.g. 24.09 (default: the "
               "newest the image map lists for the region)"),
        Option("image", str, None, "explicit container image URI (overrides image_version)"),
        Option("mode", str, "single", "single: one model.tar.gz, one default model; multi: one "
               "<model>.tar.gz per top-level model, invoked with TargetModel",
               choices=("single", "multi")),
        Option("default_model", str, None, "model served by /invocations in single mode "
               "(SAGEMAKER_TRITON_DEFAULT_MODEL_NAME); needed with several top-level models"),
        Option("env", list, [], "extra container environment, SAGEMAKER_TRITON_NAME=VALUE "
                                "items, comma-separated"),
        Option("startup_timeout", int, 600, "container start-up health check timeout, "
                                            "60-3600 seconds"),
        Option("uncompressed", bool, False, "single mode: upload the repository as an "
               "uncompressed S3 prefix instead of model.tar.gz"),
        Option("wait", bool, True, "wait until the endpoint is InService"),
        Option("tags", list, [], "extra resource tags, KEY=VALUE items, comma-separated"),
        Option("keep_artifacts", bool, False, "leave the uploaded artefacts in S3 on teardown"),
    )

    # -- shared with the twin ----------------------------------------------------------------
    def _layout(self, repository):
        from . import artefacts

        if self.settings.mode == "multi":
            return "multi", artefacts.multi(repository)
        return ("uncompressed" if self.settings.uncompressed else "single",
                [artefacts.single(repository)])

    def _container_env(self, repository) -> dict[str, str]:
        from . import rules

        env = rules.env(self.settings)
        if self.settings.mode == "single":
            env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = rules.default_model(repository,
                                                                             self.settings)
        return env

    def _check_repository(self, repository) -> None:
        from deployer.errors import ValidationError

        from . import rules

        rules.options(self.settings)
        if self.settings.mode == "single":
            rules.default_model(repository, self.settings)
            if self.settings.uncompressed:
                for model in repository.models.values():
                    for version in model.versions:
                        folder = model.path / str(version)
                        if not any(p.is_file() for p in folder.rglob("*")):
                            raise ValidationError(
                                f"version folder {model.name}/{version} has no file: an "
                                "uncompressed S3 prefix cannot carry an empty folder",
                                path=str(folder),
                                hint="add a file to it (e.g. .gitkeep), or drop -o uncompressed")
        else:
            rules.multi_models(repository)

    def models_served(self, repository):
        from . import rules

        if self.settings.mode == "multi":
            return repository.top_level()
        return [rules.default_model(repository, self.settings)]

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
        """Checks before anything is created (exit 2): the endpoint name is free, and the
        bucket exists, in ``region``."""
        from botocore.exceptions import ClientError

        from . import aws

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

    def validate(self, repository) -> None:
        from . import rules

        self._check_repository(repository)
        _, region = self._session_region()
        rules.image(self.settings, region)
        rules.multi_gpu(self.settings, region, self.progress)

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
        if layout == "uncompressed":
            return [(f"{base}/{rel}", path) for rel, path in items[0].members]
        return [(f"{base}/{artefact.name}", artefact) for artefact in items]

    def _base(self, digest: str) -> str:
        prefix = self.settings.prefix.strip("/")
        return f"{prefix}/{digest}" if prefix else digest

    def plan(self, repository, name):
        from . import artefacts, rules

        _, region = self._session_region()
        layout, items = self._layout(repository)
        base = self._base(artefacts.listing_digest(items, layout))
        names = self._names(name, "0" * 8)
        return [
            PlannedResource("s3-artifacts", f"s3://{self.settings.bucket}/{base}/", {
                "layout": layout, "objects": [k for k, _ in self._keys(layout, items, base)],
                "bytes_before_compression": sum(a.size for a in items),
                "kept_on_teardown": self.settings.keep_artifacts}),
            PlannedResource("model", names["model"].replace("00000000", "<id>"), {
                "image": rules.image(self.settings, region), "mode": self.settings.mode,
                "environment": self._container_env(repository), "role": self.settings.role}),
            PlannedResource("endpoint-config", names["endpoint-config"].replace(
                "00000000", "<id>"), {"instance_type": self.settings.instance_type,
                                      "instance_count": self.settings.instance_count,
                                      "startup_timeout": self.settings.startup_timeout}),
            PlannedResource("endpoint", name, {"region": region,
                                               "models": self.models_served(repository)}),
        ]

    def _upload(self, repository, session, region, context) -> tuple[dict, dict]:
        """Upload what S3 lacks; return the PrimaryContainer's model data fields and what the
        endpoint record says about the artefacts (``artifacts``, ``uploaded_bytes``...)."""
        from . import artefacts, aws

        bucket = self.settings.bucket
        layout, items = self._layout(repository)
        started = time.monotonic()
        base = self._base(artefacts.listing_digest(items, layout))
        s3 = session.client("s3")
        existing = aws.existing_keys(s3, bucket, base + "/")
        wanted = self._keys(layout, items, base)
        missing = [(key, item) for key, item in wanted if key not in existing]
        uri = f"s3://{bucket}/{base}/"
        resource = None
        if missing and not self.settings.keep_artifacts:
            resource = context.record("s3-artifacts", uri, region=region, bucket=bucket,
                                      keys=[key for key, _ in missing])
        config = aws.transfer_config()
        sent = 0
        if layout == "uncompressed":
            sent = aws.upload_files(s3, bucket, missing, config)
        else:
            for key, artefact in missing:
                self.progress(f"  packing and uploading s3://{bucket}/{key}")
                sent += artefacts.upload_tar_gz(artefact, s3, bucket, key, config)
        seconds = round(time.monotonic() - started, 3)
        self.progress(f"  artefacts: {uri} ({len(wanted) - len(missing)} of {len(wanted)} "
                      f"object(s) already there, {sent:,} bytes uploaded in {seconds}s)")
        if resource is not None:
            context.created(resource, uploaded_bytes=sent)
        stats = {"artifacts": uri, "uploaded_bytes": sent,
                 "reused_objects": len(wanted) - len(missing)}
        if layout == "uncompressed":
            return {"ModelDataSource": {"S3DataSource": {
                "S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}}}, stats
        if layout == "multi":
            return {"ModelDataUrl": uri}, stats
        return {"ModelDataUrl": f"{uri}model.tar.gz"}, stats

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

        deployment = context.deployment
        image = rules.image(self.settings, region)
        sm = session.client("sagemaker")
        self.progress(f"  uploading artefacts to s3://{self.settings.bucket}")
        data, stats = self._upload(repository, session, region, context)
        tags = self._tags(deployment)
        container = {"Image": image, "Environment": self._container_env(repository),
                     "Mode": "MultiModel" if self.settings.mode == "multi" else "SingleModel",
                     **data}

        resource = context.record("model", names["model"], region=region)
        self.progress(f"  creating model {names['model']} ({image})")
        arn = sm.create_model(ModelName=names["model"], ExecutionRoleArn=self.settings.role,
                              PrimaryContainer=container, Tags=tags)["ModelArn"]
        context.created(resource, arn=arn)

        resource = context.record("endpoint-config", names["endpoint-config"], region=region)
        arn = sm.create_endpoint_config(
            EndpointConfigName=names["endpoint-config"], Tags=tags,
            ProductionVariants=[{
                "VariantName": VARIANT, "ModelName": names["model"],
                "InstanceType": self.settings.instance_type,
                "InitialInstanceCount": self.settings.instance_count,
                "ContainerStartupHealthCheckTimeoutInSeconds": self.settings.startup_timeout}],
        )["EndpointConfigArn"]
        context.created(resource, arn=arn)
        return {"mode": self.settings.mode, "image": image, **stats}

    def _wait_in_service(self, sm, endpoint: str) -> None:
        """The ``endpoint_in_service`` waiter; raises botocore's WaiterError."""
        delay = 15
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={
                "Delay": delay, "MaxAttempts": (self.settings.startup_timeout + 1800) // delay})

    def deploy(self, repository, context) -> None:
        """Checks (exit 2, nothing created), then upload → model → endpoint config → endpoint;
        any AWS error after the checks is DeployFailed (exit 3) with the one line."""
        from . import aws, rules

        session, region = self._session_region()
        deployment = context.deployment
        names = self._names(deployment.name, deployment.id)
        image = rules.image(self.settings, region)
        self._preflight(session, region, names["endpoint"])
        with aws.failures(DeployFailed, self._facts(region), then=lambda: (
                f"'deployer teardown {deployment.name}' removes what was created"
                if deployment.resources else "nothing was created")):
            self._create(repository, context, session, region, names, image)

    def _create(self, repository, context, session, region, names, image) -> None:
        from botocore.exceptions import WaiterError

        deployment = context.deployment
        sm = session.client("sagemaker")
        context.set_endpoint(endpoint=names["endpoint"], region=region, mode=self.settings.mode,
                             image=image)
        context.set_endpoint(**self._model_and_config(repository, session, region, names,
                                                      context))
        tags = self._tags(deployment)

        resource = context.record("endpoint", names["endpoint"], region=region)
        self.progress(f"  creating endpoint {names['endpoint']} on "
                      f"{self.settings.instance_count} x {self.settings.instance_type}")
        arn = sm.create_endpoint(EndpointName=names["endpoint"],
                                 EndpointConfigName=names["endpoint-config"],
                                 Tags=tags)["EndpointArn"]
        context.update(resource, arn=arn)
        if self.settings.wait:
            self.progress("  waiting for the endpoint to be InService (often 5-15 minutes)")
            try:
                self._wait_in_service(sm, names["endpoint"])
            except WaiterError as exc:
                raise self._not_in_service(sm, session, names["endpoint"], exc,
                                           deployment.name) from None
        context.created(resource)

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
        is DeployFailed with the one line (the bucket check before any create: exit 2)."""
        from . import aws

        session, region = self._session_region()
        deployment = context.deployment
        endpoint = deployment.endpoint.get("endpoint", deployment.name)
        recorded = deployment.endpoint.get("region")
        if recorded and recorded != region:
            raise UsageError(f"endpoint {endpoint} is in {recorded}: an update cannot move it to "
                             f"{region}", hint=f"pass -o region={recorded}, or tear it down "
                                               "and deploy again")
        facts = self._facts(region)
        with aws.failures(DeployFailed, facts, then=(
                f"fix the cause and run the update again ('deployer teardown "
                f"{deployment.name}' removes everything)")):
            self._update(repository, context, session, region, endpoint, facts)

    def _update(self, repository, context, session, region, endpoint, facts) -> None:
        from botocore.exceptions import ClientError, WaiterError

        from . import aws

        deployment = context.deployment
        teardown = f"run 'deployer teardown {deployment.name}' and deploy again"
        sm = session.client("sagemaker")
        try:
            described = sm.describe_endpoint(EndpointName=endpoint)
        except ClientError as exc:
            if aws.not_found(exc):
                raise DeployFailed(f"endpoint {endpoint} no longer exists in {region}",
                                   hint=teardown) from None
            raise
        with aws.failures(UsageError, facts):
            aws.check_bucket(session.client("s3"), self.settings.bucket, region)
        current = described.get("EndpointConfigName", "?")
        if described.get("EndpointStatus") != "InService":
            raise DeployFailed(
                f"endpoint {endpoint} is {described.get('EndpointStatus')}; only an InService "
                "endpoint can be updated", hint="retry once it is InService, or " + teardown)

        # everything but the endpoint is replaced: leftovers of a failed or unwaited update too
        previous = [r for r in deployment.resources if r.status != "deleted"
                    and r.kind in ("endpoint-config", "model", "s3-artifacts")]
        revision = sum(r.kind == "model" for r in deployment.resources)
        names = self._names(deployment.name, deployment.id, revision)
        details = self._model_and_config(repository, session, region, names, context)
        new_config = names["endpoint-config"]

        self.progress(f"  updating endpoint {endpoint}: {current} → {new_config} (blue/green: "
                      "the current version serves until the new one is InService)")
        try:
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=new_config)
        except ClientError as exc:
            line, hint = aws.explain(exc, facts)
            raise DeployFailed(f"{line}; {current} still serves", hint="; ".join(filter(None, (
                hint, f"fix the cause and run the update again ('deployer teardown "
                      f"{deployment.name}' removes everything)")))) from None
        if not self.settings.wait:
            self.progress(f"  not waiting (-o wait=false): {current} and its model stay until "
                          "the next update or teardown")
            context.set_endpoint(**details)
            return
        self.progress("  waiting for the endpoint to be InService on the new config "
                      "(often 5-15 minutes)")
        serving = None
        try:
            self._wait_in_service(sm, endpoint)
            serving = sm.describe_endpoint(EndpointName=endpoint).get("EndpointConfigName")
        except WaiterError:
            pass
        if serving != new_config:
            # Failed, or rolled back to the previous config (InService with a FailureReason)
            reason, tail = aws.failure_parts(sm, session.client("logs"), endpoint)
            raise DeployFailed(
                f"update of endpoint {endpoint} to {new_config} failed ({reason}); {current} "
                "and its model were left in place",
                hint="fix the cause and run the update again",
                details=(f"last log lines of /aws/sagemaker/Endpoints/{endpoint}:\n{tail}"
                         if tail else None))
        context.set_endpoint(**details)

        new_artifacts = details["artifacts"]
        for kind in ("endpoint-config", "model", "s3-artifacts"):
            for resource in (r for r in previous if r.kind == kind):
                if kind == "s3-artifacts" and (resource.id == new_artifacts
                                               or self.settings.keep_artifacts):
                    continue  # still what the new model reads, or kept: teardown decides
                try:
                    self.delete(resource, deployment)
                except TeardownIncomplete as exc:
                    self.progress(f"  warning: {exc}; teardown will retry")
                    continue
                context.deleted(resource)
                self.progress(f"  removed previous {kind} {resource.id}")

    def client(self, deployment):
        from deployer.repository import Repository

        from . import aws
        from .invoke import SageMakerClient

        endpoint = deployment.endpoint
        repository = Repository.load(deployment.repository)
        with aws.failures(DeployFailed, self._facts(endpoint["region"])):
            return SageMakerClient(aws.session(endpoint["region"]), endpoint["endpoint"],
                                   repository, endpoint.get("mode") == "multi", self.progress)

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
            return self._delete(aws.session(region), resource)

    def _delete(self, session, resource) -> bool:
        from botocore.exceptions import WaiterError

        from . import aws

        if resource.kind == "s3-artifacts":  # a bucket that is itself gone holds nothing
            return aws.unless_gone(lambda: aws.delete_keys(
                session.client("s3"), resource.data["bucket"],
                resource.data.get("keys", [])) > 0)
        sm = session.client("sagemaker")
        call, key = self._sm_call(sm, "delete", resource.kind)
        if not aws.unless_gone(lambda: call(**{key: resource.id}) or True):
            return False
        if resource.kind == "endpoint":
            self.progress(f"  waiting for endpoint {resource.id} to be deleted")
            try:
                sm.get_waiter("endpoint_deleted").wait(
                    EndpointName=resource.id, WaiterConfig={"Delay": 15, "MaxAttempts": 80})
            except WaiterError as exc:
                raise TeardownIncomplete(
                    f"endpoint {resource.id} is not deleted yet: {aws.waiter_reason(exc)}",
                    hint="it may still be Deleting; run the teardown again in a few minutes") \
                    from None
        return True

    def exists(self, resource, deployment) -> bool:
        from . import aws

        region = self._region(resource, deployment)
        with aws.failures(TeardownIncomplete, self._facts(region)):
            session = aws.session(region)
            if resource.kind == "s3-artifacts":
                return aws.unless_gone(lambda: aws.any_key(
                    session.client("s3"), resource.data["bucket"],
                    resource.data.get("keys", [])))
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
        return [(self.settings.instance_type, self.settings.instance_count)]

    def logs(self, deployment, lines=100) -> str:
        from . import aws

        endpoint = deployment.endpoint
        if "endpoint" not in endpoint:
            return ""
        return aws.log_tail(aws.session(endpoint["region"]).client("logs"),
                            endpoint["endpoint"], lines)


class SageMakerTwin(Rehearsal, SageMakerTarget):
    """The rehearsal: the same artefacts and container behaviour, served on this machine."""

    name = "sagemaker-twin"
    description = ("rehearses a sagemaker deploy locally: its exact artefacts, served like "
                   "SageMaker's Triton container by the embedded tritonserver")
    def validate(self, repository) -> None:
        # the repository and container rules only: role, bucket, region and credentials are
        # the cloud's, and the rehearsal must run without them
        from deployer import runtime

        from . import rules

        self._check_repository(repository)
        rules.multi_gpu(self.settings, self.settings.region or "us-east-1", self.progress)
        runtime.check_backends(repository, hint="it cannot be rehearsed here; set "
                                                "DEPLOYER_TRITONSERVER to a server that has it")

    def plan(self, repository, name):
        from . import artefacts

        layout, items = self._layout(repository)
        digest = artefacts.listing_digest(items, layout)
        return [PlannedResource("artefacts", f"<state>/work/{name}/sagemaker", {
                    "layout": layout, "digest": digest,
                    "objects": [a.name for a in items] if layout != "uncompressed" else
                    [rel for rel, _ in items[0].members]}),
                PlannedResource("process", "tritonserver", {
                    "flags": "--allow-sagemaker=true --model-control-mode=explicit (the serve "
                             "script's)", "environment": self._container_env(repository)})]

    def deploy(self, repository, context) -> None:
        self._serve(repository, context, "sagemaker", context.deployment.id)

    def update(self, repository, context) -> None:
        """Blue/green, like the cloud: the new artefacts in a new folder, a new server (new
        ports, tag ``<id>-rN``) up and every archive loaded, then the endpoint switches and the
        previous server and folder go. If the new one fails it is stopped and the previous one
        keeps serving (its folder stays recorded, with its log, until teardown)."""
        deployment = context.deployment
        previous = [r for r in deployment.resources if r.status != "deleted"]
        revision = sum(r.kind == "process" for r in deployment.resources)
        known = len(deployment.resources)
        try:
            self._serve(repository, context, f"sagemaker-r{revision}",
                        f"{deployment.id}-r{revision}")
        except Exception:
            for resource in deployment.resources[known:]:
                if resource.kind == "process" and resource.status != "deleted":
                    self.delete(resource, deployment)
                    context.deleted(resource)
            raise
        for kind in ("process", "artefacts"):
            for resource in (r for r in previous if r.kind == kind):
                self.delete(resource, deployment)
                context.deleted(resource)

    def _serve(self, repository, context, folder: str, tag: str) -> None:
        import shutil

        from deployer import runtime

        from . import artefacts, container

        layout, items = self._layout(repository)
        root = Path(context.work_dir) / folder
        resource = context.record("artefacts", str(root))
        digest = artefacts.listing_digest(items, layout)
        store = root / "s3" / digest  # what the cloud target would upload
        store.mkdir(parents=True, exist_ok=True)
        for artefact in items:
            if layout == "uncompressed":
                for rel, path in artefact.members:
                    (store / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, store / rel)
            else:
                with open(store / artefact.name, "wb") as sink:
                    artefacts.write_tar_gz(artefact, sink)
        env = self._container_env(repository)
        multi = layout == "multi"
        if multi:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
            repo_dir = root / "tmp-sagemaker"  # the serve script's empty /tmp/sagemaker
            repo_dir.mkdir(parents=True, exist_ok=True)
        else:
            repo_dir = root / "opt-ml-model"   # /opt/ml/model
            shutil.rmtree(repo_dir, ignore_errors=True)
            if layout == "uncompressed":
                shutil.copytree(store, repo_dir)
            else:
                artefacts.unpack(store / "model.tar.gz", repo_dir)
        context.created(resource, digest=digest, layout=layout)

        args = container.serve_args(repo_dir, env, multi)
        server = runtime.find_server(None, self.progress, create=True)
        log_path = root / "tritonserver.log"
        resource = context.record("process", "tritonserver", tag=tag, log=str(log_path))
        info = container.start(server, args, env, log_path, tag,
                               float(self.settings.startup_timeout), self.progress)
        context.update(resource, id=str(info["pid"]), **info)
        if multi:
            for artefact in items:
                folder = container.mme_folder(root / "opt-ml-models", artefact.name)
                artefacts.unpack(store / artefact.name, folder)
                self.progress(f"  loading {artefact.name} (POST /models)")
                try:
                    container.load(info["sagemaker_port"], artefact.name, folder)
                except DeployFailed as exc:
                    from deployer.server import tail

                    raise DeployFailed(f"{exc}; last log lines:\n{tail(log_path)}") from None
        # the endpoint switches to this server only once it serves every archive
        context.set_endpoint(mode=self.settings.mode, sagemaker_port=info["sagemaker_port"],
                             http_port=info["http_port"],
                             url=f"http://127.0.0.1:{info['sagemaker_port']}")
        context.created(resource)

    def client(self, deployment):
        from deployer.repository import Repository

        from .invoke import TwinClient

        return TwinClient(deployment.endpoint, Repository.load(deployment.repository))

    def delete(self, resource, deployment) -> bool:
        import shutil

        from deployer import server as proc

        if resource.kind == "process":
            return proc.stop(resource.data.get("tag", deployment.id))
        root = Path(resource.id)
        existed = root.exists()
        if self.settings.keep_artifacts:
            for child in ("opt-ml-model", "opt-ml-models", "tmp-sagemaker"):
                shutil.rmtree(root / child, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
        return existed

    def exists(self, resource, deployment) -> bool:
        from deployer import server as proc

        if resource.kind == "process":
            return bool(proc.tagged(resource.data.get("tag", deployment.id)))
        root = Path(resource.id)
        return (root / "opt-ml-model").exists() or (root / "opt-ml-models").exists() or (
            root.exists() and not self.settings.keep_artifacts)

    def recover(self, name, deployment_id):
        """The servers tagged with the deployment's id (an update's carry ``<id>-rN``); never
        the cloud's resources, which the twin does not create."""
        from deployer.server import all_tagged
        from deployer.state import Resource

        if not deployment_id:
            return []
        return [Resource("process", " ".join(map(str, pids)), "created", {"tag": tag})
                for tag, pids in sorted(all_tagged().items())
                if tag == deployment_id or tag.startswith(deployment_id + "-")]

    def logs(self, deployment, lines=100) -> str:
        from deployer.server import recorded_log

        return recorded_log(deployment, lines)


@hookimpl
def deployer_register_targets():
    return [SageMakerTarget, SageMakerTwin]
