"""Plain-text rendering of the API's records for people (``--json`` is for machines)."""

from __future__ import annotations

from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def test_report(report: dict[str, Any]) -> str:
    rows = [["(server)", "ready", _mark(report["ready"]["passed"]), report["ready"]["message"]]]
    for model in report["models"]:
        for check in model["checks"]:
            rows.append([model["model"], check["name"], _mark(check["passed"]),
                         check["message"] or f"{check['seconds'] * 1000:.0f} ms"])
    text = table(["model", "check", "result", "detail"], rows)
    text += "".join(f"\n{model['model']}: served by {model['served']}"
                    for model in report["models"] if model.get("served"))
    for load in report["load"]:
        lat = load["latency_ms"]
        text += (f"\nload on {load['model']}: {load['requests']} requests, concurrency "
                 f"{load['concurrency']}: {load['throughput_rps']} req/s, latency ms p50 "
                 f"{lat['p50']} p90 {lat['p90']} p99 {lat['p99']}, errors "
                 f"{sum(load['errors'].values())}"
                 + (f" {load['errors']}" if load["errors"] else ""))
    return text + f"\n{'PASSED' if report['passed'] else 'FAILED'}: {report['name']} " \
                  f"({report['target']})"


def _mark(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def teardown_report(report: dict[str, Any]) -> str:
    if not report["found"]:
        return f"nothing to tear down: no deployment named {report['name']!r}"
    parts = [f"removed {r['kind']} {r['id']}" for r in report["removed"]]
    parts += [f"already gone: {r['kind']} {r['id']}" for r in report["already_gone"]]
    parts += [f"NOT removed: {r['kind']} {r['id']} ({r['error']})"
              for r in report.get("failed", [])]
    return f"torn down {report['name']} ({report['target']}): " + (
        "; ".join(parts) or "nothing had been created")
