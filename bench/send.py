"""Send benchmark: mailer's live send over loopback, with and without the send log, against
mailmerge and Postfix's smtp-source, all into the same SMTP sink.

Run it from the repository root with the project's venv (mailer installed, plus
`pip install -e '.[bench]'` for mailmerge; uvloop comes with mailer)::

    python bench/send.py                                 # 5,000 letters, 10 runs of each
    python bench/send.py --letters 20000 --repeat 3
    python bench/send.py --uvloop                        # add rows on uvloop's event loop
    python bench/send.py --sink aiosmtpd                 # mailer's own sink, in a process
    python bench/send.py --server 127.0.0.1:2525         # a sink that is already running
    python bench/send.py --profile py-spy                # where the client CPU goes (no timing)
    python bench/send.py --profile pyinstrument --profile-concurrency 4

It writes N synthetic recipients (email,title,name,country; unique addresses at
example.org / example.net subdomains; about 40% non-ASCII names) into a temporary folder and
sends `templates/letter.txt` to them with MAILER_FROM / MAILER_SENDER_NAME set and no rate
limit (`Rate(0)`). The sink is, unless `--server` names one: Postfix's C `smtp-sink` through
`../shared/tools/postfix` (beside the repository), or with `--sink aiosmtpd` mailer's
`start_sink(RecordingHandler())` in a process of its own (which counts what it got).

Each measurement runs in a fresh child process (a fresh send log file each time), interleaved
and repeated `--repeat` times:

* mailer, log on: `Delivery(campaign, log, SendOptions()).prepare()` (reported apart as
  "prepare"), then `asyncio.run(delivery.send())`, the timed send phase: what
  `mailer send --yes` does;
* mailer, log off: `campaign.check()` untimed (the same warm-up: every letter built once),
  then `Sender(settings, NoLog()).run(campaign.letters(campaign.recipients()))`, the same
  letters rendered, taken from the list as a live send takes them, and sent, nothing
  recorded;
  both at each `--concurrency` (1, 4, 16) and, with `--uvloop`, on uvloop's loop too. The CPU
  is the child's process CPU (every thread) over the same phase, plus that of the send log's
  writer process (mailer/logwriter.py), which ends with the phase;
* mailmerge `--no-dry-run --no-limit` (one SMTP connection per letter, one at a time) on the
  first min(N, 3000) letters (`--mailmerge-letters`), output to /dev/null; its start-up (the
  same command with `--limit 0`) is measured too and subtracted;
* `smtp-source -s 16 -m N -l SIZE` (a new connection per message, as its default) and
  `smtp-source -d -s C` (connections kept, like mailer's) at each concurrency, SIZE being the
  mean size of our letters: the ceiling of this machine and sink.

It prints a table of medians: tool, concurrency, letters/s [min-max of the runs], wall
seconds, client CPU seconds and CPU microseconds per letter, the sink's CPU seconds (when it
started the sink), and the ratio of the rate to mailmerge's; then the log's cost per
concurrency (send phase wall and CPU, and prepare + send against log off), against the goal:
at most 10%, judged on a 95% interval of the median of the back-to-back pairs' ratios, per
row and for all pairs together ("too noisy to tell" while the interval spans 10%; it takes
at least 6 runs). Exit status 0 unless a run fails or sends fewer letters than asked.

With `--profile`, it measures nothing but profiles one log-on send (`--profile-concurrency`,
default 16; `--profile-log off` for the log-off path): py-spy attaches to the child once
`prepare()` is done and samples every thread (not the send log's writer process), then
it prints the top functions by own time and the share of each part (rendering, aiosmtplib,
send log/sqlite, asyncio, ...); pyinstrument profiles the send phase in the main thread.

The mailer package is copied into the work folder first and put first on PYTHONPATH, so every
run measures the same code even while the working tree changes (`--live` uses the installed
one); the first line names the commit and a hash of the copied sources.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common import (
    FROM_ADDRESS,
    REPO,
    SENDER_NAME,
    BenchError,
    executable,
    git_state,
    mailmerge_template,
    snapshot,
    write_recipients,
)

TEMPLATE = REPO / "templates" / "letter.txt"
POSTFIX = REPO.parent / "shared" / "tools" / "postfix"
SOURCE_TO = "sink@example.net"
MAILMERGE_LETTERS = 3000
GOAL_LOG_COST = 10.0  # percent
CHILD_TIMEOUT = 1800.0


T = TypeVar("T")


# --- the campaign ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """The temporary campaign folder and everything in it."""

    root: Path
    csv: Path
    mailmerge_csv: Path
    mailmerge_template: Path
    source: Path | None  # a copy of the mailer package, put first on PYTHONPATH

    def log(self, label: str) -> Path:
        return self.root / f"log-{label}.sqlite3"

    def mailmerge_conf(self, host: str, port: int) -> Path:
        path = self.root / f"mailmerge-{port}.conf"
        # No `security` key: no login, no TLS, no password prompt.
        path.write_text(f"[smtp_server]\nhost = {host}\nport = {port}\nratelimit = 0\n",
                        encoding="utf-8")
        return path


# --- the measured work, run in a child process ----------------------------------------------

def run_loop(coroutine: Coroutine[Any, Any, T], loop: str) -> T:
    """`asyncio.run(coroutine)`, on uvloop's event loop if `loop == "uvloop"`."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


def cpu_split() -> tuple[float, float, float]:
    """User and system CPU seconds of this process (all threads) and of its children that
    have ended (the send log's writer process) so far, and the children's part of them."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime,
            children.ru_utime + children.ru_stime)


def child_mailer(args: argparse.Namespace) -> dict[str, Any]:
    """One send of the whole campaign; figures of the send phase (and prepare) as a dict."""
    from mailer.campaign import Campaign
    from mailer.delivery import Delivery, SendOptions
    from mailer.outcome import Status
    from mailer.sender import NoLog, Sender, SendSummary
    from mailer.sendlog import SendLog
    from mailer.settings import Rate, Settings

    host, _, port = args.server.rpartition(":")
    settings = Settings.model_validate({
        "from_address": FROM_ADDRESS, "sender_name": SENDER_NAME, "rate": Rate(0),
        "smtp_host": host, "smtp_port": int(port), "concurrency": args.concurrency})
    found: dict[str, Any] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    campaign = Campaign(settings, args.csv, TEMPLATE)
    delivery = None
    if args.log == "on":
        delivery = Delivery(campaign, args.log_path, SendOptions())
        found.update(due=delivery.prepare().due)
    else:
        # The same warm-up as prepare() (every letter built once): caches filled by it (the
        # template's, quoted-printable lines, checked domains) serve both sends alike.
        campaign.check()
    found.update(prepare_s=time.perf_counter() - started,
                 prepare_cpu=time.process_time() - cpu_started)
    profiler = _start_profiler(args)
    user, system, writer = cpu_split()
    started = time.perf_counter()
    summary: SendSummary
    if delivery is not None:
        try:
            summary = run_loop(delivery.send(), args.loop)
        finally:
            delivery.close()
    else:
        # As a live send takes them: one at a time from the list. (It matters: when the live
        # send took them in chunks of 256 and this did not, the two differed by 8% at 16.)
        summary = run_loop(Sender(settings, NoLog()).run(campaign.letters(campaign.recipients())),
                           args.loop)
    send_s = time.perf_counter() - started
    user_end, system_end, writer_end = cpu_split()
    _stop_profiler(profiler, args)
    found.update(send_s=send_s, send_cpu=user_end - user + system_end - system,
                 writer_cpu=writer_end - writer,
                 user=user_end - user, sys=system_end - system,
                 sent=summary.counts[Status.SENT], total=summary.total,
                 counts={str(k): v for k, v in summary.counts.items()})
    if delivery is not None:
        log = SendLog.open(args.log_path, create=False)
        try:
            found["logged_sent"] = log.summary(campaign.name).counts.get(Status.SENT, 0)
        finally:
            log.close()
    return found


def _start_profiler(args: argparse.Namespace) -> Any:
    """Start pyinstrument, or signal the parent that py-spy may attach now."""
    if args.profile == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        return profiler
    if args.profile == "py-spy":
        ready, go = args.result.with_suffix(".ready"), args.result.with_suffix(".go")
        ready.write_text(str(os.getpid()), encoding="utf-8")
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return None


def _stop_profiler(profiler: Any, args: argparse.Namespace) -> None:
    if profiler is None:
        return
    profiler.stop()
    out = args.result.with_suffix(".pyinstrument.txt")
    out.write_text(profiler.output_text(show_all=False, unicode=False, color=False)
                   + "\n\n--- flat, own time ---\n\n"
                   + profiler.output_text(flat=True, unicode=False, color=False),
                   encoding="utf-8")


def child_info(args: argparse.Namespace) -> dict[str, Any]:
    """The mean size of the first letters (for smtp-source -l) and the first one's head."""
    from mailer.campaign import Campaign
    from mailer.settings import Rate, Settings

    settings = Settings.model_validate({"from_address": FROM_ADDRESS, "sender_name": SENDER_NAME,
                                        "rate": Rate(0)})
    campaign = Campaign(settings, args.csv, TEMPLATE)
    sizes: list[int] = []
    head = ""
    for letter in campaign.letters(campaign.recipients()):
        if not sizes:
            head = letter.data.partition(b"\r\n\r\n")[0].decode("ascii")
        sizes.append(len(letter.data))
        if len(sizes) == 1000:
            break
    return {"size": round(statistics.mean(sizes)), "head": head}


def child_sink(args: argparse.Namespace) -> None:
    """mailer's aiosmtpd sink until SIGTERM; counts messages, keeps none (memory stays flat)."""
    from mailer.sink import Received, RecordingHandler, start_sink

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    got = [0]
    handler: RecordingHandler

    def count(message: Received) -> None:  # runs on the sink's event loop thread
        got[0] += 1
        handler.messages.clear()

    handler = RecordingHandler(on_message=count)
    host, _, port = args.server.rpartition(":")
    controller = start_sink(handler, host=host, port=int(port))
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        controller.stop()
        args.result.write_text(json.dumps({"messages": got[0],
                                           "commands": dict(handler.commands)}),
                               encoding="utf-8")


# --- running child processes ----------------------------------------------------------------

@dataclass
class Sample:
    """One measurement: wall and CPU seconds, letters, and what the child reported."""

    wall: float
    cpu: float
    letters: int
    sink_cpu: float | None = None
    found: dict[str, Any] = field(default_factory=dict)


def child_env(source: Path | None) -> dict[str, str]:
    """The environment without MAILER_* keys, with the mailer snapshot first on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILER_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source),
                                                          env.get("PYTHONPATH", "")]))
    return env


def spawn(argv: list[str], cwd: Path, source: Path | None = None) -> tuple[float, float]:
    """Run argv to completion (stdout to /dev/null); its wall time and CPU (os.wait4)."""
    errors = cwd / "stderr.txt"
    with open(os.devnull, "wb") as out, errors.open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=child_env(source),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = errors.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise BenchError(f"{' '.join(argv)} exited with {process.returncode}:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes] | None,
                   timeout: float = 120.0) -> None:
    """Wait until host:port accepts a connection (the sink may first unpack Postfix)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchError(f"the sink exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class Sink:
    """The SMTP server every tool sends to: one we start (smtp-sink or aiosmtpd), or not."""

    def __init__(self, kind: str, server: str | None, root: Path, source: Path | None) -> None:
        self.kind = kind
        self.process: subprocess.Popen[bytes] | None = None
        self.result = root / "sink.json"
        if server is not None:
            host, _, port = server.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
            self.kind = f"already running at {self.host}:{self.port}"
            wait_listening(self.host, self.port, None, timeout=5)
            return
        self.host, self.port = "127.0.0.1", free_port()
        if kind == "postfix":
            argv = [str(POSTFIX), "smtp-sink", "-u", pwd.getpwuid(os.getuid()).pw_name,
                    f"{self.host}:{self.port}", "1000"]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", "sink",
                    "--server", f"{self.host}:{self.port}", "--result", str(self.result)]
        self._errors = (root / "sink-stderr.txt").open("wb")
        self.process = subprocess.Popen(argv, cwd=root, env=child_env(source),
                                        stdin=subprocess.DEVNULL, stdout=self._errors,
                                        stderr=self._errors)
        wait_listening(self.host, self.port, self.process)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def cpu(self) -> float | None:
        """CPU seconds the sink process has used so far (None if it is not ours)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        """Stop the sink we started; what it reported (aiosmtpd: messages received)."""
        if self.process is None:
            return {}
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._errors.close()
        if self.result.exists():
            found: dict[str, Any] = json.loads(self.result.read_text(encoding="utf-8"))
            return found
        return {}


class Runner:
    """The measurements, each a fresh child process, against one workspace and sink."""

    def __init__(self, space: Workspace, sink: Sink, letters: int, mailmerge_letters: int,
                 letter_size: int) -> None:
        self.space = space
        self.sink = sink
        self.letters = letters
        self.mailmerge_letters = mailmerge_letters
        self.letter_size = letter_size
        self.result = space.root / "result.json"
        self.sent_total = 0
        self._runs = 0

    def _measured(self, work: Callable[[], Sample]) -> Sample:
        before = self.sink.cpu()
        sample = work()
        after = self.sink.cpu()
        if before is not None and after is not None:
            sample.sink_cpu = after - before
        return sample

    def child_argv(self, mode: str, *extra: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", mode,
                "--csv", str(self.space.csv), "--result", str(self.result),
                "--server", self.sink.address, *extra]

    def mailer(self, log: str, concurrency: int, loop: str) -> Sample:
        self._runs += 1
        log_path = self.space.log(str(self._runs))

        def work() -> Sample:
            self.result.unlink(missing_ok=True)
            argv = self.child_argv("mailer", "--log", log, "--concurrency", str(concurrency),
                                   "--loop", loop, "--log-path", str(log_path))
            spawn(argv, self.space.root, self.space.source)
            found = json.loads(self.result.read_text(encoding="utf-8"))
            return Sample(found["send_s"], found["send_cpu"], found["sent"], found=found)

        try:
            sample = self._measured(work)
        finally:
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{log_path}{suffix}").unlink(missing_ok=True)
        found = sample.found
        if found["sent"] != self.letters or found["total"] != self.letters:
            raise BenchError(f"mailer (log {log}, concurrency {concurrency}) sent "
                             f"{found['counts']}; expected {self.letters} sent")
        if log == "on" and found["logged_sent"] != self.letters:
            raise BenchError(f"the send log says {found['logged_sent']} sent, not "
                             f"{self.letters}")
        self.sent_total += self.letters
        return sample

    def _mailmerge(self, *extra: str) -> tuple[float, float]:
        space = self.space
        argv = [executable("mailmerge"), "--template", str(space.mailmerge_template),
                "--database", str(space.mailmerge_csv),
                "--config", str(space.mailmerge_conf(self.sink.host, self.sink.port)),
                "--no-dry-run", "--output-format", "raw", *extra]
        return spawn(argv, space.root)

    def mailmerge(self) -> Sample:
        def work() -> Sample:
            wall, cpu = self._mailmerge("--no-limit")
            return Sample(wall, cpu, self.mailmerge_letters)

        sample = self._measured(work)
        self.sent_total += self.mailmerge_letters
        return sample

    def mailmerge_startup(self) -> Sample:
        wall, cpu = self._mailmerge("--limit", "0")
        return Sample(wall, cpu, 0)

    def smtp_source(self, sessions: int, keep: bool) -> Sample:
        def work() -> Sample:
            argv = [str(POSTFIX), "smtp-source", *(["-d"] if keep else []),
                    "-s", str(sessions), "-m", str(self.letters), "-l", str(self.letter_size),
                    "-f", FROM_ADDRESS, "-t", SOURCE_TO, self.sink.address]
            wall, cpu = spawn(argv, self.space.root)
            return Sample(wall, cpu, self.letters)

        sample = self._measured(work)
        self.sent_total += self.letters
        return sample


# --- the report -----------------------------------------------------------------------------

@dataclass
class Row:
    """Every sample of one kind of measurement."""

    tool: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    net_of: Row | None = None  # subtract this row's medians (start-up)

    def median(self, pick: Callable[[Sample], float]) -> float:
        value = statistics.median(pick(s) for s in self.samples)
        if self.net_of is not None and self.net_of.samples:
            value -= self.net_of.median(pick)
        return value

    @property
    def letters(self) -> int:
        return self.samples[0].letters

    @property
    def wall(self) -> float:
        return self.median(lambda s: s.wall)

    @property
    def cpu(self) -> float:
        return self.median(lambda s: s.cpu)

    @property
    def rate(self) -> float:
        return self.letters / self.wall

    def rate_range(self) -> str:
        offset = self.net_of.wall if self.net_of is not None and self.net_of.samples else 0.0
        rates = [s.letters / (s.wall - offset) for s in self.samples]
        return f"{min(rates):,.0f}-{max(rates):,.0f}"

    @property
    def sink_cpu(self) -> float | None:
        values = [s.sink_cpu for s in self.samples if s.sink_cpu is not None]
        return statistics.median(values) if values else None

    def found(self, key: str) -> float:
        return statistics.median(float(s.found[key]) for s in self.samples)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def median_interval(values: list[float], confidence: float = 0.95
                    ) -> tuple[float, float] | None:
    """An interval that holds the median of what `values` sample with at least `confidence`,
    assuming nothing of their distribution: the k-th smallest and k-th largest value, for the
    largest k that Binomial(n, 1/2) allows; None when even the whole range cannot (for 95%,
    under 6 values)."""
    ordered = sorted(values)
    n = len(ordered)
    k, tail = 0, 0.0
    while k < n // 2:
        tail += math.comb(n, k) / 2 ** n  # P(at most k of the n fall below the median)
        if 1 - 2 * tail < confidence:
            break
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def judge(values: list[float]) -> tuple[str, str]:
    """The log-cost goal, judged on a 95% interval of the paired median: the interval as
    text, and the verdict."""
    interval = median_interval(values)
    if interval is None:
        return "", "too few runs to tell (6 needed)"
    low, high = interval
    text = f"{low:+.1f}..{high:+.1f}"
    if high <= GOAL_LOG_COST:
        return text, "met"
    if low > GOAL_LOG_COST:
        return text, "NOT met"
    return text, "too noisy to tell"


def report(rows: list[Row], mailmerge: Row | None, logs: dict[tuple[str, int], tuple[Row, Row]],
           sink: Sink) -> str:
    """The results table, then the log's cost per concurrency."""
    base = mailmerge.rate if mailmerge is not None and mailmerge.samples else None
    table = []
    for row in rows:
        if not row.samples:
            continue
        sink_cpu = row.sink_cpu
        sends = row.letters > 0  # the start-up row sends nothing
        table.append([
            row.tool, str(row.concurrency), f"{row.letters:,}",
            f"{row.rate:,.0f}" if sends else "", row.rate_range() if sends else "",
            f"{row.wall:.2f}", f"{row.cpu:.2f}",
            f"{row.cpu / row.letters * 1e6:,.0f}" if sends else "",
            "" if sink_cpu is None else f"{sink_cpu:.2f}",
            f"{row.rate / base:.2f}x" if base and sends else ""])
    out = [render_table(["tool", "conc", "letters", "letters/s", "[min-max]", "wall s",
                         "CPU s", "CPU us/letter", "sink CPU s", "vs mailmerge"], table)]
    prepared = [r for r in rows if r.samples and "prepare_s" in r.samples[0].found]
    if prepared:
        out.append("\nprepare phase (log on: check every letter, register them all, count "
                   "what is due; log off: the same check, nothing registered):")
        for row in prepared:
            out.append(f"  {row.tool}, concurrency {row.concurrency}: "
                       f"{row.found('prepare_s'):.2f} s wall, {row.found('prepare_cpu'):.2f} s "
                       f"CPU ({row.letters / row.found('prepare_s'):,.0f} letters/s)")
    if logs:
        out.append(f"\nlog cost (log on vs log off, medians; goal: at most {GOAL_LOG_COST:g}% "
                   "of the send phase, paired):")
        cost_rows = []
        pooled: list[float] = []
        for (loop, concurrency), (on, off) in logs.items():
            if not on.samples or not off.samples:
                continue
            wall = (on.wall / off.wall - 1) * 100
            # Each run's log-on and log-off sends ran back to back: their ratio is less
            # disturbed by other load on the machine than the ratio of the medians.
            ratios = [(a.wall / b.wall - 1) * 100
                      for a, b in zip(on.samples, off.samples, strict=True)]
            paired = statistics.median(ratios)
            interval, verdict = judge(ratios)
            pooled += ratios
            cpu = (on.cpu / off.cpu - 1) * 100
            added = (on.cpu - off.cpu) / on.letters * 1e6
            writer = on.found("writer_cpu") / on.letters * 1e6
            whole = ((on.wall + on.found("prepare_s"))
                     / (off.wall + off.found("prepare_s")) - 1) * 100
            cost_rows.append([loop, str(concurrency), f"{off.rate:,.0f}", f"{on.rate:,.0f}",
                              f"{wall:+.1f}%", f"{paired:+.1f}%", interval,
                              f"{cpu:+.1f}%", f"{added:+,.0f}", f"{writer:,.0f}",
                              f"{whole:+.1f}%", verdict])
        out.append(render_table(["loop", "conc", "off letters/s", "on letters/s",
                                 "send wall", "paired", "[95% interval]", "send CPU",
                                 "CPU us/letter", "writer's", "prepare+send wall", "goal"],
                                cost_rows))
        if len(cost_rows) > 1:
            interval, verdict = judge(pooled)
            out.append(f"all {len(pooled)} pairs together: {statistics.median(pooled):+.1f}% "
                       f"[{interval}]: {verdict}")
        out.append("(send wall: ratio of the medians; paired: median of each run's on/off "
                   "ratio, with a 95% interval for it (distribution-free, from the ranks of "
                   "the pairs); the goal is met when the whole interval is within it, not "
                   "met when the whole interval is beyond it; CPU us/letter: what the log "
                   "adds to each letter's client CPU; writer's: the part of it the writer "
                   "process used, on the other core)")
    out.append(f"\nsink: {sink.kind} at {sink.address}")
    return "\n".join(out)


# --- profiling ------------------------------------------------------------------------------

# Leaf frames (own time) that are waits, not work: py-spy's idle detection misses some.
WAITS = ("select (selectors.py", "_worker (concurrent/futures/thread.py", "epoll_wait",
         "wait (threading.py", "_start_profiler (")  # matched anywhere in the leaf frame
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("send log (mailer/sendlog.py, recorder.py, journal.py, delivery select, sqlite3)",
     ("mailer/sendlog.py", "mailer/recorder.py", "mailer/journal.py", "mailer/logwriter.py",
      "mailer/delivery.py", "sqlite3/", "libsqlite3", "_sqlite3")),
    ("rendering (template, recipients, message, jinja2, pydantic, csv)",
     ("mailer/template.py", "mailer/message.py", "mailer/recipients.py", "mailer/campaign.py",
      "mailer/addresses.py", "jinja2/", "pydantic", "email_validator/", "idna/", "csv.py")),
    ("aiosmtplib", ("aiosmtplib/",)),
    ("mailer sender/smtp glue", ("mailer/sender.py", "mailer/smtp.py", "mailer/ratelimit.py")),
    ("asyncio event loop, futures, threads", ("asyncio/", "uvloop/", "threading.py",
                                                "concurrent/futures", "selectors.py")),
]
SOCKET = ("_SelectorSocketTransport.write (", "_read_ready__data_received (",
          "send (libc", "recv (libc", "sock_send", "sock_recv")


def category(stack: list[str]) -> str:
    """What a sample is doing (stack leaf first): a wait, a socket call, or the innermost
    known part (stdlib `re` called from mailer/message.py counts as rendering)."""
    if any(wait in stack[0] for wait in WAITS):
        return "waiting (epoll, idle pool threads)"
    if stack[0].startswith(SOCKET):
        return "socket send/recv calls (kernel loopback TCP)"
    for frame in stack:
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other (interpreter, stdlib)"


def summarize_collapsed(path: Path, top: int) -> str:
    """Time per part and own time per function, from py-spy's collapsed (raw) stacks, for
    the event loop's thread and for the other threads (aiosmtpd's, a pool's)."""
    own: dict[str, Counter[str]] = {"main": Counter(), "other": Counter()}
    parts: dict[str, Counter[str]] = {"main": Counter(), "other": Counter()}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        frames = [f for f in stack_text.split(";") if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        thread = "other" if any("Thread._bootstrap" in f for f in frames) else "main"
        leaf_first = frames[::-1]
        own[thread][_short(leaf_first[0])] += int(count_text)
        parts[thread][category(leaf_first)] += int(count_text)
    out = []
    for thread, title in (("main", "event loop thread"), ("other", "other threads")):
        total = sum(parts[thread].values())
        if not total:
            continue
        out += [f"{title}: {total} samples ({total / 250:.1f} s at 250 Hz)", "  share by part:"]
        out += [f"    {n / total:6.1%}  {name}" for name, n in parts[thread].most_common()]
        shown = top if thread == "main" else min(top, 8)
        out += [f"  top {shown} functions by own time:"]
        out += [f"    {n / total:6.1%}  {name}" for name, n in own[thread].most_common(shown)]
        out.append("")
    return "\n".join(out) if out else "py-spy recorded no samples"


def _short(frame: str) -> str:
    """`send (aiosmtplib/protocol.py:123)` -> `send (aiosmtplib/protocol.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3", "src/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3":
                where = where.partition("/")[2]
    return f"{name} ({where})" if where else name


def profile(args: argparse.Namespace, space: Workspace, sink: Sink) -> None:
    """One profiled send (no timing table): py-spy on every thread, or pyinstrument."""
    result = space.root / "profile.json"
    log_path = space.log("profile")
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "mailer",
            "--csv", str(space.csv), "--result", str(result), "--server", sink.address,
            "--log", args.profile_log, "--concurrency", str(args.profile_concurrency),
            "--loop", "uvloop" if args.uvloop else "asyncio", "--log-path", str(log_path),
            "--profile", args.profile]
    print(f"profiling with {args.profile}: mailer send, log {args.profile_log}, concurrency "
          f"{args.profile_concurrency}, {args.letters:,} letters", flush=True)
    if args.profile == "pyinstrument":
        spawn(argv, space.root, space.source)
        text = result.with_suffix(".pyinstrument.txt").read_text(encoding="utf-8")
        kept = args.keep or Path.cwd()
        out = Path(kept) / "send-profile-pyinstrument.txt"
        out.write_text(text, encoding="utf-8")
        print(text[:20000])
        print(f"\n(full text: {out})")
    else:
        raw = Path(args.keep or Path.cwd()) / "send-profile-py-spy.txt"
        ready, go = result.with_suffix(".ready"), result.with_suffix(".go")
        with (space.root / "stderr.txt").open("wb") as err:
            process = subprocess.Popen(argv, cwd=space.root, env=child_env(space.source),
                                       stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            deadline = time.monotonic() + CHILD_TIMEOUT
            while not ready.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the profiled child stopped before sending; see "
                                     f"{space.root / 'stderr.txt'}")
                time.sleep(0.02)
            spy = subprocess.Popen([executable("py-spy"), "record", "--pid",
                                    ready.read_text(encoding="utf-8"), "--rate", "250",
                                    "--format", "raw", "--output", str(raw),
                                    *(["--native"] if args.native else []),
                                    *(["--idle"] if args.idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let it attach
            go.touch()
            status = process.wait(timeout=CHILD_TIMEOUT)
            _, spy_err = spy.communicate(timeout=60)
        if status != 0:
            raise BenchError(f"the profiled child exited with {status}")
        if not raw.exists():
            raise BenchError(f"py-spy wrote nothing: {spy_err.decode(errors='replace')}")
        print(summarize_collapsed(raw, args.top))
        print(f"\n(collapsed stacks: {raw}; e.g. flamegraph.pl or speedscope.app)")
    found = json.loads(result.read_text(encoding="utf-8"))
    print(f"\nsend phase under the profiler: {found['send_s']:.2f} s wall, "
          f"{found['send_cpu']:.2f} s CPU (user {found['user']:.2f}, sys {found['sys']:.2f}), "
          f"{found['sent']:,} sent")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--letters", type=int, default=5_000, help="letters to send (5,000)")
    parser.add_argument("--repeat", type=int, default=10,
                        help="runs of each measurement (10: many short runs, back to back, "
                        "give a steadier log cost than a few long ones)")
    parser.add_argument("--concurrency", default="1,4,16",
                        help="mailer's concurrencies, comma-separated (1,4,16)")
    parser.add_argument("--server", metavar="HOST:PORT", help="an SMTP sink already running")
    parser.add_argument("--sink", choices=["postfix", "aiosmtpd"], default="postfix",
                        help="the sink to start when there is no --server (postfix smtp-sink)")
    parser.add_argument("--uvloop", action="store_true",
                        help="also run mailer on uvloop's event loop (--profile: only uvloop)")
    parser.add_argument("--mailmerge-letters", type=int, default=MAILMERGE_LETTERS,
                        help="letters mailmerge sends: min(N, this) (3000); 0 = no mailmerge")
    parser.add_argument("--no-smtp-source", action="store_true", help="skip smtp-source")
    parser.add_argument("--live", action="store_true",
                        help="use the installed mailer, not a snapshot of it")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--profile", choices=["py-spy", "pyinstrument"],
                        help="profile one mailer send instead of the benchmark")
    parser.add_argument("--profile-concurrency", type=int, default=16)
    parser.add_argument("--profile-log", choices=["on", "off"], default="on")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--idle", action="store_true",
                        help="py-spy --idle (also waiting threads: where the wall time goes)")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    # The child processes' own arguments.
    parser.add_argument("--child", choices=["mailer", "info", "sink"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--log-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and args.concurrency:
        args.concurrencies = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    elif args.child == "mailer":
        args.concurrency = int(args.concurrency)
    return args


def run_child(args: argparse.Namespace) -> None:
    if args.child == "sink":
        child_sink(args)
        return
    found = child_mailer(args) if args.child == "mailer" else child_info(args)
    args.result.write_text(json.dumps(found), encoding="utf-8")


def benchmark(args: argparse.Namespace, space: Workspace, sink: Sink, letter_size: int) -> None:
    mailmerge_letters = min(args.letters, args.mailmerge_letters)
    runner = Runner(space, sink, args.letters, mailmerge_letters, letter_size)
    loops = ["asyncio", "uvloop"] if args.uvloop else ["asyncio"]
    rows: list[Row] = []
    logs: dict[tuple[str, int], tuple[Row, Row]] = {}
    for loop in loops:
        for concurrency in args.concurrencies:
            suffix = "" if loop == "asyncio" else ", uvloop"
            on = Row(f"mailer, log on{suffix}", concurrency)
            off = Row(f"mailer, log off{suffix}", concurrency)
            rows += [on, off]
            logs[(loop, concurrency)] = (on, off)
    mailmerge = startup = gross = None
    if mailmerge_letters:
        startup = Row("mailmerge start-up (--limit 0)", 1)
        gross = Row("mailmerge, with start-up", 1)
        mailmerge = Row("mailmerge, net of start-up", 1, net_of=startup)
        rows += [gross, mailmerge, startup]
    sources: list[tuple[Row, int, bool]] = []
    if not args.no_smtp_source:
        sources.append((Row("smtp-source (new connection per letter)", 16), 16, False))
        sources += [(Row("smtp-source -d (connections kept)", c), c, True)
                    for c in args.concurrencies]
        rows += [row for row, _, _ in sources]
    for repeat in range(1, args.repeat + 1):
        print(f"run {repeat}/{args.repeat} ...", flush=True)
        for (loop, concurrency), (on, off) in logs.items():
            # Alternate which goes first, so neither always follows the same neighbour.
            for row, log in ((on, "on"), (off, "off"))[::1 if repeat % 2 else -1]:
                sample = runner.mailer(log, concurrency, loop)
                row.samples.append(sample)
                print(f"  {row.tool:<28} conc {concurrency:>2}: "
                      f"{sample.letters / sample.wall:7,.0f} letters/s, {sample.wall:6.2f} s, "
                      f"CPU {sample.cpu:6.2f} s, prepare {sample.found['prepare_s']:.2f} s",
                      flush=True)
        if mailmerge is not None and startup is not None and gross is not None:
            sample = runner.mailmerge()
            mailmerge.samples.append(sample)
            gross.samples.append(sample)
            startup.samples.append(runner.mailmerge_startup())
            print(f"  mailmerge: {sample.letters / sample.wall:,.0f} letters/s with start-up "
                  f"({sample.wall:.2f} s), start-up {startup.samples[-1].wall:.2f} s",
                  flush=True)
        for row, sessions, keep in sources:
            sample = runner.smtp_source(sessions, keep)
            row.samples.append(sample)
            print(f"  {row.tool}: -s {sessions}: {sample.letters / sample.wall:,.0f} letters/s",
                  flush=True)
    sink_found = sink.stop()
    print()
    print(f"{args.letters:,} letters of {letter_size:,} bytes (mean), medians of {args.repeat} "
          "runs; mailer's wall and CPU are the send phase only, in the child; mailmerge's and "
          "smtp-source's are whole processes (os.wait4)")
    print(report(rows, mailmerge, logs, sink))
    if "messages" in sink_found:
        print(f"aiosmtpd sink received {sink_found['messages']:,} messages "
              f"(expected {runner.sent_total:,})")
        if sink_found["messages"] < runner.sent_total:
            raise BenchError("the sink received fewer messages than were sent")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        run_child(args)
        return 0
    if args.letters < 1 or args.repeat < 1:
        raise SystemExit("--letters and --repeat must be at least 1")
    if args.server is None and args.sink == "postfix" and not POSTFIX.exists():
        raise SystemExit(f"{POSTFIX} is missing; use --sink aiosmtpd or --server HOST:PORT")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mailer-send-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        source, digest = (None, "installed") if args.live else snapshot(root)
        print(f"mailer {git_state()} (sources {digest}), Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
        mailmerge_letters = min(args.letters, args.mailmerge_letters)
        space = Workspace(root, root / "recipients.csv", root / "mailmerge_database.csv",
                          root / "mailmerge_template.txt", source)
        write_recipients(space.csv, args.letters, space.mailmerge_csv, mailmerge_letters)
        space.mailmerge_template.write_text(mailmerge_template(TEMPLATE), encoding="utf-8")
        info_path = root / "info.json"
        spawn([sys.executable, str(Path(__file__).resolve()), "--child", "info",
               "--csv", str(space.csv), "--result", str(info_path)], root, source)
        info = json.loads(info_path.read_text(encoding="utf-8"))
        sink = Sink(args.sink, args.server, root, source)
        try:
            if args.profile:
                profile(args, space, sink)
            else:
                benchmark(args, space, sink, int(info["size"]))
        finally:
            sink.stop()
    except BenchError as error:
        print(f"bench/send.py: {error}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
