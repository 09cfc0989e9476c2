"""The ``deployer`` command: parse, call the API, print, map errors to exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from .errors import DeployerError, ExitCode, UsageError

RAISE_ENV = "DEPLOYER_RAISE_ERRORS"
#: what main() hands the group when the command line asks for --json (progress stays plain)
JSON = object()


class Context:
    """What every command shares: the state directory, the core, and where progress goes."""

    def __init__(self, state_dir: str | None, quiet: bool, as_json: bool = False):
        self.state_dir = state_dir
        self.quiet = quiet
        self.as_json = as_json
        self._deployer = None
        self._progress: Callable[[str], None] | None = None

    @property
    def progress(self) -> Callable[[str], None]:
        """The progress sink, made on first use: nothing with ``-q``; at a terminal (stderr a
        TTY, no ``--json``, TERM not "dumb") the live view (:class:`deployer.terminal.LiveView`);
        else :func:`plain_line` on stderr."""
        if self._progress is None:
            from .render import at_terminal

            if self.quiet:
                self._progress = _silent
            elif not self.as_json and at_terminal(sys.stderr):
                from .terminal import LiveView

                self._progress = LiveView()
            else:
                self._progress = plain_line
        return self._progress

    def close(self) -> None:
        """The command ends (also by an error): stop drawing, so the error prints below."""
        close = getattr(self._progress, "close", None)
        if close is not None:
            close()

    @property
    def deployer(self):
        if self._deployer is None:
            from .api import Deployer

            self._deployer = Deployer(state_dir=self.state_dir, progress=self.progress)
        return self._deployer


def _silent(line: str) -> None:
    pass


_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\r")


def plain_line(line: str) -> None:
    """One plain progress line on stderr, for logs: ``12:03:04 uploading ...``, without carriage
    returns or escape codes. A ``warning:`` line keeps that start (what logs are searched for)."""
    for part in _ESCAPES.sub("", line).splitlines() or [""]:
        stamp = "" if part.startswith(("warning:", "error:")) else time.strftime("%H:%M:%S ")
        click.echo(stamp + part, err=True)


def emit(as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text() if callable(text) else text)


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout (progress stays on stderr).")


def target_options(fn: Callable) -> Callable:
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                      help="TOML or JSON file with target, name and an [options] table.")(fn)
    fn = click.option("-o", "--option", "raw_options", multiple=True, metavar="KEY=VALUE",
                      help="A target option (repeatable); 'deployer targets NAME' lists them.")(fn)
    fn = click.option("--name", help="Deployment name (default: from the repository and "
                                     "target).")(fn)
    fn = click.option("-t", "--target", default=None,
                      help="Target to deploy to (default: local).")(fn)
    return fn


def parse_options(raw_options: tuple[str, ...]) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs; the API merges them over ``--config`` (which it reads)."""
    options: dict[str, str] = {}
    for item in raw_options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"option {item!r} is not KEY=VALUE",
                             hint="e.g. -o http_port=8000")
        options[key.strip()] = value
    return options


CLOUD_WAIT = click.option(
    "--cloud-metrics-wait", "cloud_wait", type=click.FloatRange(min=0), default=180.0,
    show_default=True, help="After a load on a cloud target, seconds to wait for the cloud's "
    "own latency metrics (published a minute or more late); 0 reads once.")


def test_options(fn: Callable) -> Callable:
    decorators = [
        click.option("--model", "models", multiple=True,
                     help="Test only this model (repeatable; default: every model)."),
        click.option("--model-version", type=click.IntRange(min=1),
                     help="Check only this version (default: every version the model's "
                          "version_policy serves)."),
        click.option("--sample", type=click.Path(dir_okay=False),
                     help='Inputs as JSON: {"INPUT": [...]}, a KServe v2 body, a bare list, or '
                          'keyed by model name; {"sequence": [step, ...]} for a stateful '
                          'model.'),
        click.option("--expect", type=click.Path(dir_okay=False),
                     help='Expected outputs as JSON: {"OUTPUT": [...]} (or keyed by model; '
                          '{"sequence": [...]} per step).'),
        click.option("--rtol", type=float, default=1e-5, show_default=True,
                     help="Relative tolerance for --expect."),
        click.option("--atol", type=float, default=1e-6, show_default=True,
                     help="Absolute tolerance for --expect."),
        click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Batch size of generated inputs."),
        click.option("--requests", type=click.IntRange(min=0), default=0,
                     help="Load: number of requests after the checks (0 = no load)."),
        click.option("--concurrency", type=click.IntRange(min=1),
                     help="Load: requests in flight (default 1); with --rate, the most in "
                          "flight (default 512)."),
        click.option("--rate", type=click.FloatRange(min=0, min_open=True),
                     help="Load: send open-loop at this many requests per second, latency "
                          "measured from each request's intended send time."),
        click.option("--junit-xml", type=click.Path(dir_okay=False),
                     help="Write the results as JUnit XML."),
        CLOUD_WAIT,
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def check_writable(path: str | None, what: str) -> None:
    """Fail before anything is created when an output file could not be written later."""
    if not path:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write the {what} {path}: {folder} is not a writable folder",
                         hint="create the folder or pass another path")


def make_test_options(kwargs: dict[str, Any]):
    from .tester import TestOptions

    if kwargs["rate"] and not kwargs["requests"]:
        raise UsageError("--rate sets the pace of a load: say how many requests",
                         hint="e.g. --requests 3000 --rate 200")

    return TestOptions(models=kwargs["models"], sample=kwargs["sample"], expect=kwargs["expect"],
                       rtol=kwargs["rtol"], atol=kwargs["atol"], batch_size=kwargs["batch_size"],
                       model_version=kwargs["model_version"], requests=kwargs["requests"],
                       concurrency=kwargs["concurrency"], rate=kwargs["rate"],
                       cloud_wait=kwargs["cloud_wait"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="DEPLOYER_STATE_DIR", type=click.Path(file_okay=False),
              help="Where deployments are recorded (default: ~/.local/state/triton-deployer; "
                   "env DEPLOYER_STATE_DIR).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.version_option(package_name="triton-deployer")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, quiet: bool) -> None:
    """Deploy, test and tear down one Triton model repository on any target.

    \b
    Exit codes: 0 ok, 1 test failed, 2 bad input, 3 deploy failed,
    4 teardown incomplete, 5 unavailable, 70 internal error, 130 interrupted.
    """
    ctx.obj = Context(state_dir, quiet, as_json=ctx.obj is JSON)
    ctx.call_on_close(ctx.obj.close)


pass_ctx = click.pass_obj


@cli.command()
@click.argument("name", required=False)
@click.option("--gpus", is_flag=True, help="Print the hardware vocabulary: each accelerator's "
              "instance type per cloud, with its list price.")
@json_option
@pass_ctx
def targets(ctx: Context, name: str | None, gpus: bool, as_json: bool) -> None:
    """List installed targets, or describe one target's options (--gpus: the hardware)."""
    from . import plugins
    from .render import table

    if gpus:
        if name:
            raise UsageError("targets --gpus takes no target name", hint="deployer targets "
                             "--gpus")
        _gpus(as_json)
        return

    registry = plugins.load()
    if name:
        cls = registry.get(name)
        data = {"name": cls.name, "description": cls.description,
                "available": cls.unavailable_reason() is None,
                "reason": cls.unavailable_reason(),
                "options": [{"name": o.name, "type": o.type.__name__, "default": o.default,
                             "choices": list(o.choices) if o.choices else None, "help": o.help}
                            for o in cls.options]}
        emit(as_json, data, lambda: f"{cls.name}: {cls.description}\n"
             + (f"unavailable: {data['reason']}\n" if data["reason"] else "")
             + table(["option", "type", "default", "help"],
                     [[o["name"], o["type"], o["default"], o["help"]
                       + (f" ({'|'.join(o['choices'])})" if o["choices"] else "")]
                      for o in data["options"]]))
        return
    rows = [{"name": cls.name, "available": cls.unavailable_reason() is None,
             "reason": cls.unavailable_reason(), "description": cls.description}
            for cls in registry.targets.values()]
    rows += [{"name": n, "available": False, "reason": r, "description": ""}
             for n, r in registry.broken.items()]
    emit(as_json, rows, lambda: table(
        ["target", "available", "description"],
        [[r["name"], "yes" if r["available"] else f"no: {r['reason']}", r["description"]]
         for r in rows]))


def _gpus(as_json: bool) -> None:
    from . import hardware
    from .compare import price_table
    from .render import at_terminal, table

    rows = hardware.table(price_table())
    clouds = list(hardware.vocabulary()["clouds"])

    def cell(entries: list[dict]) -> str:
        if not entries:
            return "-"
        first = entries[0]
        price = "?" if first["usd_per_hour"] is None else f"{first['usd_per_hour']:g}"
        low, high = first["gpus"], entries[-1]["gpus"]
        span = f" ({low}-{high} GPUs)" if high > low else f" ({low} GPUs)" if low > 1 else ""
        return f"{first['name']}: {price} USD/h{span}"

    def notes() -> list[str]:
        lines = [f"{hardware.CLOUD_NAMES[c]}: {v['source']} ({v['date']})"
                 for c, v in hardware.vocabulary()["clouds"].items()]
        lines.append("? = no price: 'deployer prices refresh', or compare --price TYPE=USD")
        if not at_terminal(sys.stdout):
            return lines
        import shutil
        import textwrap

        width = shutil.get_terminal_size().columns
        return [part for line in lines for part in textwrap.wrap(line, width)]

    emit(as_json, rows, lambda: "\n".join([table(
        ["gpu", *(hardware.CLOUD_NAMES[c] for c in clouds)],
        [[r["accelerator"], *(cell(r["clouds"][c]) for c in clouds)] for r in rows]),
        *notes()]))


@cli.command()
@click.argument("repository", type=click.Path())
@target_options
@json_option
@pass_ctx
def validate(ctx: Context, repository, target, name, raw_options, config_file, as_json) -> None:
    """Check a repository and a target's rules, with no side effects."""
    target, _, options = ctx.deployer.resolve(config_file, target, None,
                                              parse_options(raw_options))
    repo = ctx.deployer.validate(repository, target, options)
    data = {"valid": True, "repository": str(repo.path), "target": target,
            "models": {m.name: {"backend": m.backend, "versions": list(m.versions),
                                "max_batch_size": m.max_batch_size,
                                "steps": list(m.steps)} for m in repo.models.values()}}
    emit(as_json, data, lambda: f"valid for {target}: {repo.path} — {len(repo.models)} model(s): "
         + ", ".join(f"{m.name} ({m.backend})" for m in repo.models.values()))


@cli.command()
@click.argument("repository", type=click.Path())
@target_options
@click.option("--export", "export_dir", type=click.Path(), metavar="DIR",
              help="Also write the target's deployment documents into DIR (e.g. azure's "
                   "endpoint.yml and deployment.yml); plan alone writes nothing.")
@json_option
@pass_ctx
def plan(ctx: Context, repository, target, name, raw_options, config_file, export_dir,
         as_json) -> None:
    """Show what a deploy would create (with --export, write its documents)."""
    from .render import table

    options = parse_options(raw_options)
    result = ctx.deployer.plan(repository, target, name, options, config=config_file).to_dict()
    if export_dir:
        result["exported"] = [str(p) for p in ctx.deployer.export(
            repository, export_dir, target, name, options, config=config_file)]
    emit(as_json, result, lambda: f"plan for {result['name']} on {result['target']} "
         f"({', '.join(result['models'])}):\n" + table(
             ["create", "name", "details"],
             [[r["kind"], r["name"], json.dumps(r["details"], default=str)]
              for r in result["resources"]])
         + "".join(f"\nwrote {p}" for p in result.get("exported", [])))


@cli.command()
@click.argument("repository", type=click.Path())
@target_options
@click.option("--update", is_flag=True,
              help="Replace what deployment --name serves (blue/green where the target can).")
@json_option
@pass_ctx
def deploy(ctx: Context, repository, target, name, raw_options, config_file, update,
           as_json) -> None:
    """Deploy a repository and wait until it answers."""
    deployment = ctx.deployer.deploy(repository, target, name, parse_options(raw_options),
                                     update=update, config=config_file)
    emit(as_json, deployment.to_dict(), lambda: (
        f"deployed {deployment.name} to {deployment.target} in {deployment.deploy_seconds:.1f}s"
        f": {deployment.endpoint.get('url', '')}\nnext: deployer test {deployment.name}"))


def _test_exit(report: dict[str, Any], junit: str | None, obj) -> None:
    if junit:
        from . import junit as junit_writer

        junit_writer.write(obj, junit)
    if not report["passed"]:
        sys.exit(ExitCode.TEST_FAILED)


@cli.command()
@click.argument("name")
@test_options
@json_option
@pass_ctx
def test(ctx: Context, name: str, as_json: bool, junit_xml: str | None, **kwargs) -> None:
    """Test a deployment: ready, metadata, inference, the outputs the config declares, expected
    outputs, load."""
    from .render import test_report

    report = ctx.deployer.test(name, make_test_options(kwargs))
    data = report.to_dict()
    emit(as_json, data, lambda: test_report(data))
    _test_exit(data, junit_xml, report)


def _run_command(ctx: Context, method: str, repository, target, name, raw_options, config_file,
                 as_json, junit_xml, kwargs) -> None:
    from .render import teardown_report, test_report

    options = parse_options(raw_options)
    check_writable(junit_xml, "JUnit file")
    report = getattr(ctx.deployer, method)(repository, target, name, options,
                                           make_test_options(kwargs), config=config_file)
    data = report.to_dict()

    if data["error"]:
        click.echo(f"error: {data['error']}", err=True)

    def text() -> str:
        parts = []
        if data["test"]:
            parts.append(test_report(data["test"]))
        if data["teardown"]:
            parts.append(teardown_report(data["teardown"]))
        parts.append(f"{method} {'PASSED' if data['passed'] else 'FAILED'} "
                     f"(exit {data['exit_code']})")
        return "\n".join(parts)

    emit(as_json, data, text)
    if junit_xml and report.test:
        from . import junit as junit_writer

        junit_writer.write(report.test, junit_xml)
    sys.exit(report.exit_code)


@cli.command()
@click.argument("repository", type=click.Path())
@target_options
@test_options
@json_option
@pass_ctx
def run(ctx: Context, repository, target, name, raw_options, config_file, as_json, junit_xml,
        **kwargs) -> None:
    """Deploy → test → teardown (always), with one exit code."""
    _run_command(ctx, "run", repository, target, name, raw_options, config_file, as_json,
                 junit_xml, kwargs)


@cli.command()
@click.argument("repository", type=click.Path())
@target_options
@test_options
@json_option
@pass_ctx
def rehearse(ctx: Context, repository, target, name, raw_options, config_file, as_json,
             junit_xml, **kwargs) -> None:
    """Rehearse a cloud deploy locally: its exact artefact, served in its twin, tested."""
    _run_command(ctx, "rehearse", repository, target, name, raw_options, config_file, as_json,
                 junit_xml, kwargs)


@cli.group()
def prices() -> None:
    """Current list prices: fetch them from each cloud, show the ones compare uses."""


@prices.command("refresh")
@click.option("--cloud", "clouds", multiple=True,
              type=click.Choice(["sagemaker", "azure", "vertex"]),
              help="Refresh only this cloud (repeatable; default: all three).")
@click.option("--region", "regions", multiple=True, metavar="CLOUD=REGION",
              help="Price this cloud in this region, e.g. --region azure=westeurope "
                   "(default: the shipped table's region).")
@json_option
@pass_ctx
def prices_refresh(ctx: Context, clouds, regions, as_json) -> None:
    """Fetch on-demand list prices from AWS, Azure and Google into the cache.

    AWS needs credentials allowed pricing:GetProducts; Azure needs nothing; Google needs an
    API key in GOOGLE_CLOUD_API_KEY. A cloud that fails keeps its prices, with a warning."""
    from . import pricing
    from .render import table

    region_map = {}
    for item in regions:
        cloud, sep, region = item.partition("=")
        if not sep or not region:
            raise UsageError(f"--region {item!r} is not CLOUD=REGION",
                             hint="e.g. --region azure=westeurope")
        region_map[cloud] = region
    results = pricing.refresh(clouds, region_map, progress=ctx.progress)
    for r in results:
        if r.warning:
            click.echo(f"warning: {r.cloud}: {r.warning}", err=True)
    data = {"cache": str(pricing.cache_path()), "clouds": [r.to_dict() for r in results]}
    emit(as_json, data, lambda: "\n".join([table(
        ["cloud", "region", "source", "fetched", "prices"],
        [[r.cloud, r.region, r.source, r.fetched or "failed: kept its prices", r.count]
         for r in results])] + [f"{r.cloud}: not listed in {r.region}: {', '.join(r.missing)}"
                                for r in results if r.missing]
        + [f"cache: {data['cache']}"
           + ("" if any(r.fetched for r in results) else " (unchanged)")]))


@prices.command("show")
@json_option
def prices_show(as_json) -> None:
    """The price per instance type that compare uses, and where each comes from."""
    from .compare import price_table
    from .render import table

    found = price_table()
    for warning in found["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    rows = sorted(found["prices"].values(), key=lambda e: (e.get("cloud", ""),
                                                          e["instance_type"]))
    emit(as_json, rows, lambda: table(
        ["cloud", "instance type", "USD/h", "source"],
        [[e.get("cloud", ""), e["instance_type"], e["usd_per_hour"], e["source"]["label"]]
         for e in rows]))


@cli.command()
@click.argument("repository", type=click.Path())
@click.option("-t", "--target", "targets", multiple=True, required=True,
              help="A target to compare (repeat: --target local --target docker).")
@click.option("-o", "--option", "raw_options", multiple=True, metavar="TARGET.KEY=VALUE",
              help="An option for one target, e.g. -o docker.image=IMAGE (repeatable).")
@click.option("--model", help="The model to measure (default: the first top-level model).")
@click.option("--requests", type=click.IntRange(min=1), default=1000, show_default=True,
              help="At least this many measured requests per concurrency level.")
@click.option("--concurrency", "concurrency", multiple=True, type=click.IntRange(min=1),
              help="Concurrency levels (repeatable; default 1 and 4); with --rate, the most "
                   "requests in flight (one value; default 512).")
@click.option("--rate", "rates", multiple=True,
              type=click.FloatRange(min=0, min_open=True), metavar="RPS",
              help="Offer every target the same load, open-loop at RPS requests per second "
                   "(repeatable: one level per rate) instead of concurrency levels.")
@click.option("--price", "prices", multiple=True, metavar="TYPE=USD",
              help="Override an hourly price, e.g. --price ml.g4dn.xlarge=0.74.")
@click.option("--gpu", "gpus", multiple=True, metavar="ACCELERATOR[:COUNT]",
              help="Run each cloud target on this accelerator (cpu, T4, L4, A10G, A10, A100, "
                   "H100; repeatable: one run per accelerator, grouped in the report).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report with charts.")
@CLOUD_WAIT
@json_option
@pass_ctx
def compare(ctx: Context, repository, targets, raw_options, model, requests, concurrency,
            rates, prices, gpus, report_file, cloud_wait, as_json) -> None:
    """Deploy to several targets, measure the same load on each, tear all down, compare."""
    from . import compare as comparing
    from .render import cloud_line, load_quality, server_time_table, table

    if rates and len(concurrency) > 1:
        raise UsageError("with --rate, --concurrency is the most requests in flight: give it "
                         "once", hint="e.g. --rate 200 --rate 400 --concurrency 256")

    check_writable(report_file, "report")
    flat = parse_options(raw_options)
    per_target = comparing.split_options(flat, list(targets))
    price_map = {}
    for item in prices:
        key, sep, value = item.partition("=")
        try:
            price_map[key] = float(value) if sep else float("x")
        except ValueError:
            raise UsageError(f"--price {item!r} is not TYPE=USD_PER_HOUR",
                             hint="e.g. --price ml.g4dn.xlarge=0.74") from None
    result = comparing.compare(ctx.deployer, repository, list(targets), per_target,
                               requests=requests, concurrency=list(concurrency) or (
                                   [] if rates else [1, 4]), rates=list(rates),
                               prices=price_map, model=model, cloud_wait=cloud_wait,
                               gpus=list(gpus), progress=ctx.progress)
    data = result.to_dict()
    if report_file:
        from .report import render

        Path(report_file).write_text(render(data))
        ctx.progress(f"report written to {report_file}")

    def text() -> str:
        rows = []
        grouped = any(t["accelerator"] for t in data["targets"])
        for t in data["targets"]:
            lat = t["latency_ms"]
            rows.append(([f"{t['accelerator'] or '-'} {t['hardware'] or ''}".strip()]
                         if grouped else [])
                        + [t["target"], "passed" if t["passed"] else "FAILED",
                           t["deploy_seconds"], t["cold_start_seconds"], lat.get("p50"),
                           lat.get("p90"), lat.get("p95"), lat.get("p99"), t["throughput_rps"],
                           t["errors"], t["throttled"], t["timed_out"], t["cost_per_hour"],
                           t["cost_per_million"]])
        lines = [table((["accelerator"] if grouped else [])
                       + ["target", "result", "deploy s", "cold s", "p50 ms", "p90 ms",
                          "p95 ms", "p99 ms", "max req/s", "errors", "429", "408", "USD/h*",
                          "USD/M*"], rows)]
        split = server_time_table([(t["target"], level) for t in data["targets"]
                                   for level in t["load"]])
        if split:   # where the time went, by Triton's own counters
            lines.append(split)
        streamed = [t for t in data["targets"] if t.get("stream")]
        if streamed:   # a decoupled model: what its streams did at the first level
            lines.append(table(["target", "first response ms p50", "p99",
                                "between responses ms p50", "p99", "responses/s"],
                               [[t["target"], t["stream"]["first_ms"]["p50"],
                                 t["stream"]["first_ms"]["p99"],
                                 t["stream"]["between_ms"]["p50"],
                                 t["stream"]["between_ms"]["p99"],
                                 t["stream"]["responses_per_s"]] for t in streamed]))
        lines += [f"{t['target']} at " + (f"{x['rate']:g}/s" if x.get("rate") else
                                          f"concurrency {x['concurrency']}")
                  + f": {load_quality(x)}" for t in data["targets"] for x in t["load"]]
        lines += [f"{t['target']}: warning: {w}" for t in data["targets"] for w in t["warnings"]]
        lines += [f"{t['target']}: {t['error']}" for t in data["targets"] if t["error"]]
        lines += [f"{t['target']}: {model} served by {how}" for t in data["targets"]
                  for model, how in sorted(t.get("served_by", {}).items())]
        lines += [f"{t['target']}: {cloud_line(t['cloud_time'])}" for t in data["targets"]
                  if t.get("cloud_time")]
        lines += [f"{t['target']}: {t['cost_note']}" for t in data["targets"]
                  if t["instances"]]   # where each cloud figure comes from
        lines.append(f"* estimates: {data['price_note']}")
        lines.append(f"compare {'PASSED' if data['passed'] else 'FAILED'}")
        return "\n".join(lines)

    emit(as_json, data, text)
    if not result.passed:
        failed = [t for t in result.targets if not t.passed]
        sys.exit(ExitCode.TEARDOWN_INCOMPLETE if any(not t.torn_down for t in failed)
                 else ExitCode.DEPLOY_FAILED if any(t.deploy_seconds is None for t in failed)
                 else ExitCode.TEST_FAILED)


@cli.command(name="list")
@click.option("--orphans", is_flag=True,
              help="Also look for what our targets left running that no record owns.")
@json_option
@pass_ctx
def list_(ctx: Context, orphans: bool, as_json: bool) -> None:
    """List recorded deployments (and, with --orphans, unrecorded leftovers)."""
    from .render import table

    items = [d.to_dict() for d in ctx.deployer.list()]
    found = ctx.deployer.orphans() if orphans else []

    def text() -> str:
        lines = [table(["name", "target", "status", "endpoint", "created"],
                       [[d["name"], d["target"], d["status"], d["endpoint"].get("url", ""),
                         d["created_at"]] for d in items]) if items else "no deployments"]
        if orphans:
            lines.append(table(["orphan", "target", "id", "remove with"],
                               [[o["kind"], o["target"], o["id"], o["remove"]] for o in found])
                         if found else "no orphans")
        return "\n".join(lines)

    emit(as_json, {"deployments": items, "orphans": found} if orphans else items, text)


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
def status(ctx: Context, name: str, as_json: bool) -> None:
    """Show a deployment's record and whether it answers now."""
    data = ctx.deployer.status(name)
    live = {True: "answering", False: "NOT answering", None: "not checked"}[data["live"]]
    emit(as_json, data, lambda: "\n".join([
        f"{data['name']}: {data['status']} on {data['target']} ({live})",
        f"endpoint: {data['endpoint'].get('url', '-')}",
        f"models: {', '.join(data['models'])}",
        *(f"{model}: served by {how}" for model, how in
          sorted(data["endpoint"].get("served_by", {}).items())),
        *([fleet_line(data["fleet"])] if data["fleet"] else []),
        f"created: {data['created_at']}; deploy took {data['deploy_seconds']}s",
        *(f"resource: {r['kind']} {r['id']} [{r['status']}]" for r in data["resources"]),
        *([f"error: {data['error']}"] if data["error"] else [])]))


def fleet_line(fleet: dict) -> str:
    """``instances: 2 now, 3 desired, range 1-4; target tracking ...``."""
    def count(value):
        return "?" if value is None else str(value)

    span = (str(fleet["minimum"]) if fleet["minimum"] == fleet["maximum"]
            else f"{fleet['minimum']}-{fleet['maximum']}")
    rule = f"; {fleet['rule']}" if fleet["rule"] else ""
    return (f"instances: {count(fleet['current'])} now, {count(fleet['desired'])} desired, "
            f"range {span}{rule}")


@cli.command()
@click.argument("name")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=100, show_default=True)
@pass_ctx
def logs(ctx: Context, name: str, lines: int) -> None:
    """Print the last lines of a deployment's server log."""
    click.echo(ctx.deployer.logs(name, lines))


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
def teardown(ctx: Context, name: str, as_json: bool) -> None:
    """Remove everything a deployment created and verify it is gone (idempotent)."""
    from .render import teardown_report

    data = ctx.deployer.teardown(name).to_dict()
    emit(as_json, data, lambda: teardown_report(data))


@cli.group()
def server() -> None:
    """The embedded tritonserver runtime (managed in your cache)."""


@server.command(name="install")
@click.option("--package", "packages", multiple=True,
              help="A package the models import (repeatable). onnxruntime and torch, named "
                   "bare, take the versions the ONNX/TorchScript shim is pinned to.")
@click.option("--python", "python", metavar="PATH",
              help="The Python to build the runtime with (CPython 3.8-3.12 with a shared "
                   "libpython; default: this one if it can, else one found on the machine).")
@click.option("--force", is_flag=True, help="Rebuild the runtime from scratch.")
@json_option
@pass_ctx
def server_install(ctx: Context, packages: tuple[str, ...], python: str | None, force: bool,
                   as_json: bool) -> None:
    """Create the managed runtime now (or add packages to it)."""
    from . import runtime, shim

    pins = {f.distribution: f.requirement for f in shim.FRAMEWORKS.values()}
    packages = tuple(pins.get(p.strip().lower(), p) for p in packages)
    found = runtime.install(packages, force=force, progress=ctx.progress, python=python)
    data = found.to_dict()
    emit(as_json, data, lambda: f"managed runtime ready: {data['executable']} (nvidia-pytriton "
         f"{data['version']}, Python {data['python']}; packages: "
         f"{', '.join(data['packages']) or 'numpy'})")


@server.command(name="info")
@json_option
def server_info(as_json: bool) -> None:
    """Show which tritonserver the local target would use."""
    from . import runtime

    data = runtime.info()

    def stub(check: dict) -> str:
        return "loads" if check["loads"] else \
            f"CANNOT LOAD {check['missing'] or check['said']} (deployer server install --force)"

    managed = data["managed"]
    would = data.get("would_use") or {}
    emit(as_json, data, lambda: "\n".join(
        [f"selected: {data['selected'] or 'managed (not created yet: created on first use)'}",
         f"managed runtime: {data['runtime_dir']}" + ("" if managed else " (not created)")]
        + ([f"  server: {managed['executable']}",
            f"  python: {managed['python']} ({managed['interpreter']})",
            f"  libpython: {managed['libpython'] or 'the system loader finds it'}",
            f"  stub: {stub(managed['stub'])}",
            f"  backends: {', '.join(managed['backends'])}",
            f"  packages: {', '.join(managed['packages']) or '-'}"]
           if managed else [])
        + ([f"  would be made with {would['python']} (libpython {would['libpython']})"]
           if would.get("python") else [f"  cannot be made: {would['error']}"] if would else [])
        + ([f"on PATH: {data['on_path']}"] if data.get("on_path") else [])
        + ([f"named by DEPLOYER_TRITONSERVER: {data['named']}"] if data.get("named") else [])))


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: every expected error becomes one line on stderr and its exit code.

    SIGTERM and SIGINT stop the command cleanly while it runs; the handlers the process had
    come back when it returns (a caller in the same process, e.g. a test, keeps its own)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _terminate)
    # a shell starts background jobs with SIGINT ignored; Ctrl-C/SIGINT must still stop us
    # cleanly (what was created is recorded, run and compare tear down)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            if handler is not None:   # None: not installed from Python, nothing to restore
                signal.signal(signum, handler)


def _main(argv: list[str] | None) -> int:
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="deployer", standalone_mode=False,
                 obj=JSON if as_json else None)
        return ExitCode.OK
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except DeployerError as exc:
        if os.environ.get(RAISE_ENV):
            raise
        if as_json:
            click.echo(json.dumps({"error": str(exc), "details": exc.details,
                                   "exit_code": int(exc.exit_code)}))
        click.echo(f"error: {exc}", err=True)
        for line in (exc.details or "").splitlines():
            click.echo(f"  | {line}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except Exception:  # noqa: BLE001 - the one place a traceback is shown
        if os.environ.get(RAISE_ENV):
            raise
        traceback.print_exc()
        click.echo("error: internal error (a bug in triton-deployer or a plugin); please "
                   "report it with the traceback above", err=True)
        return ExitCode.INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
