"""Target ``subprocess``: the repository served by a ``tritonserver`` you name, as a process.

An example of a third-party target. It uses only the public contract (:mod:`deployer.target`,
:mod:`deployer.errors`, :mod:`deployer.state`) and the helper module :mod:`deployer.triton`, and
registers itself through the ``deployer.targets`` entry point in its ``pyproject.toml``.
"""

from __future__ import annotations

from pathlib import Path

from deployer import hookimpl
from deployer.errors import ValidationError
from deployer.target import Option, PlannedResource, Target

HOST = "127.0.0.1"
PORTS = ("http_port", "grpc_port", "metrics_port")


class SubprocessTarget(Target):
    name = "subprocess"
    description = "a tritonserver you name, run as a process on this machine (example plugin)"
    options = (
        Option("server", str, None, "the tritonserver to run: a path or a name on PATH "
               "(default: what deployer.triton.find_server picks)"),
        Option("args", list, [], "extra tritonserver arguments, comma-separated"),
        Option("startup_timeout", float, 120.0, "seconds to wait for the server to be ready"),
        Option("stop_timeout", float, 10.0, "seconds between SIGTERM and SIGKILL on teardown"),
    )

    def validate(self, repository) -> None:
        from deployer import triton

        # a server that is not there, or lacks a model's backend, is one line (exit 2)
        triton.check_backends(repository, self.settings.server,
                              hint="name a tritonserver that has it with -o server=PATH")
        for arg in self.settings.args:
            if arg.startswith("--model-repository") or arg.startswith("--model-store"):
                raise ValidationError(f"-o args sets {arg.split('=')[0]}, which this target "
                                      "sets to the repository it deploys",
                                      hint="remove it from -o args")

    def plan(self, repository, name):
        from deployer import triton

        server = triton.find_server(self.settings.server, create=False)  # never creates one
        return [PlannedResource("process", "tritonserver", {
            "server": str(server.executable) if server else "the managed runtime (created "
                                                             "on first deploy)",
            "repository": str(repository.path), "host": HOST,
            "args": list(self.settings.args)})]

    def deploy(self, repository, context) -> None:
        from deployer import triton

        deployment = context.deployment
        server = triton.find_server(self.settings.server, self.progress)
        http, grpc, metrics = triton.free_ports(3, HOST)
        log_path = Path(context.work_dir) / "tritonserver.log"
        command = triton.tritonserver_command(server, repository.path, host=HOST,
                                              http_port=http, grpc_port=grpc,
                                              metrics_port=metrics, args=self.settings.args)
        # recorded before it starts: an interrupted deploy is torn down by its tag
        resource = context.record("process", "tritonserver", tag=deployment.id,
                                  log=str(log_path), server=str(server.executable),
                                  http_port=http, grpc_port=grpc, metrics_port=metrics)
        pid = triton.start(command, server.process_env(), log_path, deployment.id)
        context.update(resource, id=str(pid))
        url = f"http://{HOST}:{http}"
        seconds = triton.wait_ready(url, pid, log_path, self.settings.startup_timeout,
                                    self.progress)
        context.created(resource, ready_seconds=round(seconds, 3))
        context.set_endpoint(url=url, grpc=f"{HOST}:{grpc}",
                             metrics=f"http://{HOST}:{metrics}/metrics")

    def client(self, deployment):
        from deployer import triton

        return triton.KServeClient(deployment.endpoint["url"])

    def delete(self, resource, deployment) -> bool:
        from deployer import triton

        return triton.stop(resource.data.get("tag", deployment.id), self.settings.stop_timeout)

    def exists(self, resource, deployment) -> bool:
        from deployer import triton

        return bool(triton.tagged(resource.data.get("tag", deployment.id)))

    def recover(self, name, deployment_id):
        from deployer import triton
        from deployer.state import Resource

        pids = triton.tagged(deployment_id) if deployment_id else []
        return [Resource("process", " ".join(map(str, pids)), "created",
                         {"tag": deployment_id})] if pids else []

    def logs(self, deployment, lines=100) -> str:
        from deployer import triton

        return triton.recorded_log(deployment, lines)


@hookimpl
def deployer_register_targets():
    return [SubprocessTarget]
