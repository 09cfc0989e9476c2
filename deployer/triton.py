"""What every target that runs a ``tritonserver`` needs: the public helper module.

A target plugin uses this module, the contract (:mod:`deployer.target`, :mod:`deployer.errors`,
:mod:`deployer.state`, :mod:`deployer.repository`, :mod:`deployer.samples`) and nothing else of
the core. The built-in ``local`` and ``docker`` targets and the rehearsal twins are built on it.

Finding a server
    :func:`find_server` returns a :class:`Server` (``$DEPLOYER_TRITONSERVER``, ``PATH``, then
    the managed runtime); :func:`check_backends` fails validation for a model whose backend
    that server lacks; :func:`serve_folder` gives the folder to serve (the repository, or a
    staged copy where ONNX and TorchScript models run through the Python backend, see
    :mod:`deployer.shim`) and says how each such model is served.

Its command line
    :func:`tritonserver_command` builds the ``tritonserver`` arguments: repository, address,
    HTTP/gRPC/metrics ports (or the protocol disabled), extra arguments.

Running it
    :func:`start` runs a command detached with the allow-listed environment (never the
    deployer's credentials) and a deployment tag; :func:`wait_ready` waits until it answers,
    failing at once when it exits or a model cannot load (:func:`watch_start` is the same
    watch for a server that is not our process, e.g. a container); :func:`alive` says whether
    a pid runs; :func:`tagged` / :func:`all_tagged` find tagged processes, :func:`stop` stops
    them and verifies they are gone. :func:`free_ports` and :func:`port_in_use` choose ports.

Its log
    :func:`tail` reads the end of a log, :func:`failure_in` finds its failure headline,
    :func:`recorded_log` the log of the server a deployment serves from.

Talking to it
    :class:`KServeClient` speaks KServe v2 over HTTP(S) and implements the test step's
    :class:`EndpointClient` interface; requests fail with :class:`EndpointError`. A client of
    another wire format builds on :func:`post_sender` (a prebuilt POST repeated for load, one
    keep-alive connection per thread) and, for an endpoint that wants a bearer token,
    :class:`BearerAuth` over the target's :class:`Credential` (a key, or a token refreshed
    before its expiry and once after a 401).

Example, a target's ``deploy``::

    server = triton.find_server(None, self.progress)
    http, grpc, metrics = triton.free_ports(3)
    command = triton.tritonserver_command(server, repository.path, host="127.0.0.1",
                                          http_port=http, grpc_port=grpc, metrics_port=metrics)
    pid = triton.start(command, server.process_env(), log_path, tag)
    triton.wait_ready(f"http://127.0.0.1:{http}", pid, log_path, 120, self.progress)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .client import (BearerAuth, Credential, EndpointClient, EndpointError, KServeClient,
                     post_sender)
from .loadgen import HttpRequest
from .runtime import Server, check_backends, find_server, serve_folder
from .server import (TAG_ENV, LoadError, LogLines, alive, all_tagged, answers, failure_in,
                     free_ports, inherited, port_in_use, recorded_log, start, stop, tagged, tail,
                     wait_ready, watch_start)

__all__ = [
    "TAG_ENV", "BearerAuth", "Credential", "EndpointClient", "EndpointError", "HttpRequest",
    "KServeClient",
    "LoadError", "LogLines", "post_sender",
    "Server", "alive", "all_tagged", "answers", "check_backends", "failure_in", "find_server",
    "free_ports", "inherited", "port_in_use", "recorded_log", "serve_folder", "start", "stop",
    "tagged", "tail", "tritonserver_command", "wait_ready", "watch_start",
]

#: the protocols whose port :func:`tritonserver_command` sets, or disables
PROTOCOLS = ("http", "grpc", "metrics")


def tritonserver_command(server: Server | str, repository: Path | str | None = None, *,
                         host: str | None = None, http_port: int | None = None,
                         grpc_port: int | None = None, metrics_port: int | None = None,
                         args: Sequence[str] = ()) -> list[str]:
    """The command line that runs ``tritonserver``.

    Args:
        server: a :class:`Server` (its executable and backend directory are used), or the
            name of the executable (e.g. ``"tritonserver"`` inside a container).
        repository: ``--model-repository``; None leaves it to ``args``.
        host: the address every enabled protocol listens on; None: Triton's default
            (all addresses).
        http_port, grpc_port, metrics_port: the protocol's port; None disables it
            (``--allow-http=false``...).
        args: further ``tritonserver`` arguments, appended as given (they win over ours).

    Returns:
        The argument list, executable first. Never raises: the server checks the flags.
    """
    flags = [f"--model-repository={repository}"] if repository is not None else []
    for protocol, port in zip(PROTOCOLS, (http_port, grpc_port, metrics_port)):
        if port is None:
            flags.append(f"--allow-{protocol}=false")
            continue
        if host is not None:
            flags.append(f"--{protocol}-address={host}")
        flags.append(f"--{protocol}-port={port}")
    flags += list(args)
    if isinstance(server, str):
        return [server, *flags]
    return server.command(*flags)
