"""JUnit XML for CI systems: one test case per check, per model, and per load run; a check
the target cannot run is ``<skipped message="why"/>``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .tester import TestReport


def write(report: TestReport, path: str | Path) -> None:
    suite = ET.Element("testsuite", name=f"deployer.{report.target}.{report.name}")
    cases = [("server", report.ready)] + [
        (model.model + (f".v{model.version}" if model.version else ""), check)
        for model in report.models for check in model.checks]
    failures = skipped = 0
    for classname, check in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=check.name,
                             time=f"{check.seconds:.3f}")
        if check.skipped:   # not run on this target: the message says why
            skipped += 1
            ET.SubElement(case, "skipped", message=check.message[:500])
        elif not check.passed:
            failures += 1
            ET.SubElement(case, "failure", message=check.message[:500]).text = check.message
    for result in report.load:
        case = ET.SubElement(suite, "testcase", classname=result.model,
                             name=f"load[{result.requests}@{result.rate:g}/s]" if result.rate
                             else f"load[{result.requests}x{result.concurrency}]",
                             time=f"{result.seconds:.3f}")
        ET.SubElement(case, "system-out").text = (
            f"throughput {result.throughput_rps} req/s, latency ms {result.latency_ms}")
        if result.error_count:
            failures += 1
            ET.SubElement(case, "failure", message=f"{result.error_count} errors: "
                                                   f"{result.errors}")
        cases.append((result.model, None))  # type: ignore[arg-type]
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", f"{report.seconds:.3f}")
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
