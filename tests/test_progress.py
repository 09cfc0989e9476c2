"""Progress people can watch, plain lines for logs (deployer.progress, deployer.terminal and the
CLI's sinks).

- the plain-line rules of a transfer and a wait, on a clock the test moves;
- the CLI in a subprocess with stderr piped, and with ``--json`` and ``-q``: timestamped lines,
  no carriage return or escape code, few of them; stdout only the result;
- the live view and the tables drawn for a terminal, from several threads;
- under a real terminal (tmux): a deploy of a repository holding a 300 MB file to SageMaker on
  moto shows a moving bar with a percentage and a size and leaves a clean screen; then the same
  deploy piped is a few plain lines.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import progress
from deployer.progress import EVERY, Prefixed, Transfer, Wait

from conftest import REPOS, Worker, wait_for
from progress_support import heavy_repository
from sagemaker_support import moto_url  # noqa: F401 - a fixture

ROOT = Path(__file__).parent.parent
STAMPED = re.compile(r"^\d\d:\d\d:\d\d .")
#: what a live view draws and a clean screen must not keep: spinner frames, bar pieces
SPINNER = re.compile("[\u2800-\u28ff]")
BAR = re.compile("[\u2501\u2578\u257a]")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the plain-line rules ------------------------------------------------------------------------

def test_a_transfer_says_its_start_every_30_s_at_most_and_its_end():
    clock, lines = Clock(), []
    with Transfer(lines.append, "uploading s3://b/k", 300_000_000, clock=clock) as moving:
        assert lines == ["uploading s3://b/k (300.0 MB)"]
        for _ in range(29):
            clock.now += 1
            moving.advance(1_000_000)
        assert len(lines) == 1   # nothing within 30 s
        clock.now += 1
        moving.advance(1_000_000)
        assert lines[1:] == ["uploading s3://b/k: 30.0 MB of 300.0 MB (10%), 1.0 MB/s"]
        clock.now += EVERY - 1
        moving.update(270_000_000)
        assert len(lines) == 2
        clock.now += 1
        moving.update(300_000_000)
        assert lines[2] == "uploading s3://b/k: 300.0 MB of 300.0 MB (100%), 5.0 MB/s"
    assert lines[3:] == ["uploading s3://b/k: done, 300.0 MB in 60.0 s, 5.0 MB/s"]


def test_a_wait_says_each_state_at_once_repeats_after_30_s_and_ends():
    clock, lines = Clock(), []
    with Wait(lines.append, "waiting for ep to be InService", clock=clock) as waiting:
        waiting.state("Creating")
        clock.now += 15
        waiting.state("Creating")
        assert lines == ["waiting for ep to be InService",
                         "waiting for ep to be InService: Creating"]
        clock.now += 15
        waiting.state("Creating")
        assert lines[2:] == ["waiting for ep to be InService: Creating (30s)"]
        clock.now += 1
        waiting.state("Updating")   # a change: at once
        assert lines[3:] == ["waiting for ep to be InService: Updating"]
        clock.now += 94
        waiting.state("InService")
    assert lines[4:] == ["waiting for ep to be InService: InService",
                         "waiting for ep to be InService: InService after 2m05s"]


def test_leaving_by_an_error_ends_quietly():
    lines = []
    with pytest.raises(RuntimeError):
        with Transfer(lines.append, "packing", None, clock=Clock()) as moving:
            moving.advance(5)
            raise RuntimeError("the upload failed")
    with pytest.raises(RuntimeError):
        with Wait(lines.append, "waiting", clock=Clock()):
            raise RuntimeError("the endpoint failed")
    assert lines == ["packing", "waiting"]


def test_parts_add_up_and_a_total_is_known_once_every_part_has_one():
    clock, lines = Clock(), []
    with Transfer(lines.append, "pulling image", None, clock=clock) as pulling:
        pulling.part("layer-a", 10, 100)
        pulling.part("layer-b", 5, None)
        assert (pulling.done, pulling.total) == (15, None)
        pulling.part("layer-b", 50, 50)
        assert (pulling.done, pulling.total) == (60, 150)
        clock.now += EVERY
        pulling.part("layer-a", 100, 100)
    assert lines[1] == "pulling image: 150 B of 150 B (100%), 5 B/s, 2 part(s)"


def test_a_load_counts_every_request_it_finished_failed_or_not():
    from deployer import load

    lines = []

    def failing():
        raise ConnectionError("refused")

    with progress.counting(lines.append, "load") as done:
        result = load.run("m", failing, requests=30, concurrency=3, warmup=6, max_windows=3,
                          done=done)
    assert result.errors == {"ConnectionError": 30}
    assert lines[0] == "load"
    assert lines[-1].startswith("load: done, 36 requests in "), "warm-up and windows"


def test_prefixed_keeps_the_live_view():
    seen = []

    class Live:
        def transfer(self, what, total, unit):
            seen.append((what, total, unit))
            return Transfer(lambda line: None, what, total, unit)

        def waiting(self, what):
            seen.append(what)
            return Wait(lambda line: None, what)

    def sink(line):
        seen.append(line)

    sink.live = Live()
    prefixed = Prefixed(sink, "sagemaker: ")
    prefixed("deploying")
    with progress.transfer(prefixed, "load at concurrency 4", None, unit="requests"):
        pass
    with progress.waiting(prefixed, "waiting"):
        pass
    assert seen == ["sagemaker: deploying", ("sagemaker: load at concurrency 4", None,
                                             "requests"), "sagemaker: waiting"]
    assert Prefixed(print, "x: ").live is None


# -- the live view and the tables, drawn for a terminal -----------------------------------------

def test_the_live_view_from_several_threads_ends_with_one_line_per_task():
    from rich.console import Console

    from deployer.terminal import LiveView

    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=True, width=100, color_system=None))

    def work(index: int) -> None:
        with progress.transfer(view, f"upload {index}", 1000) as moving:
            for _ in range(100):
                moving.advance(10)
        with progress.waiting(view, f"wait {index}") as waiting:
            for state in ("Creating", "Creating", "InService"):
                waiting.state(state)
        view(f"line {index}")

    workers = [Worker(work, i) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.result()
    view.close()
    text = screen.getvalue()
    for index in range(6):
        assert text.count(f"upload {index}: done, 1.0 kB in ") == 1, text
        assert text.count(f"wait {index}: InService after 0s") == 1, text
        assert text.count(f"line {index}") == 1
    assert not view.transfers.tasks and not view.waits.tasks


def test_reports_after_the_view_is_closed_are_dropped():
    """An SDK's upload thread may report after a Ctrl-C closed the view: nothing raises, and
    the bar that was drawn last is the one the figures reached while it was open."""
    from rich.console import Console

    from deployer.terminal import LiveView

    view = LiveView(Console(file=io.StringIO(), force_terminal=True, width=100))
    with progress.transfer(view, "upload", 100) as moving, \
            progress.waiting(view, "wait") as waiting:
        moving.update(100)   # complete: pushed at once
        assert view.transfers.tasks[0].completed == 100
        view.close()
        moving.advance(5)
        moving.update(7, total=200)
        waiting.state("Creating")
    assert not view.transfers.tasks and not view.waits.tasks


def test_a_table_for_the_terminal_fits_its_width():
    from deployer.terminal import table

    long = "an option whose help goes on and on, far past a narrow terminal's width"
    url = "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/a-very-long-name/inv"
    drawn = table(["name", "target", "help"], [["big", "sagemaker", long], ["x", "y", url]],
                  width=50)
    visible = re.sub(r"\x1b\[[0-9;]*m", "", drawn).splitlines()
    assert max(len(line) for line in visible) <= 50, drawn
    words = " ".join(visible)
    assert all(word in words for word in long.split()), drawn   # wrapped, not lost
    first = next(i for i, line in enumerate(visible) if line.startswith("x "))
    assert "".join(line.split()[-1] for line in visible[first:]) == url, drawn


def test_a_table_too_wide_for_the_terminal_becomes_one_record_per_row():
    from deployer.terminal import table

    headers = ["target", "result", "deploy s", "p50 ms", "p99 ms", "max req/s", "USD/h*"]
    drawn = table(headers, [["azure-twin", "passed", "3.408", "0.696", "3.861", "1766.5",
                             "0.0"], ["local", "FAILED", "", "0.2", "1.4", "7323.4", "0.0"]],
                  width=30)
    assert drawn.split("\n\n") == [
        "target: azure-twin\n  result: passed\n  deploy s: 3.408\n  p50 ms: 0.696\n"
        "  p99 ms: 3.861\n  max req/s: 1766.5\n  USD/h*: 0.0",
        "target: local\n  result: FAILED\n  p50 ms: 0.2\n  p99 ms: 1.4\n"
        "  max req/s: 7323.4\n  USD/h*: 0.0"]


def test_piped_tables_stay_plain_columns():
    from deployer.render import table

    # stdout here is pytest's capture, not a terminal: the plain format scripts read
    assert table(["a", "bb"], [["1", None], ["long", "x"]]) == (
        "a     bb\n----  --\n1\nlong  x")


# -- the CLI, piped ------------------------------------------------------------------------------

def deployer(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def assert_plain(err: str, most: int) -> list[str]:
    """Plain progress: each line timestamped (or a warning), no "\\r", no escape code, at most
    ``most`` lines."""
    assert "\r" not in err and "\x1b" not in err, repr(err)
    lines = err.splitlines()
    assert all(STAMPED.match(line) or line.startswith("warning: ") for line in lines), err
    assert 0 < len(lines) <= most, err
    return lines


def test_run_piped_prints_few_timestamped_lines_and_stdout_is_the_result(tritonserver):
    done = deployer("run", str(REPOS / "add_sub"), "--requests", "300", "--name", "piped")
    assert done.returncode == 0, done.stderr
    lines = assert_plain(done.stderr, 12)
    assert any("load: at least 300 requests at concurrency 1 on add_sub: done, " in line
               for line in lines), lines
    assert done.stdout.splitlines()[-1] == "run PASSED (exit 0)"
    assert done.stdout.splitlines()[1].startswith("--------")   # the plain table

    as_json = deployer("run", str(REPOS / "add_sub"), "--json", "--name", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["passed"] is True   # stdout: only the result
    assert_plain(as_json.stderr, 10)

    quiet = deployer("-q", "run", str(REPOS / "add_sub"), "--name", "quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    failed = deployer("-q", "test", "nothing-by-that-name")
    assert failed.returncode != 0 and failed.stderr.startswith("error: "), failed.stderr


def test_the_cli_start_and_piped_tables_do_not_import_rich():
    for args in (["--help"], ["targets"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "deployer", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")]
        assert "deployer.cli" in imported and not any(
            name == "rich" or name.startswith("rich.") for name in imported), args


# -- under a real terminal -----------------------------------------------------------------------

class Pane:
    """A shell in a detached tmux session of its own (its own server socket), 120 x 40."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.socket = f"deployer-progress-{os.getpid()}"
        self.folder = folder
        rc = folder / "shellrc"
        rc.write_text("".join(f"export {key}={shlex.quote(value)}\n"
                              for key, value in env.items()) + "PS1='READY$ '\n")
        self.tmux("new-session", "-d", "-s", "main", "-x", "120", "-y", "40",
                  f"bash --noprofile --rcfile {shlex.quote(str(rc))} -i")
        wait_for("the shell's prompt", lambda: "READY$" in self.screen(), timeout=60)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        """What the pane shows, a line wrapped by the terminal joined again (-J)."""
        return "\n".join(line.rstrip() for line in self.tmux(
            "capture-pane", "-p", "-J", "-t", "main").splitlines()).rstrip()

    def run(self, command: str) -> None:
        self.tmux("send-keys", "-t", "main", "clear", "Enter")
        wait_for("a clear screen", lambda: self.screen().strip() == "READY$", timeout=60)
        self.tmux("send-keys", "-t", "main", command, "Enter")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30)


@pytest.fixture
def pane(tmp_path):
    if shutil.which("tmux") is None:
        print("tmux is not installed: the live view under a real terminal is not tested")
        pytest.skip("tmux is not installed (apt-get install tmux)")

    def make(env: dict[str, str]) -> Pane:
        made.append(Pane(tmp_path, env))
        return made[-1]

    made: list[Pane] = []
    yield make
    for one in made:
        one.close()


@pytest.fixture
def big(tmp_path):
    """add_sub with a 300 MB file of random (incompressible) bytes beside its model."""
    return heavy_repository(tmp_path, 300_000_000)


def _environment() -> dict[str, str]:
    keep = ("PATH", "HOME", "PYTHONPATH", "DEPLOYER_STATE_DIR", "LANG", "LC_ALL")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_a_300_mb_deploy_to_sagemaker_at_a_terminal_then_piped(pane, big, moto_url):
    pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")
    from sagemaker_support import aws_environment, leftovers

    with aws_environment(moto_url) as aws:
        options = ["-o", f"role={aws['role']}", "-o", f"bucket={aws['bucket']}"]
        shell = pane(_environment())
        command = " ".join(shlex.quote(a) for a in [
            sys.executable, "-m", "deployer", "deploy", str(big), "-t", "sagemaker",
            "--name", "big", *options])
        shell.run(f"{command}; echo EXIT=$?")
        screens: list[str] = []

        def finished() -> bool:
            screens.append(shell.screen())
            return (re.search(r"^EXIT=\d+$", screens[-1], re.M) is not None
                    and screens[-1].endswith("READY$"))

        wait_for("the deploy at the terminal to end", finished, timeout=450, every=0.1)
        final = screens[-1]
        assert "EXIT=0" in final, final
        bars = [line for screen in screens for line in screen.splitlines()
                if "packing and uploading" in line and BAR.search(line)]
        percentages = {int(p) for line in bars for p in re.findall(r" (\d+)% ", line)}
        assert any(re.search(r"\d MB / 30\d\.\d MB", line) for line in bars), screens
        assert len(percentages - {0, 100}) >= 1 and len(percentages) >= 2, percentages
        # the screen at the end: one finished line per task, nothing drawn left, the prompt
        lines = [line for line in final.splitlines() if line.strip()]
        assert not SPINNER.search(final) and not BAR.search(final), final
        assert any(re.search(r"packing and uploading s3://\S+: done, 30\d\.\d MB in ", line)
                   for line in lines), final
        assert any(re.search(r"to be InService .*: InService after \d+s", line)
                   for line in lines), final
        assert "deployed big to sagemaker" in final
        assert lines[-1] == "READY$", final
        torn = deployer("teardown", "big")
        assert torn.returncode == 0, torn.stderr

        # the same deploy piped: a few plain lines
        piped = deployer("deploy", str(big), "-t", "sagemaker", "--name", "big-piped",
                         *options, timeout=450)
        assert piped.returncode == 0, piped.stderr
        lines = assert_plain(piped.stderr, 14)
        packing = [line for line in lines if "packing and uploading" in line]
        assert 2 <= len(packing) <= 2 + 30, packing   # start, end, one per 30 s at most
        assert "done, 30" in packing[-1], packing
        assert piped.stdout.startswith("deployed big-piped to sagemaker")
        torn = deployer("teardown", "big-piped")
        assert torn.returncode == 0, torn.stderr
        assert leftovers(aws["bucket"]) == {"endpoints": [], "configs": [], "models": [],
                                            "objects": []}
