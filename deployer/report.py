"""The compare report as one self-contained HTML file: inline SVG charts, no network needed."""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"]
PERCENTILES = ("p50", "p90", "p95", "p99")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#6b7280;margin-bottom:16px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:16px}
figure{margin:0;border:1px solid #e5e7eb;border-radius:8px;padding:12px}
figcaption{font-weight:600;margin-bottom:6px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e5e7eb;padding:6px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.fail{color:#b91c1c;font-weight:600}.ok{color:#15803d;font-weight:600}
.note{color:#6b7280;font-size:12px}pre{background:#f3f4f6;padding:8px;overflow:auto;
font-size:12px}.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
tr.group th{text-align:left;background:#f3f4f6}
"""

# Counts the drawn marks of each chart once the browser has laid them out (tests read it).
CHECK_JS = """
document.querySelectorAll('svg[data-chart]').forEach(function (svg) {
  var drawn = 0;
  svg.querySelectorAll('.mark').forEach(function (m) {
    var b = m.getBBox(); if (b.width > 0 || b.height > 0) drawn++;
  });
  svg.setAttribute('data-marks', String(drawn));
});
document.body.setAttribute('data-rendered', 'yes');
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return _esc(value)


def _tick(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _axis(width: int, height: int, left: int, bottom: int, top_value: float, unit: str) -> str:
    parts = []
    for i in range(5):
        value = top_value * i / 4
        y = height - bottom - (height - bottom - 20) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e7eb"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#6b7280">{_tick(value)}</text>')
    parts.append(f'<text x="{left}" y="12" font-size="11" fill="#6b7280">{_esc(unit)}</text>')
    return "".join(parts)


def bar_chart(chart_id: str, groups: Sequence[str], series: Sequence[str],
              values: dict[tuple[str, str], float | None], unit: str) -> str:
    """Grouped vertical bars: one group per entry of ``groups``, one bar per series."""
    width, height, left, bottom = 520, 260, 52, 40
    top = max([v for v in values.values() if v] or [1.0]) * 1.1
    slot = (width - left - 10) / max(1, len(groups))
    bar = min(36.0, slot * 0.8 / max(1, len(series)))
    parts = [_axis(width, height, left, bottom, top, unit)]
    for g, group in enumerate(groups):
        x0 = left + g * slot + (slot - bar * len(series)) / 2
        for s, name in enumerate(series):
            value = values.get((group, name))
            if value is None:
                continue
            h = (height - bottom - 20) * value / top
            x, y = x0 + s * bar, height - bottom - h
            parts.append(f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                         f'height="{max(h, 1):.1f}" fill="{COLORS[s % len(COLORS)]}">'
                         f'<title>{_esc(group)} {_esc(name)}: {value:,.4g} {_esc(unit)}'
                         f'</title></rect>')
        parts.append(f'<text x="{left + g * slot + slot / 2:.1f}" y="{height - bottom + 16}" '
                     f'font-size="12" text-anchor="middle">{_esc(group)}</text>')
    legend = "".join(f'<span><i style="background:{COLORS[s % len(COLORS)]}"></i>{_esc(n)}'
                     f'</span>' for s, n in enumerate(series))
    return (f'<svg data-chart="{chart_id}" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img">{"".join(parts)}</svg><div class="legend">{legend}</div>')


def _level(level: dict) -> str:
    """A load level in words: ``concurrency 4``, or ``200/s`` for a fixed rate."""
    return f"{level['rate']:g}/s" if level.get("rate") else f"concurrency {level['concurrency']}"


def line_chart(chart_id: str, xs: Sequence[float], lines: dict[str, dict[float, float]],
               unit: str, axis: str = "concurrency") -> str:
    """Throughput against concurrency (or the offered rate): one polyline per target."""
    width, height, left, bottom = 520, 260, 52, 40
    top = max([v for pts in lines.values() for v in pts.values()] or [1.0]) * 1.1
    span = (width - left - 30) / max(1, len(xs) - 1)
    parts = [_axis(width, height, left, bottom, top, unit)]
    for i, x in enumerate(xs):
        parts.append(f'<text x="{left + 10 + i * span:.1f}" y="{height - bottom + 16}" '
                     f'font-size="12" text-anchor="middle">{x}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 6}" font-size="11" fill="#6b7280" '
                 f'text-anchor="middle">{_esc(axis)}</text>')
    for n, (name, points) in enumerate(lines.items()):
        color = COLORS[n % len(COLORS)]
        coords = [(left + 10 + xs.index(x) * span, height - bottom - (height - bottom - 20)
                   * v / top) for x, v in sorted(points.items())]
        if len(coords) > 1:
            parts.append('<polyline class="mark" fill="none" stroke-width="2.5" stroke="'
                         + color + '" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
                         + '"/>')
        for (x, y), (c, v) in zip(coords, sorted(points.items())):
            parts.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                         f'<title>{_esc(name)} at {_esc(axis)} {c:g}: {v:,.1f} {_esc(unit)}'
                         f'</title></circle>')
    legend = "".join(f'<span><i style="background:{COLORS[n % len(COLORS)]}"></i>{_esc(k)}'
                     f'</span>' for n, k in enumerate(lines))
    return (f'<svg data-chart="{chart_id}" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img">{"".join(parts)}</svg><div class="legend">{legend}</div>')


#: the segments of a request's time, outside in, with their colours
SEGMENTS = (("outside_server_ms", "outside the server", "#9ca3af"),
            ("queue_ms", "queue", "#d97706"),
            ("compute_ms", "compute (input, infer, output)", "#2563eb"),
            ("server_other_ms", "other in the server", "#7c3aed"))


def stacked_bars(chart_id: str, bars: Sequence[tuple[str, dict[str, Any]]],
                 segments: Sequence[tuple[str, str, str]] = SEGMENTS) -> str:
    """One horizontal bar per (label, split): its client mean cut into ``segments`` (key,
    name, colour), each as wide as its milliseconds; the batch size Triton formed, when
    known, at the bar's end."""
    width, left, row, top_pad = 520, 150, 30, 22
    height = top_pad + row * len(bars) + 26
    top = max([sum(max(0.0, split.get(k) or 0.0) for k, _, _ in segments)
               for _, split in bars]
              or [1.0]) * 1.15 or 1.0
    scale = (width - left - 60) / top
    parts = [f'<text x="{left}" y="12" font-size="11" fill="#6b7280">ms per request</text>']
    for i in range(5):
        x = left + (width - left - 60) * i / 4
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad - 4}" '
                     f'y2="{height - 22}" stroke="#e5e7eb"/><text x="{x:.1f}" '
                     f'y="{height - 8}" font-size="11" text-anchor="middle" fill="#6b7280">'
                     f'{top * i / 4:.3g}</text>')
    for n, (label, split) in enumerate(bars):
        y, x = top_pad + n * row, float(left)
        parts.append(f'<text x="{left - 6}" y="{y + row / 2 + 2:.1f}" font-size="12" '
                     f'text-anchor="end">{_esc(label)}</text>')
        for key, name, color in segments:
            value = split.get(key)
            if not value or value <= 0:
                continue
            w = value * scale
            parts.append(f'<rect class="mark" data-part="{key}" data-ms="{value}" '
                         f'x="{x:.2f}" y="{y + 4}" width="{w:.2f}" height="{row - 10}" '
                         f'fill="{color}"><title>{_esc(label)} {_esc(name)}: {value:,.4g} ms'
                         f'</title></rect>')
            x += w
        batch = split.get("batch_size")
        parts.append(f'<text x="{x + 4:.1f}" y="{y + row / 2 + 2:.1f}" font-size="11" '
                     f'fill="#374151">{"" if batch is None else f"batch {batch:g}"}</text>')
    legend = "".join(f'<span><i style="background:{color}"></i>{_esc(name)}</span>'
                     for _, name, color in segments)
    return (f'<svg data-chart="{chart_id}" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img">{"".join(parts)}</svg><div class="legend">{legend}</div>')


#: colours of a cloud's own parts, outside in
CLOUD_COLORS = ("#059669", "#2563eb", "#7c3aed", "#d97706")


def _cloud_time(targets: Sequence[dict[str, Any]]) -> str:
    """The cloud's own view of each cloud target's load: a stacked bar (outside the
    endpoint, then the cloud's parts), or what is missing."""
    found = [t for t in targets if t.get("cloud_time")]
    if not found:
        return ""
    drawn = [t for t in found if t["cloud_time"]["endpoint_ms"] is not None]
    parts: list[str] = []
    for t in drawn:
        parts += [k for k in t["cloud_time"]["parts"] if k not in parts]
    segments = [("outside_endpoint_ms", "outside the endpoint (network, HTTP)", "#9ca3af")] + [
        (key, key[:-3].replace("_", " "), CLOUD_COLORS[n % len(CLOUD_COLORS)])
        for n, key in enumerate(parts)]
    bars = stacked_bars("cloudtime", [(t["target"], t["cloud_time"]) for t in drawn],
                        segments) if drawn else ""
    figure = (f"<figure><figcaption>Mean request over the load, by the cloud's own metrics"
              f"</figcaption>{bars}</figure>" if bars else "")
    notes = "".join(f"<li>{_esc(t['target'])}: {_esc(t['cloud_time']['source'])}"
                    + (f" — {_esc(t['cloud_time']['note'])}" if t["cloud_time"]["note"] else "")
                    + "</li>" for t in found)
    return f"""<h2>The cloud's own view</h2>
{figure}
<ul>{notes}</ul>
<p class="note">Outside the endpoint = the client's mean over the load − the sum of the
cloud's parts over the same window.</p>"""


def _share(share: float | None) -> str:
    return "—" if share is None else f"{share:.0%}"


def _server_time(targets: Sequence[dict[str, Any]], levels: Sequence[int]) -> str:
    """The section on where the time goes, or "" when no level has Triton's figures."""
    split = [(t, x) for t in targets for x in t["load"] if x.get("server_time")]
    if not split:
        return ""
    bars = stacked_bars("servertime", [(f"{t['target']} {_level(x)}",
                                        x["server_time"]) for t, x in split])
    batch = bar_chart("batch", [t["target"] for t in targets],
                      list(dict.fromkeys(_level(x) for t in targets for x in t["load"])),
                      {(t["target"], _level(x)):
                       x["server_time"]["batch_size"] for t, x in split}, "requests per batch")
    rows = "".join(
        f"<tr><td>{_esc(t['target'])}</td><td>{_esc(_level(x))}</td>"
        + "".join(f"<td>{_fmt(x['server_time'][k], 3)}</td>" for k in (
            "client_mean_ms", "outside_server_ms", "queue_ms", "compute_input_ms",
            "compute_infer_ms", "compute_output_ms", "server_ms"))
        + f"<td>{_share(x['server_time']['server_share'])}</td>"
        f"<td>{_fmt(x['server_time']['batch_size'], 2)}</td></tr>" for t, x in split)
    missing = "".join(f"<li>{_esc(t['target'])} at {_esc(_level(x))}: "
                      f"{_esc(x['server_time_note'])}</li>" for t in targets for x in t["load"]
                      if not x.get("server_time") and x.get("server_time_note"))
    return f"""<h2>Where the time goes</h2>
<div class="charts">
<figure><figcaption>Mean request, by Triton's own counters (target ×concurrency)</figcaption>
{bars}</figure>
<figure><figcaption>Batch size Triton formed (inferences ÷ executions)</figcaption>{batch}
</figure></div>
<table><thead><tr><th>target</th><th>concurrency</th><th>client mean ms</th>
<th>outside the server ms</th><th>queue ms</th><th>compute input ms</th><th>infer ms</th>
<th>output ms</th><th>server ms</th><th>server share</th><th>batch size</th></tr></thead>
<tbody>{rows}</tbody></table>
<p class="note">Outside the server (network, gateway, HTTP) = the client's mean − the server's
mean request time (nv_inference_request_duration_us), over the same measured requests.</p>
{"<ul>" + missing + "</ul>" if missing else ""}"""


def render(report: dict[str, Any]) -> str:
    targets = report["targets"]
    names = [t["target"] for t in targets]
    measured = [t for t in targets if t["load"]]
    latency = bar_chart("latency", [t["target"] for t in measured], PERCENTILES,
                        {(t["target"], p): t["latency_ms"].get(p) for t in measured
                         for p in PERCENTILES}, "ms")
    rates = report.get("rates") or []
    key = "rate" if rates else "concurrency"
    throughput = line_chart("throughput", rates or report["concurrency"], {
        t["target"]: {x[key]: x["throughput_rps"] for x in t["load"]}
        for t in measured}, "requests/s", "offered requests/s" if rates else "concurrency")
    shape = (f"at each offered rate ({', '.join(f'{r:g}/s' for r in rates)}), at most "
             f"{report['concurrency'][0]} in flight" if rates else
             f"per concurrency level ({', '.join(map(str, report['concurrency']))})")
    first = f"{rates[0]:g}/s" if rates else f"concurrency {report['concurrency'][0]}"
    axis = "the offered rate" if rates else "concurrency"
    timing = bar_chart("timing", names, ("deploy", "cold start"),
                       {**{(t["target"], "deploy"): t["deploy_seconds"] for t in targets},
                        **{(t["target"], "cold start"): t["cold_start_seconds"]
                           for t in targets}}, "seconds")
    rows, group = [], False
    for t in targets:
        if any(x.get("accelerator") for x in targets) and t.get("accelerator") != group:
            group = t.get("accelerator")   # results come grouped by accelerator
            rows.append(f'<tr class="group"><th colspan="14">{_esc(group or "no accelerator")}'
                        "</th></tr>")
        lat = t["latency_ms"]
        status = ('<span class="ok">passed</span>' if t["passed"]
                  else '<span class="fail">failed</span>')
        rows.append(
            f"<tr><td>{_esc(t['target'])}"
            + (f" <small>{_esc(t['hardware'])}</small>" if t.get("hardware") else "")
            + f"</td><td>{status}</td>"
            f"<td>{_fmt(t['deploy_seconds'])}</td><td>{_fmt(t['cold_start_seconds'], 3)}</td>"
            + "".join(f"<td>{_fmt(lat.get(p), 3)}</td>" for p in PERCENTILES)
            + f"<td>{_fmt(t['throughput_rps'], 1)}</td><td>{t['errors']}</td>"
            f"<td>{t.get('throttled', 0)}</td><td>{t.get('timed_out', 0)}</td>"
            f"<td>{_fmt(t['cost_per_hour'], 4)}</td><td>{_fmt(t['cost_per_million'], 4)}</td>"
            "</tr>")
    failures = "".join(
        f"<h3>{_esc(t['target'])}: {_esc(t['error'])}</h3>"
        + (f"<details><summary>last log lines</summary><pre>{_esc(t['logs'])}</pre></details>"
           if t["logs"] else "") for t in targets if t["error"])
    costs = "".join(
        f"<li>{_esc(t['target'])}: {_esc(t['cost_note'])}"
        + "".join(f"; {_esc(i['count'])} × {_esc(i['instance_type'])} at "
                  f"{_fmt(i['usd_per_hour'], 4)} USD/h ({_esc((i['source'] or {}).get('source', 'no source'))}, "
                  f"{_esc((i['source'] or {}).get('date', ''))})" for i in t["instances"])
        + "</li>" for t in targets)
    streamed = "".join(
        f"<tr><td>{_esc(t['target'])}</td><td>{_fmt(t['stream']['first_ms']['p50'], 3)}</td>"
        f"<td>{_fmt(t['stream']['first_ms']['p99'], 3)}</td>"
        f"<td>{_fmt(t['stream']['between_ms']['p50'], 3)}</td>"
        f"<td>{_fmt(t['stream']['between_ms']['p99'], 3)}</td>"
        f"<td>{_fmt(t['stream']['responses_per_s'], 1)}</td></tr>"
        for t in targets if t.get("stream"))
    served = "".join(f"<li>{_esc(t['target'])}: <code>{_esc(model)}</code> served by "
                     f"{_esc(how)}</li>" for t in targets
                     for model, how in sorted(t.get("served_by", {}).items()))
    warned = "".join(f"<li>{_esc(t['target'])}: {_esc(w)}</li>" for t in targets
                     for w in t.get("warnings", ()))
    schedule = (f"Measured one at a time (on this machine): {', '.join(report['sequential']) or '—'}."
                f" Deployed in parallel (cloud): {', '.join(report['parallel']) or '—'}; "
                "their measurements never overlapped.")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>triton-deployer compare</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{_esc(" vs ".join(names))}</h1>
<div class="sub">Repository <code>{_esc(report['repository'])}</code>, model
<code>{_esc(report['model'])}</code>, at least {report['requests']} requests
{_esc(shape)}. Overall:
{'<span class="ok">passed</span>' if report['passed'] else '<span class="fail">failed</span>'}.
</div>
<div class="charts">
<figure><figcaption>Latency percentiles at {_esc(first)}</figcaption>
{latency}</figure>
<figure><figcaption>Throughput against {axis}</figcaption>{throughput}</figure>
<figure><figcaption>Deploy and cold-start time</figcaption>{timing}</figure>
</div>
{_server_time(targets, report["concurrency"])}
{_cloud_time(targets)}
<h2>Side by side</h2>
<table><thead><tr><th>target</th><th>result</th><th>deploy s</th><th>cold start s</th>
<th>p50 ms</th><th>p90 ms</th><th>p95 ms</th><th>p99 ms</th><th>max req/s</th>
<th>errors</th><th title="refused by the endpoint's concurrency limit">429</th>
<th title="past the endpoint's request timeout">408</th><th>USD/hour*</th><th>USD per million*</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="note">{_esc(schedule)} Cold start: from the deploy returning to the first successful
inference.</p>
{"<h2>Streams</h2><table><thead><tr><th>target</th><th>first response p50 ms</th>"
 "<th>p99 ms</th><th>between responses p50 ms</th><th>p99 ms</th><th>responses/s</th></tr>"
 "</thead><tbody>" + streamed + "</tbody></table>" if streamed else ""}
{"<h2>Warnings</h2><ul>" + warned + "</ul>" if warned else ""}
{"<h2>How models are served</h2><ul>" + served + "</ul>" if served else ""}
<h2>Cost (estimates)</h2><ul>{costs}</ul>
<p class="note">* {_esc(report['price_note'])} Cost per million inferences = cost per hour ÷
(measured maximum throughput × 3600) × 10⁶.</p>
{"<h2>Failures</h2>" + failures if failures else ""}
<script type="application/json" id="data">{_esc(json.dumps(report, default=str))}</script>
<script>{CHECK_JS}</script>
</body></html>
"""
