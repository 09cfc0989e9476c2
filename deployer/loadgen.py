"""The load generator's engine: many requests in flight from several processes.

A client that can describe its request as plain HTTP (:class:`HttpRequest`, from
``EndpointClient.load_request``) is measured by this engine: worker processes (``python -m
deployer.loadgen``), each one event loop holding its share of the keep-alive connections, sent
the request as bytes. Closed-loop, each connection sends again when its answer arrives;
open-loop (a fixed rate), requests leave on a schedule whatever the answers do, and each
latency is measured from its intended send time. Workers return their raw latencies, so the
caller's percentiles are exact. This module imports only the standard library: a worker starts
in tens of milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping


@dataclasses.dataclass
class HttpRequest:
    """One request, sent again and again by the load generator.

    ``url`` is ``http://`` or ``https://`` host, port and path (with query). ``headers`` are
    sent as given (``Host`` and ``Content-Length`` are added). ``fresh``, when given, returns
    headers that expire (a bearer token, a request signature): it is called in the calling
    process before the load and again every ``refresh`` seconds while it runs, and what it
    returns goes to the workers over a pipe (never printed, logged or written). ``refused``,
    when given, is called after the endpoint answered 401 (the next ``fresh`` should fetch a
    new credential). An answer other than 200 is a failed request of kind ``http-STATUS``."""

    url: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fresh: Callable[[], Mapping[str, str]] | None = None
    refresh: float = 60.0
    refused: Callable[[], None] | None = None
