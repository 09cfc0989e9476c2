"""Target ``local``: the repository served by a ``tritonserver`` process on this machine.

The server runs detached, like a container, until teardown. It is the embedded default: the
managed runtime (``deployer server info``) is created on first use.
"""

from __future__ import annotations

from pathlib import Path

from deployer import hookimpl
from deployer.errors import ValidationError
from deployer.target import Option, PlannedResource, Target

#: targets whose Triton image carries the backends the embedded server lacks
ELSEWHERE = "docker (NVIDIA's image), sagemaker or azure"


class LocalTarget(Target):
    name = "local"
    description = "an embedded tritonserver process on this machine (the default)"
    options = (
        Option("server", str, None, "path of a tritonserver to run (default: $DEPLOYER_"
               "TRITONSERVER, then tritonserver on PATH, then the managed runtime)"),
        Option("host", str, "127.0.0.1", "address the server listens on"),
        Option("http_port", int, 0, "HTTP port (0 = a free one)"),
        Option("grpc_port", int, 0, "gRPC port (0 = a free one)"),
        Option("metrics_port", int, 0, "Prometheus metrics port (0 = a free one)"),
        Option("startup_timeout", float, 120.0, "seconds to wait for the server to be ready"),
        Option("stop_timeout", float, 10.0, "seconds between SIGTERM and SIGKILL on teardown"),
        Option("args", list, [], "extra tritonserver arguments, comma-separated"),
    )

    def validate(self, repository) -> None:
        from deployer import triton

        triton.check_backends(repository, self.settings.server,
                              hint=f"deploy it with --target {ELSEWHERE}, or name a server "
                                   "that has it with -o server=PATH")
        for option in ("http_port", "grpc_port", "metrics_port"):
            port = self.settings[option]
            if port and triton.port_in_use(port, self.settings.host):
                raise ValidationError(f"port {port} ({option}) is already in use",
                                      hint=f"pass another -o {option}=PORT or 0 for a free one")

    def plan(self, repository, name):
        from deployer import shim, triton

        details = {"repository": str(repository.path), "host": self.settings.host,
                   "ports": {k: self.settings[k] or "free" for k in
                             ("http_port", "grpc_port", "metrics_port")}}
        server = triton.find_server(self.settings.server, create=False)
        models = shim.shimmed(repository, (server.backends() if server else None)
                              or {"python", "ensemble"})
        if models:
            details["through the Python backend (a staged copy)"] = {
                m.name: shim.FRAMEWORKS[m.backend].requirement for m in models}
        return [PlannedResource("process", "tritonserver", details)]

    def deploy(self, repository, context) -> None:
        self._start(repository, context, context.deployment.id)

    def update(self, repository, context) -> None:
        """Blue/green: a new server on new ports, ready, then the old one stops. With a fixed
        port the old server has to stop first (a short outage)."""
        import secrets

        deployment = context.deployment
        old = [r for r in deployment.resources if r.kind == "process" and r.status != "deleted"]
        fixed = any(self.settings[k] for k in ("http_port", "grpc_port", "metrics_port"))
        if fixed:
            self.progress("fixed ports: the old server stops before the new one starts")
            self._retire(old, context)
        self._start(repository, context, f"{deployment.id}-{secrets.token_hex(3)}")
        self._retire([] if fixed else old, context)

    def _retire(self, resources, context) -> None:
        for resource in resources:
            self.delete(resource, context.deployment)
            context.deleted(resource)

    def _start(self, repository, context, tag: str) -> None:
        from deployer import triton

        server = triton.find_server(self.settings.server, self.progress)
        host = self.settings.host
        free = iter(triton.free_ports(3, host))
        ports = {k: self.settings[k] or next(free) for k in
                 ("http_port", "grpc_port", "metrics_port")}
        log_path = Path(context.work_dir) / f"tritonserver-{tag[-6:]}.log"
        folder, served = triton.serve_folder(
            server, repository, Path(context.work_dir) / f"served-{tag[-6:]}", self.progress)
        command = triton.tritonserver_command(server, folder, host=host, **ports,
                                              args=self.settings.args)
        resource = context.record("process", "tritonserver", tag=tag, log=str(log_path),
                                  server=str(server.executable), served=str(folder), **ports)
        pid = triton.start(command, server.process_env(), log_path, tag)
        context.update(resource, id=str(pid))
        url = f"http://{host}:{ports['http_port']}"
        seconds = triton.wait_ready(url, pid, log_path, self.settings.startup_timeout,
                                    self.progress)
        context.created(resource, ready_seconds=round(seconds, 3))
        context.set_endpoint(url=url, grpc=f"{host}:{ports['grpc_port']}",
                             metrics=f"http://{host}:{ports['metrics_port']}/metrics",
                             served_by=served)

    def client(self, deployment):
        from deployer.triton import KServeClient

        return KServeClient(deployment.endpoint["url"], grpc=deployment.endpoint.get("grpc"))

    def delete(self, resource, deployment) -> bool:
        import shutil

        from deployer import triton

        stopped = triton.stop(resource.data.get("tag", deployment.id), self.settings.stop_timeout)
        served = Path(resource.data.get("served") or "/")
        # the staged copy of a retired server (never the repository: only our served-* folder)
        if served.name.startswith("served-") and resource.data.get("log") and \
                served.parent == Path(resource.data["log"]).parent:
            shutil.rmtree(served, ignore_errors=True)
        return stopped

    def exists(self, resource, deployment) -> bool:
        from deployer import triton

        return bool(triton.tagged(resource.data.get("tag", deployment.id)))

    def recover(self, name, deployment_id):
        """Servers tagged with the deployment's id (an update's carry ``<id>-<suffix>``)."""
        from deployer.state import Resource
        from deployer.triton import all_tagged

        if not deployment_id:
            return []
        return [Resource("process", " ".join(map(str, pids)), "created", {"tag": tag})
                for tag, pids in sorted(all_tagged().items())
                if tag == deployment_id or tag.startswith(deployment_id + "-")]

    @classmethod
    def orphans(cls, known):
        from deployer.triton import all_tagged

        return [{"kind": "process", "id": " ".join(map(str, pids)), "tag": tag,
                 "remove": f"kill {' '.join(map(str, pids))}"}
                for tag, pids in sorted(all_tagged().items()) if tag not in known]

    def logs(self, deployment, lines=100) -> str:
        from deployer.triton import recorded_log

        return recorded_log(deployment, lines)


@hookimpl
def deployer_register_targets():
    return [LocalTarget]
