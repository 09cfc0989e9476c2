"""A user-space delay line: a TCP relay that holds every chunk ``--delay-ms`` in each direction.

For a kernel without netem (``tc qdisc ... netem`` answers "Specified qdisc kind is unknown"):
bench_distance.py runs it in the far network namespace, listening on the far veth address and
forwarding each connection to the server on the far side's loopback. A chunk read from either
side is written to the other ``--delay-ms`` after it arrived (so a round trip gains twice
that), in the order read; a connection's end travels the same way, behind its data. One
connection out per connection in; nothing is parsed. Prints ``ready`` once listening.

Run: python benchmarks/delayline.py --listen 10.0.0.2:9000 --to 127.0.0.1:8000 --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys

#: a connection's end, queued behind its data
END = None
#: pause reading a side while the other side has this much unwritten
HIGH_WATER = 1 << 20


class DelayLine:
    """Every chunk of every connection, both ways, in the order read: the delay is the same
    for all, so the oldest is always due first. One timer for the whole relay (for the
    oldest chunk), not one per chunk or per connection: what is due is written in one pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float):
        self.loop, self.delay = loop, delay
        self.queue: collections.deque = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def push(self, to: "Side", chunk: bytes | None) -> None:
        due = self.loop.time() + self.delay
        self.queue.append((due, to, chunk))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self.flush)

    def flush(self) -> None:
        queue = self.queue
        now = self.loop.time()
        while queue and queue[0][0] <= now:
            _, to, chunk = queue.popleft()
            to.deliver(chunk)
        self.timer = self.loop.call_at(queue[0][0], self.flush) if queue else None


class Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads goes down the line to ``peer``."""

    def __init__(self, line: DelayLine):
        self.line = line
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list = []   # delivered before this side was connected
        self.ended = False        # it has read its end: the peer's END closes it
        self.finished = False     # the peer's END went out (half-closed, or closed)
        self.sent_end = False     # our END is on the line

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        pending, self.pending = self.pending, []
        for chunk in pending:
            self.deliver(chunk)

    def data_received(self, data: bytes) -> None:
        self.line.push(self.peer, data)

    def eof_received(self) -> bool:
        self.ended = True
        self.end()
        # keep our writing half open until the peer's END arrives, unless it has
        return not self.finished

    def connection_lost(self, exc) -> None:
        self.ended = self.finished = True
        self.end()

    def end(self) -> None:
        if not self.sent_end:
            self.sent_end = True
            self.line.push(self.peer, END)

    def deliver(self, chunk: bytes | None) -> None:
        out = self.transport
        if out is None:
            self.pending.append(chunk)
        elif self.finished or out.is_closing():
            return
        elif chunk is END:
            self.finished = True
            if self.ended or not out.can_write_eof():
                out.close()
            else:
                out.write_eof()
        else:
            out.write(chunk)

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    loop = asyncio.get_running_loop()
    line = DelayLine(loop, delay)
    connecting: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    def accepted() -> Side:
        inbound, outbound = Side(line), Side(line)
        inbound.peer, outbound.peer = outbound, inbound

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: outbound, *target)
            except OSError:
                outbound.finished = outbound.ended = True
                if inbound.transport is not None:
                    inbound.transport.abort()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return inbound

    server = await loop.create_server(accepted, *listen, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    await stop
    server.close()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way")
    args = parser.parse_args()
    if args.delay_ms < 0:
        sys.exit("--delay-ms must be 0 or more")
    try:
        asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000))
    except OSError as exc:
        sys.exit(f"delay line: {exc}")


if __name__ == "__main__":
    main()
