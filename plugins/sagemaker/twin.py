"""Target ``sagemaker-twin``: a SageMaker deploy rehearsed on this machine.

It builds the very artefacts ``sagemaker`` uploads (the builders of spec.py), writes them into
a local folder as the bucket would hold them, unpacks them as the container does, and runs the
embedded ``tritonserver`` with the flags and environment of SageMaker's Triton ``serve`` script
(container.py). A model whose backend the embedded server lacks (ONNX, TorchScript) runs from
the shim's staged copy of the unpacked artefact (:mod:`deployer.shim`); the stored artefact stays
the one the cloud target uploads. It needs neither boto3 nor AWS; ``deployer rehearse REPO
--target sagemaker`` runs it with the cloud target's options.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deployer import pyimports, triton
from deployer.errors import DeployFailed
from deployer.target import Fleet, PlannedResource, Target

from . import spec

#: the folders the container's file system plays in a twin's work folder
_MODEL_DIR, _MME_DIR, _MME_REPOSITORY = "opt-ml-model", "opt-ml-models", "tmp-sagemaker"
#: the shim's staged copy of the unpacked artefact (single), or of an unpacked archive (next to
#: it, multi): what the embedded server is pointed at when a model needs ONNX or TorchScript
_SERVED = "served"


class SageMakerTwin(Target):
    """The rehearsal: the same artefacts and container behaviour, served on this machine."""

    name = "sagemaker-twin"
    description = ("rehearses a sagemaker deploy locally: its exact artefacts, served like "
                   "SageMaker's Triton container by the embedded tritonserver")
    options = spec.OPTIONS
    hardware = "sagemaker"

    @classmethod
    def choose_hardware(cls, gpu, settings):
        return spec.choose_hardware(gpu, settings)
    runs_here = True

    def validate(self, repository) -> None:
        # the repository and container rules only: role, bucket, region and credentials are
        # the cloud's, and the rehearsal must run without them
        from . import rules

        spec.check_repository(self.settings, repository)
        rules.scaling(self.settings)  # refused here as the cloud refuses it
        rules.multi_gpu(self.settings, self.settings.region or "us-east-1", self.progress)
        rules.sequences(self.settings, repository, self.progress)
        rules.python_imports(self.settings, repository)
        pyimports.rehearsal_server(repository, triton.find_server(None, create=False),
                                   pyimports.Image(*rules.image_python(self.settings)))
        triton.check_backends(repository, hint="it cannot be rehearsed here; set "
                                               "DEPLOYER_TRITONSERVER to a server that has it")

    def models_served(self, repository):
        return spec.models_served(self.settings, repository)

    def plan(self, repository, name):
        layout, items = spec.layout(self.settings, repository)
        return [PlannedResource("artefacts", f"<state>/work/{name}/sagemaker", {
                    "layout": layout, "digest": spec.digest(layout, items),
                    "objects": [key for key, _ in spec.objects(layout, items)]}),
                PlannedResource("process", "tritonserver", {
                    "flags": "--allow-sagemaker=true --model-control-mode=explicit (the serve "
                             "script's)",
                    "environment": spec.container_env(self.settings, repository)})]

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
            self._remove(context, [r for r in deployment.resources[known:]
                                   if r.kind == "process" and r.status != "deleted"])
            raise
        self._remove(context, [r for kind in ("process", "artefacts")
                               for r in previous if r.kind == kind])

    def _remove(self, context, resources) -> None:
        for resource in resources:
            self.delete(resource, context.deployment)
            context.deleted(resource)

    # -- the steps of a deploy: store, unpack, start, load ------------------------------------
    def _serve(self, repository, context, folder: str, tag: str) -> None:
        from . import container, rules

        layout, items = spec.layout(self.settings, repository)
        root = Path(context.work_dir) / folder
        resource = context.record("artefacts", str(root))
        store = self._store(root, layout, items)
        multi = layout == "multi"
        repo_dir = self._container_files(root, store, layout)
        context.created(resource, digest=store.name, layout=layout)

        env = spec.container_env(self.settings, repository)
        if multi:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        args = container.serve_args(repo_dir, env, multi)  # the serve script's checks
        image = pyimports.Image(*rules.image_python(self.settings))
        server = pyimports.rehearsal_server(
            repository, triton.find_server(None, self.progress, create=True), image,
            self.progress)
        served: dict[str, str] = {}
        if not multi:
            staged, served = container.shimmed(server, repo_dir, root / _SERVED, self.progress)
            args = container.pointed_at(args, staged)
            loaded = repository.dependencies(env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"])
            served = {m: how for m, how in served.items() if m in loaded}
        log_path = root / "tritonserver.log"
        # the image's Python packages only, for every model folder under root (multi too)
        guard = pyimports.guard(server, [root], image, root, self.progress)
        resource = context.record("process", "tritonserver", tag=tag, log=str(log_path))
        info = container.start(server, args, {**env, **guard}, log_path, tag,
                               float(self.settings.startup_timeout), self.progress)
        context.update(resource, id=str(info["pid"]), **info)
        if multi:
            served = self._load_archives(server, root, store, items, info["sagemaker_port"],
                                         log_path)
        # the endpoint switches to this server only once it serves every archive
        context.set_endpoint(mode=self.settings.mode, sagemaker_port=info["sagemaker_port"],
                             http_port=info["http_port"],
                             url=f"http://127.0.0.1:{info['sagemaker_port']}",
                             metrics=f"http://127.0.0.1:{info['metrics_port']}/metrics",
                             served_by=served)
        context.created(resource)

    @staticmethod
    def _store(root: Path, layout: str, items) -> Path:
        """Write the artefacts as the cloud target uploads them: ``<root>/s3/<digest>/``."""
        from . import artefacts

        store = root / "s3" / spec.digest(layout, items)
        store.mkdir(parents=True, exist_ok=True)
        for key, item in spec.objects(layout, items):
            (store / key).parent.mkdir(parents=True, exist_ok=True)
            if layout == "uncompressed":
                shutil.copyfile(item, store / key)
            else:
                with open(store / key, "wb") as sink:
                    artefacts.write_tar_gz(item, sink)
        return store

    @staticmethod
    def _container_files(root: Path, store: Path, layout: str) -> Path:
        """The repository the serve script starts on: the unpacked ``/opt/ml/model``, or the
        empty ``/tmp/sagemaker`` of a multi-model endpoint."""
        from . import artefacts

        if layout == "multi":
            repo_dir = root / _MME_REPOSITORY
            repo_dir.mkdir(parents=True, exist_ok=True)
            return repo_dir
        repo_dir = root / _MODEL_DIR
        shutil.rmtree(repo_dir, ignore_errors=True)
        if layout == "uncompressed":
            shutil.copytree(store, repo_dir)
        else:
            artefacts.unpack(store / "model.tar.gz", repo_dir)
        return repo_dir

    def _load_archives(self, server, root: Path, store: Path, items, port: int,
                       log_path: Path) -> dict[str, str]:
        """What SageMaker's agent does on first invocation of each TargetModel; each unpacked
        archive that needs the shim is loaded from its staged copy, a sibling folder. Returns
        how the shimmed models of every archive are served."""
        from . import artefacts, container

        served: dict[str, str] = {}
        for artefact in items:
            folder = container.mme_folder(root / _MME_DIR, artefact.name)
            artefacts.unpack(store / artefact.name, folder)
            staged, how = container.shimmed(server, folder, folder.parent / _SERVED,
                                            self.progress)
            served.update(how)
            self.progress(f"  loading {artefact.name} (POST /models)")
            try:
                container.load(port, artefact.name, staged)
            except DeployFailed as exc:
                raise DeployFailed(f"{exc}; last log lines:\n{triton.tail(log_path)}") \
                    from None
        return served

    # -- the rest of the contract ---------------------------------------------------------------
    def client(self, deployment):
        from deployer.repository import Repository

        from .invoke import TwinClient

        return TwinClient(deployment.endpoint, Repository.load(deployment.repository))

    def delete(self, resource, deployment) -> bool:
        if resource.kind == "process":
            return triton.stop(resource.data.get("tag", deployment.id))
        root = Path(resource.id)
        existed = root.exists()
        if self.settings.keep_artifacts:
            for child in (_MODEL_DIR, _MME_DIR, _MME_REPOSITORY, _SERVED):
                shutil.rmtree(root / child, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
        return existed

    def exists(self, resource, deployment) -> bool:
        if resource.kind == "process":
            return bool(triton.tagged(resource.data.get("tag", deployment.id)))
        root = Path(resource.id)
        return any((root / child).exists() for child in (_MODEL_DIR, _MME_DIR, _SERVED)) or (
            root.exists() and not self.settings.keep_artifacts)

    def recover(self, name, deployment_id):
        """The servers tagged with the deployment's id (an update's carry ``<id>-rN``); never
        the cloud's resources, which the twin does not create."""
        from deployer.state import Resource

        if not deployment_id:
            return []
        return [Resource("process", " ".join(map(str, pids)), "created", {"tag": tag})
                for tag, pids in sorted(triton.all_tagged().items())
                if tag == deployment_id or tag.startswith(deployment_id + "-")]

    def logs(self, deployment, lines=100) -> str:
        return triton.recorded_log(deployment, lines)

    def fleet(self, deployment):
        """The range and rule the cloud would get, from the recorded options; one instance
        desired and serving, since the twin runs one and does not scale."""
        from . import autoscaling, rules

        fleet = rules.scaling(self.settings)
        note = "(recorded; the twin runs one instance and does not scale)"
        if fleet is not None and fleet.scales:  # scales: a target is set
            return Fleet(fleet.minimum, fleet.maximum, 1, 1,
                         f"{autoscaling.rule(fleet.target_requests_per_minute)} {note}")
        count = rules.initial_count(self.settings)
        return Fleet(count, count, 1, 1, f"fixed {count} instances {note}" if count > 1
                     else "")
