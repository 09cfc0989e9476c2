"""Plain-text rendering of the API's records for people (``--json`` is for machines)."""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """At a terminal (stdout a TTY, TERM not "dumb"), a table drawn with rich to fit its width
    (long cells wrap); else plain columns two spaces apart under a line of dashes, one row per
    line, for scripts and logs."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    if at_terminal(sys.stdout):
        from .terminal import table as drawn

        return drawn(cells[0], cells[1:])
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def at_terminal(stream) -> bool:
    """``stream`` is a terminal to draw on (and TERM does not say it cannot draw)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


SPLIT_HEADERS = ["target", "concurrency", "client mean ms", "outside server ms", "queue ms",
                 "compute ms", "other in server ms", "server ms", "server share", "batch size",
                 "requests"]


def load_quality(load: Mapping[str, Any]) -> str:
    """How far to trust a load's figures: the windows' variation, and for a fixed rate what
    left as planned."""
    cv = load.get("window_cv") or {}
    steady = "steady" if load.get("stable") else "NOT steady"
    text = (f"{load.get('windows', '?')} windows, {steady}; variation between windows: "
            f"throughput {cv.get('throughput', 0):.1%}, p50 {cv.get('p50', 0):.1%}")
    if load.get("rate"):
        sent = load.get("sent_rps")
        text += (f"; sent {sent if sent is not None else '?'}/s, {load.get('dropped', 0)} "
                 f"dropped (every slot busy), {load.get('late', 0)} sent late")
    return text


def server_time_table(levels: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Where the time went, one row per (target, load level) that has Triton's figures; a line
    per level without them, saying why."""
    rows, notes = [], []
    for target, level in levels:
        split = level.get("server_time")
        if split is None:
            if level.get("server_time_note"):
                notes.append(f"{target} at concurrency {level['concurrency']}: no server "
                              f"split: {level['server_time_note']}")
            continue
        share = split["server_share"]
        rows.append([target, level["concurrency"], split["client_mean_ms"],
                     split["outside_server_ms"], split["queue_ms"], split["compute_ms"],
                     split["server_other_ms"], split["server_ms"],
                     None if share is None else f"{share:.0%}", split["batch_size"],
                     split["requests"]])
    return "\n".join(([table(SPLIT_HEADERS, rows)] if rows else []) + notes)


def test_report(report: dict[str, Any]) -> str:
    versioned = any(model.get("version") for model in report["models"])
    rows = [["(server)", *([""] if versioned else []), "ready",
             _mark(report["ready"]["passed"]), report["ready"]["message"]]]
    for model in report["models"]:
        for check in model["checks"]:
            detail = check["message"] or f"{check['seconds'] * 1000:.0f} ms"
            if check["name"] == "infer" and model.get("steps", 1) > 1 and check["passed"]:
                detail += f" ({model['steps']} steps, one sequence)"
            if check["name"] == "stream" and check["passed"]:
                detail += (f" ({model['responses']} responses, the first after "
                           f"{model['first_response_ms']:.0f} ms)")
            rows.append([model["model"], *([model.get("version", "")] if versioned else []),
                         check["name"], _mark(check["passed"], check.get("status")), detail])
    text = table(["model", *(["version"] if versioned else []), "check", "result", "detail"],
                 rows)
    text += "".join(f"\n{model['model']}: served by {model['served']}"
                    for model in report["models"] if model.get("served"))
    for load in report["load"]:
        lat = load["latency_ms"]
        unit = (f"sequences of {len(load['latency_by_step'])} steps"
                if load.get("latency_by_step") else "streamed requests" if load.get("stream")
                else "requests")
        shape = (f"at {load['rate']:g}/s offered (at most {load['concurrency']} in flight)"
                 if load.get("rate") else f"concurrency {load['concurrency']}")
        text += (f"\nload on {load['model']}: {load['requests']} {unit}, {shape}: "
                 f"{load['throughput_rps']}/s, latency ms p50 "
                 f"{lat['p50']} p90 {lat['p90']} p99 {lat['p99']}, errors "
                 f"{sum(load['errors'].values())}"
                 + (f" {load['errors']}" if load["errors"] else ""))
        text += "\n  " + load_quality(load)
        text += "".join(f"\n  step {step}: p50 {lat['p50']} p99 {lat['p99']} mean {lat['mean']}"
                        for step, lat in load.get("latency_by_step", {}).items())
        split = load.get("server_time")
        if split:
            each = "sequence" if load.get("latency_by_step") else "request"
            text += (f"\n  in the server (Triton's counters), ms per {each}: queue "
                     f"{split['queue_ms']}, compute input {split['compute_input_ms']} infer "
                     f"{split['compute_infer_ms']} output {split['compute_output_ms']}; server "
                     f"{split['server_ms']} of the client's {split['client_mean_ms']} "
                     f"({split['server_share']:.0%}), outside the server "
                     f"{split['outside_server_ms']}; batch size {split['batch_size']}")
        elif load.get("server_time_note"):
            text += f"\n  no server split: {load['server_time_note']}"
        stream = load.get("stream")
        if stream:
            first, between = stream["first_ms"], stream["between_ms"]
            text += (f"\n  streams: {stream['responses']} responses, "
                     f"{stream['responses_per_s']} responses/s; first response ms p50 "
                     f"{first['p50']} p99 {first['p99']}; between responses ms p50 "
                     f"{between['p50']} p99 {between['p99']}")
    if report.get("cloud_time"):
        text += "\n" + cloud_line(report["cloud_time"])
    return text + f"\n{'PASSED' if report['passed'] else 'FAILED'}: {report['name']} " \
                  f"({report['target']})"


def _mark(passed: bool, status: str | None = None) -> str:
    """ok, FAIL, or skipped (a check this target cannot run; the detail says why)."""
    return "skipped" if status == "skipped" else "ok" if passed else "FAIL"


def teardown_report(report: dict[str, Any]) -> str:
    if not report["found"]:
        return f"nothing to tear down: no deployment named {report['name']!r}"
    parts = [f"removed {r['kind']} {r['id']}" for r in report["removed"]]
    parts += [f"already gone: {r['kind']} {r['id']}" for r in report["already_gone"]]
    parts += [f"NOT removed: {r['kind']} {r['id']} ({r['error']})"
              for r in report.get("failed", [])]
    return f"torn down {report['name']} ({report['target']}): " + (
        "; ".join(parts) or "nothing had been created")


def cloud_line(cloud: dict[str, Any]) -> str:
    """``the cloud's metrics: model_latency 3.1 ms, ...; outside the endpoint 9.2 ms of the
    client's 14.4 ms (SOURCE)``, or what is missing."""
    figures = [f"{key[:-3]} {cloud[key]} ms" for key in cloud["parts"]]
    if not figures:
        return f"the cloud's metrics: none ({cloud['note'] or 'none published'})"
    outside = (f"; outside the endpoint {cloud['outside_endpoint_ms']} ms of the client's "
               f"{cloud['client_mean_ms']} ms" if cloud["outside_endpoint_ms"] is not None
               else "")
    note = f"; {cloud['note']}" if cloud["note"] else ""
    return f"the cloud's metrics: {', '.join(figures)}{outside}{note} ({cloud['source']})"
