"""wrk, the reference the load benchmarks measure ours against (Debian package ``wrk``).

:func:`run` POSTs one body with fixed headers at a fixed number of connections for a time and
returns its figures: ``throughput_rps``, ``p50``/``p90``/``p99`` (ms), ``errors`` (answers
other than 2xx/3xx plus socket errors) and ``requests``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "{method}"
wrk.body = f:read("*a")
f:close()
{headers}
"""

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, body: bytes, headers: Mapping[str, str], connections: int, seconds: float,
        threads: int, *, method: str = "POST", prefix: Sequence[str] = ()) -> dict[str, float]:
    """wrk's figures for ``connections`` keep-alive connections over ``threads`` threads for
    ``seconds`` (whole seconds, at least 1). ``prefix`` runs wrk under another command (e.g.
    ``ip netns exec NAME``). Raises RuntimeError with wrk's own message when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(body)
        script = Path(tmp) / "request.lua"
        script.write_text(LUA.format(body=body_path, method=method, headers="\n".join(
            f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
        done = subprocess.run([*prefix, "wrk", f"-t{max(1, min(threads, connections))}",
                               f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                               "-s", str(script), url], capture_output=True, text=True)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done.returncode or not rate:
        raise RuntimeError(f"wrk failed: {(done.stderr or out).strip()[-300:]}")
    figures = {"throughput_rps": float(rate.group(1))}
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        figures[f"p{pct}"] = float(value) * UNITS[unit]
    figures["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    figures["errors"] = (int(status.group(1)) if status else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0)
    return figures
