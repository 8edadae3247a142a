"""Render benchmark: mailer's check + dry run against mailmerge 2.x, on the same letters.

Run it from the repository root with the project's venv (mailer installed, plus
`pip install -e '.[bench]'` for mailmerge)::

    python bench/render.py                               # 100,000 recipients, 3 runs each
    python bench/render.py --rows 20000 --repeat 5
    python bench/render.py --rows 1000000 --no-outbox    # the memory goal: < 150 MB peak
    python bench/render.py --cli                         # also time the real `mailer` commands
    python bench/render.py --rows 20000 --profile        # cProfile of check + dry run, no timing

It writes N synthetic recipients (columns email,title,name,country; unique addresses at
example.org / example.net subdomains; about 40% non-ASCII names) into a temporary folder,
with a mailmerge template equivalent to templates/letter.txt, and checks that both tools
render the same first letter. Then, each measurement in a process of its own (so the peak RSS
that `os.wait4` reports, i.e. getrusage's ru_maxrss of that child, is that measurement's
alone), interleaved and repeated `--repeat` times:

* mailer, check + dry run: `Campaign(settings, csv, template).check()`, then every letter
  written with `write_outbox(campaign.letters(campaign.recipients()), outbox)`, which is what
  `mailer check` followed by `mailer send --dry-run` does (timed inside the child: no
  interpreter start-up or imports);
* mailer, render only: `Campaign.check()` alone, which builds every letter and keeps none;
* mailmerge: `mailmerge --no-limit --dry-run --output-format raw` on min(N, 20,000) rows
  (`--mailmerge-rows`), stdout to /dev/null; its start-up (the same command with `--limit 0`)
  is measured too and subtracted, so both tools' rates exclude start-up;
* with `--cli`: `mailer check` and `mailer send --dry-run` as subprocesses (wall time, and
  net of the start-up of `mailer --version`).

It prints a table: median seconds with [min-max], letters/second from the medians, peak RSS
(the largest of the runs) in MB, then the ratios mailer/mailmerge and the memory goal.
The exit status is 0 unless a run fails or renders something unexpected.

The parent process imports nothing but the standard library, on purpose: on Linux a child's
ru_maxrss starts at its parent's high-water mark (it survives the exec), so a heavy parent
would inflate every child's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from mailer.settings import Rate, Settings

TEMPLATE = REPO / "templates" / "letter.txt"
MAILMERGE_ROWS = 20_000
GOAL_RATIO = 1.5
GOAL_MB = 150
GOAL_ROWS = 1_000_000

# --- synthetic data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """The temporary campaign folder and everything in it."""

    root: Path
    csv: Path
    mailmerge_csv: Path
    template: Path
    mailmerge_template: Path
    mailmerge_conf: Path
    env_file: Path
    source: Path | None = None  # a copy of the mailer package, put first on PYTHONPATH

    def outbox(self, name: str) -> Path:
        return self.root / f"outbox-{name}"


def prepare(root: Path, rows: int, mailmerge_rows: int, template: Path,
            source: Path | None) -> Workspace:
    """Write the recipient lists, the mailmerge template and config, and a .env for mailer."""
    space = Workspace(root, root / "recipients.csv", root / "mailmerge_database.csv", template,
                      root / "mailmerge_template.txt", root / "mailmerge_server.conf",
                      root / ".env", source)
    write_recipients(space.csv, rows, space.mailmerge_csv, mailmerge_rows)
    space.mailmerge_template.write_text(mailmerge_template(template), encoding="utf-8")
    # Dry runs never connect; mailmerge still wants a config file.
    space.mailmerge_conf.write_text("[smtp_server]\nhost = 127.0.0.1\nport = 2525\n"
                                    "ratelimit = 0\n", encoding="utf-8")
    space.env_file.write_text(f"MAILER_FROM={FROM_ADDRESS}\nMAILER_SENDER_NAME={SENDER_NAME}\n"
                              "MAILER_RATE=0\n", encoding="utf-8")
    return space


# --- the measured work, run in a child process ----------------------------------------------

def make_settings(settings: type[Settings], rate: type[Rate]) -> Settings:
    """The settings `.env` gives the CLI (validated as pydantic would from the environment)."""
    return settings.model_validate({"from_address": FROM_ADDRESS, "sender_name": SENDER_NAME,
                                    "rate": rate(0)})


def write_files(count: int, size: int, outbox: Path) -> float:
    """Seconds to write `count` files of `size` bytes as write_outbox does: the file system's
    share of a dry run, without mailer."""
    data = b"x" * (size - 2) + b"\r\n"
    start = time.perf_counter()
    outbox.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        (outbox / f"{index:05d}-recipient.{index}@parliament3.example.org.eml").write_bytes(data)
    return time.perf_counter() - start


def child(mode: str, csv_path: Path, template: Path, outbox: Path, result: Path,
          count: int = 0, size: int = 0) -> None:
    """One measurement (imports mailer here, never in the parent); results as JSON."""
    if mode == "files":
        seconds = write_files(count, size, outbox)
        result.write_text(json.dumps({"files_s": seconds, "problems": 0, "letters": count}),
                          encoding="utf-8")
        return
    from mailer.campaign import Campaign
    from mailer.outbox import write_outbox
    from mailer.settings import Rate, Settings

    settings = make_settings(Settings, Rate)
    if mode == "first":
        campaign = Campaign(settings, csv_path, template)
        result.write_bytes(next(iter(campaign.letters(campaign.recipients()))).data)
        return
    start = time.perf_counter()
    campaign = Campaign(settings, csv_path, template)
    report = campaign.check()
    checked = time.perf_counter()
    found: dict[str, Any] = {"rows": report.rows, "letters": report.letters,
                             "problems": report.problem_count, "check_s": checked - start}
    if mode == "dryrun":
        recipients = campaign.recipients()
        written = sum(1 for _ in write_outbox(campaign.letters(recipients), outbox))
        found["write_s"] = time.perf_counter() - checked
        found["written"] = written
        found["problems"] += recipients.problem_count
        found["eml_files"] = sum(1 for entry in os.scandir(outbox) if entry.name.endswith(".eml"))
    result.write_text(json.dumps(found), encoding="utf-8")


# --- running and measuring child processes --------------------------------------------------

@dataclass
class Sample:
    """One child process: wall seconds, ru_maxrss in KiB, and what the child reported."""

    wall: float
    peak_kib: int
    found: dict[str, Any] = field(default_factory=dict)
    floor_kib: int = 0  # this parent's own peak when it started the child

    @property
    def bounded(self) -> bool:
        """True when the figure may be the parent's, inherited, not the child's own."""
        return self.peak_kib <= self.floor_kib


def own_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def remove_folder(folder: Path) -> None:
    """Delete a flat folder of files without listing it into memory (shutil.rmtree would,
    and raise this parent's high-water mark, which every later child inherits)."""
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    folder.rmdir()


def child_env(source: Path | None) -> dict[str, str]:
    """The environment without MAILER_* keys (only the workspace's .env applies), with the
    mailer snapshot first on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILER_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source),
                                                          env.get("PYTHONPATH", "")]))
    return env


def spawn(argv: list[str], cwd: Path, stdout: Path | None = None,
          source: Path | None = None) -> Sample:
    """Run argv to completion; its wall time and peak RSS (os.wait4, this child alone)."""
    errors = cwd / "stderr.txt"
    with (open(os.devnull if stdout is None else stdout, "wb") as out,
          errors.open("wb") as err):
        floor = own_peak_kib()
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=child_env(source),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = errors.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise BenchError(f"{' '.join(argv)} exited with {process.returncode}:\n{tail}")
    return Sample(wall, usage.ru_maxrss, floor_kib=floor)


class Runner:
    """The measurements, each a fresh child process, against one workspace."""

    def __init__(self, space: Workspace, rows: int, mailmerge_rows: int) -> None:
        self.space = space
        self.rows = rows
        self.mailmerge_rows = mailmerge_rows
        self.result = space.root / "result.json"
        self._letter_size = 0

    def _child(self, mode: str, outbox: Path, *extra: str) -> Sample:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
                "--csv", str(self.space.csv), "--template", str(self.space.template),
                "--outbox", str(outbox), "--result", str(self.result), *extra]
        sample = spawn(argv, self.space.root, source=self.space.source)
        if mode != "first":
            sample.found = json.loads(self.result.read_text(encoding="utf-8"))
            if sample.found["problems"] or sample.found["letters"] != self.rows:
                raise BenchError(f"mailer {mode}: {sample.found}; expected {self.rows} letters "
                                 "and no problems")
        return sample

    def mailer_dry_run(self) -> Sample:
        outbox = self.space.outbox("lib")
        try:
            sample = self._child("dryrun", outbox)
        finally:
            remove_folder(outbox)
        if sample.found["written"] != self.rows or sample.found["eml_files"] != self.rows:
            raise BenchError(f"mailer dry run wrote {sample.found}; expected {self.rows}")
        return sample

    def plain_files(self) -> Sample:
        if not self._letter_size:
            self._letter_size = len(self.mailer_first_letter())
        outbox = self.space.outbox("files")
        try:
            return self._child("files", outbox, "--count", str(self.rows),
                               "--size", str(self._letter_size))
        finally:
            remove_folder(outbox)

    def mailer_render(self) -> Sample:
        return self._child("render", self.space.outbox("unused"))

    def mailer_first_letter(self) -> bytes:
        self._child("first", self.space.outbox("unused"))
        return self.result.read_bytes()

    def _mailmerge(self, *extra: str, stdout: Path | None = None) -> Sample:
        space = self.space
        argv = [executable("mailmerge"), "--template", str(space.mailmerge_template),
                "--database", str(space.mailmerge_csv), "--config", str(space.mailmerge_conf),
                "--dry-run", "--output-format", "raw", *extra]
        return spawn(argv, space.root, stdout)

    def mailmerge(self) -> Sample:
        return self._mailmerge("--no-limit")

    def mailmerge_startup(self) -> Sample:
        return self._mailmerge("--limit", "0")

    def mailmerge_first_letter(self) -> bytes:
        out = self.space.root / "mailmerge_first.txt"
        self._mailmerge("--limit", "1", stdout=out)
        text = out.read_bytes()
        start = text.index(b">>> message 1\n") + len(b">>> message 1\n")
        return text[start:text.index(b"\n>>> message 1 sent")]

    def _mailer_cli(self, *command: str) -> Sample:
        space = self.space
        return spawn([executable("mailer"), *command, "--recipients", str(space.csv),
                      "--template", str(space.template), "--env-file", str(space.env_file)],
                     space.root, source=space.source)

    def cli_check(self) -> Sample:
        return self._mailer_cli("check")

    def cli_send(self) -> Sample:
        outbox = self.space.outbox("cli")
        try:
            sample = self._mailer_cli("send", "--dry-run", "--outbox", str(outbox))
            files = sum(1 for entry in os.scandir(outbox) if entry.name.endswith(".eml"))
        finally:
            remove_folder(outbox)
        if files != self.rows:
            raise BenchError(f"mailer send --dry-run wrote {files} letters, not {self.rows}")
        return sample

    def cli_startup(self) -> Sample:
        return spawn([executable("mailer"), "--version"], self.space.root,
                     source=self.space.source)


# --- are they the same letter? ---------------------------------------------------------------

def _decoded(message: Message, name: str) -> str:
    return str(make_header(decode_header(str(message.get(name, "")))))


def letter_summary(data: bytes) -> dict[str, Any]:
    """What a reader sees: the decoded addresses, the subject and the text.

    Headers are decoded before they are parsed as addresses: mailmerge 2.3 encodes a whole
    To header with a non-ASCII name as one encoded word, address included.
    """
    message = message_from_bytes(data.replace(b"\r\n", b"\n"))
    text = ""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            text = payload.decode(part.get_content_charset() or "ascii")
            break
    return {"To": getaddresses([_decoded(message, "To")]),
            "From": getaddresses([_decoded(message, "From")]),
            "Subject": _decoded(message, "Subject"),
            "text": "\n".join(line.rstrip() for line in text.strip().splitlines())}


def compare_letters(runner: Runner) -> list[str]:
    """Differences between the first letter as mailer and as mailmerge render it."""
    ours = letter_summary(runner.mailer_first_letter())
    theirs = letter_summary(runner.mailmerge_first_letter())
    return [f"{key}: mailer {ours[key]!r:.80} != mailmerge {theirs[key]!r:.80}"
            for key in ours if ours[key] != theirs[key]]


# --- reporting -------------------------------------------------------------------------------

@dataclass
class Series:
    """Repeated samples of one measurement; `seconds` picks the figure to time."""

    label: str
    rows: int
    seconds: Callable[[Sample], float]
    samples: list[Sample] = field(default_factory=list)
    startup: Series | None = None

    def times(self) -> list[float]:
        """Seconds per sample, less the median start-up when one is given."""
        base = self.startup.median() if self.startup is not None else 0.0
        return [max(self.seconds(sample) - base, 1e-9) for sample in self.samples]

    def median(self) -> float:
        return statistics.median(self.times())

    def rate(self) -> float:
        return self.rows / self.median()

    def peak_mb(self) -> float:
        return max(sample.peak_kib for sample in self.samples) / 1024

    def peak_text(self) -> str:
        """The peak in MB, `<=` when it is no more than the parent's (see Sample.bounded)."""
        if not self.samples[0].peak_kib:
            return ""
        top = max(self.samples, key=lambda sample: sample.peak_kib)
        return f"{'<=' if top.bounded else ''}{top.peak_kib / 1024:.1f}"


def print_table(title: str, series: list[Series]) -> None:
    print(title)
    print(f"{'':44} {'rows':>9} {'median s':>9} {'[min-max]':>15} {'letters/s':>10} "
          f"{'peak MB':>8}")
    for item in series:
        if not item.samples:
            continue
        times = item.times()
        spread = f"[{min(times):.2f}-{max(times):.2f}]"
        peak = f"{item.peak_text():>8}"
        rows = f"{item.rows:9,d}" if item.rows else ""
        rate = f"{item.rate():10,.0f}" if item.rows and item.median() >= 0.01 else ""
        print(f"{item.label:44} {rows:>9} {item.median():9.2f} {spread:>15} {rate:>10} {peak}")


# --- profiling -------------------------------------------------------------------------------

def profile(space: Workspace, top: int, tool: str) -> None:
    """Profile the check + dry-run path in this process (cProfile or pyinstrument)."""
    if space.source is not None:
        sys.path.insert(0, str(space.source))
    from mailer.campaign import Campaign
    from mailer.outbox import write_outbox
    from mailer.settings import Rate, Settings

    settings = make_settings(Settings, Rate)
    outbox = space.outbox("profile")

    def work() -> None:
        campaign = Campaign(settings, space.csv, space.template)
        campaign.check()
        for _ in write_outbox(campaign.letters(campaign.recipients()), outbox):
            pass

    try:
        if tool == "pyinstrument":
            pyinstrument_profile(work, top)
        else:
            cprofile_profile(work, top)
    finally:
        remove_folder(outbox)


def pyinstrument_profile(work: Callable[[], None], top: int) -> None:
    """Sampling profile: functions by own time, then the call tree, in % of the total."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, use_timing_thread=True)
    profiler.start()
    work()
    profiler.stop()
    flat = profiler.output_text(flat=True, flat_time="self", time="percent_of_total")
    ranked = [line for line in flat.splitlines() if line.lstrip()[:1].isdigit()]
    print(f"\nTop {top} functions by own time (pyinstrument, sampled):")
    print("\n".join(ranked[:top]))
    tree = profiler.output_text(time="percent_of_total")
    print("\nCall tree:\n" + "\n".join(tree.splitlines()[:80]))


def cprofile_profile(work: Callable[[], None], top: int) -> None:
    """Deterministic profile: the top entries by own and by cumulative time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    work()
    profiler.disable()
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tottime for _, _, tottime, _, _ in entries.values())

    def where(key: tuple[str, int, str]) -> str:
        file, line, name = key
        if file == "~":
            return name
        parts = Path(file).parts
        short = "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts
                         else parts[-2:])
        return f"{short}:{line}({name})"

    for column, heading in ((2, "own time (tottime)"), (3, "cumulative time (cumtime)")):
        print(f"\nTop {top} by {heading} (cProfile), total {total:.2f} s:")
        print(f"{'%':>6} {'seconds':>8} {'calls':>10}  function")
        ranked = sorted(entries.items(), key=lambda item: item[1][column], reverse=True)
        for key, value in ranked[:top]:
            print(f"{100 * value[column] / total:6.1f} {value[column]:8.2f} {value[1]:10,d}  "
                  f"{where(key)}")


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="recipients (100,000)")
    parser.add_argument("--mailmerge-rows", type=int, default=None,
                        help=f"rows for mailmerge (min(rows, {MAILMERGE_ROWS:,}))")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (3)")
    parser.add_argument("--no-outbox", action="store_true",
                        help="skip the dry run that writes .eml files (render only)")
    parser.add_argument("--no-mailmerge", action="store_true", help="skip mailmerge")
    parser.add_argument("--cli", action="store_true",
                        help="also time `mailer check` and `mailer send --dry-run`")
    parser.add_argument("--profile", nargs="?", const="cprofile",
                        choices=["cprofile", "pyinstrument"],
                        help="profile mailer's check + dry run in process; no timing")
    parser.add_argument("--top", type=int, default=15, help="profile entries shown (15)")
    parser.add_argument("--template", type=Path, default=TEMPLATE,
                        help="mailer template (templates/letter.txt)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the work folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--live", action="store_true",
                        help="run the installed mailer, not a copy taken at the start")
    parser.add_argument("--child", choices=["dryrun", "render", "first", "files"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outbox", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    return args


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, runner: Runner) -> list[Series]:
    rows, mm_rows = runner.rows, runner.mailmerge_rows
    dry_run = Series("mailer check + dry run (.eml), library", rows,
                     lambda s: s.found["check_s"] + s.found["write_s"])
    check_part = Series("  of which check", rows, lambda s: s.found["check_s"])
    write_part = Series("  of which dry run (render + write .eml)", rows,
                        lambda s: s.found["write_s"])
    render = Series("mailer render only (check, no outbox)", rows, lambda s: s.found["check_s"])
    files = Series("plain file writes, same count/size, no mailer", rows,
                   lambda s: s.found["files_s"])
    mm_start = Series("mailmerge start-up (--limit 0)", 0, lambda s: s.wall)
    mailmerge = Series("mailmerge --dry-run raw, net of start-up", mm_rows, lambda s: s.wall,
                       startup=mm_start)
    cli_start = Series("mailer --version (start-up)", 0, lambda s: s.wall)
    cli_check = Series("mailer check (CLI, wall)", rows, lambda s: s.wall)
    cli_send = Series("mailer send --dry-run (CLI, wall)", rows, lambda s: s.wall)
    cli_check_net = Series("mailer check (CLI, net of start-up)", rows, lambda s: s.wall,
                           startup=cli_start)
    cli_send_net = Series("mailer send --dry-run (CLI, net of start-up)", rows, lambda s: s.wall,
                          startup=cli_start)
    for run in range(1, args.repeat + 1):
        progress(f"run {run}/{args.repeat}")
        if not args.no_outbox:
            sample = runner.mailer_dry_run()
            for series in (dry_run, check_part, write_part):
                series.samples.append(sample)
            files.samples.append(runner.plain_files())
        render.samples.append(runner.mailer_render())
        if mm_rows:
            mm_start.samples.append(runner.mailmerge_startup())
            mailmerge.samples.append(runner.mailmerge())
        if args.cli:
            cli_start.samples.append(runner.cli_startup())
            cli_check.samples.append(runner.cli_check())
            cli_check_net.samples = cli_check.samples
            if not args.no_outbox:
                cli_send.samples.append(runner.cli_send())
                cli_send_net.samples = cli_send.samples
    for series in (check_part, write_part, files, mm_start, cli_start):
        series.samples = [Sample(s.wall, 0, s.found) for s in series.samples]
    return [dry_run, check_part, write_part, files, render, mailmerge, mm_start,
            cli_check, cli_check_net, cli_send, cli_send_net, cli_start]


def report(args: argparse.Namespace, runner: Runner, series: list[Series]) -> None:
    named = {item.label: item for item in series}
    dry_run, write_part, render = series[0], series[2], series[4]
    mailmerge = named["mailmerge --dry-run raw, net of start-up"]
    title = (f"\nmailer render benchmark: {runner.rows:,} recipients"
             f" (mailmerge {runner.mailmerge_rows:,}), {args.repeat} runs each; "
             "median seconds, letters/s from the median, peak RSS = largest of the runs")
    print_table(title, series)
    if mailmerge.samples:
        print(f"\nmailmerge gross (with start-up): "
              f"{mailmerge.rows / statistics.median(s.wall for s in mailmerge.samples):,.0f} "
              "letters/s")
        print("ratio mailer/mailmerge (letters/s): of the medians; and per run, each mailer run "
              "against the mailmerge run next to it, median [min-max]")
        for label, item in (("check + dry run, writing .eml (the goal)", dry_run),
                            ("dry run alone, writing .eml", write_part),
                            ("render only, no outbox", render)):
            if item.samples:
                ratio = item.rate() / mailmerge.rate()
                paired = [(item.rows / mine) / (mailmerge.rows / theirs)
                          for mine, theirs in zip(item.times(), mailmerge.times(), strict=True)]
                goal = (f"  (goal >= {GOAL_RATIO}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'})"
                        if item is dry_run else "")
                print(f"  {label:42} {ratio:5.2f}x   per run {statistics.median(paired):5.2f}x "
                      f"[{min(paired):.2f}-{max(paired):.2f}]{goal}")
    peak = render.peak_mb()
    verdict = "met" if peak < GOAL_MB else "NOT met"
    scale = ("" if runner.rows >= GOAL_ROWS else
             f" (the goal is at {GOAL_ROWS:,}: run --rows {GOAL_ROWS} --no-outbox)")
    print(f"peak RSS, render only at {runner.rows:,} rows: {render.peak_text()} MB "
          f"(goal < {GOAL_MB} MB: {verdict}){scale}")
    print(f"(this parent process peaked at {own_peak_kib() / 1024:.1f} MB; a child's ru_maxrss "
          "starts at its parent's peak, so '<=' marks a figure that may be the parent's)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.csv, args.template, args.outbox, args.result, args.count,
              args.size)
        return 0
    mm_rows = 0 if args.no_mailmerge or args.profile else min(
        args.rows, args.mailmerge_rows if args.mailmerge_rows is not None else MAILMERGE_ROWS)
    root = Path(tempfile.mkdtemp(prefix="mailer-bench-", dir=args.tmpdir))
    try:
        source, digest = (None, "live") if args.live else snapshot(root)
        print(f"mailer {git_state()}, sources {digest}; Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        progress(f"writing {args.rows:,} recipients to {root}")
        space = prepare(root, args.rows, mm_rows, args.template.resolve(), source)
        if args.profile:
            profile(space, args.top, args.profile)
            return 0
        runner = Runner(space, args.rows, mm_rows)
        if mm_rows:
            differences = compare_letters(runner)
            for difference in differences:
                progress(f"warning: the first letters differ: {difference}")
            if not differences:
                progress("first letter: mailer and mailmerge render the same To, From, "
                         "Subject and text")
        report(args, runner, measure(args, runner))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
