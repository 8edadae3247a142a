"""The benchmarks' inputs, child processes (time, peak RSS), smtp-sink and figures. Standard
library only: a child's peak RSS starts at its parent's high-water mark."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTFIX = ROOT.parent / "shared" / "tools" / "postfix"
SENDER = "Olive Organiser"
NAMES = ["Ms,Amelia Hartley", "Mr,Jürgen Müller", "Mr,Tomás Ó Briain", "Ms,Marta Kowalska",
         "Mr,Łukasz Wąsik", "Ms,Sofia Andersen", "Mr,Pieter de Vries", "Ms,Zoë Lefèvre",
         "Mr,Luca Bianchi", "Ms,Claire Dubois"]  # 4 of 10 are not ASCII


def write_inputs(folder: Path, rows: int, port: int = 1025) -> None:
    """recipients.csv (unique addresses), templates/letter.txt for mailer, mm.txt and mm.conf for
    mailmerge (same To, Subject and body; mailmerge needs From and the name written in)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "recipients.csv").open("w", encoding="utf-8") as out:
        out.write("email,title,name,country\n")
        out.writelines(f"member{i}@parl{i % 97}.example,{NAMES[i % 10]},Country {i % 27}\n"
                       for i in range(rows))
    text = next(path for path in (ROOT / "templates" / "letter.txt", ROOT / "mailer" /
                                  "starter" / "templates" / "letter.txt") if path.exists()
                ).read_text(encoding="utf-8")  # the project's letter, where it is
    (folder / "templates").mkdir(exist_ok=True)
    (folder / "templates" / "letter.txt").write_text(text, encoding="utf-8")  # the default
    to, _, rest = text.replace("{{ sender_name }}", SENDER).partition("\n")
    (folder / "mm.txt").write_text(f'{to}\nFrom: "{SENDER}" <organiser@example.org>\n{rest}',
                                   encoding="utf-8")
    (folder / "mm.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n", encoding="utf-8")


def mailer_env(port: int = 1025, connections: int = 1, log: str = "log") -> dict[str, str]:
    return {**os.environ, "MAILER_FROM": "organiser@example.org", "MAILER_SENDER_NAME": SENDER,
            "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(port),
            "MAILER_SMTP_SECURITY": "none", "MAILER_RATE": "0",
            "MAILER_CONCURRENCY": str(connections), "MAILER_LOG": log}


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None,
        keep: bool = False) -> tuple[float, float, str]:
    """Run a child to its end, or exit if it fails: (wall s, peak RSS MB, stdout if `keep`)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, env=env,
                                 stdout=out if keep else subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if child.returncode:
        sys.exit(f"{' '.join(command[:3])} exited {child.returncode}:\n{text[-2000:]}")
    return wall, usage.ru_maxrss / 1024, text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            return socket.create_connection(("127.0.0.1", port), 0.1).close()
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen([str(POSTFIX), "smtp-sink", "-u", getpass.getuser(),
                             f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a fatal error exits after 1 s
        sys.exit(f"smtp-sink exited ({sink.wait(1.5)}): is 127.0.0.1:{port} taken?")
    wait_port(port)
    return sink


def done_rate(out: str) -> float:
    """letters/s from mailer send's last line, 'Done: 2000 sent in 1.9s (1040.2 letters/s).'"""
    match = re.search(r"Done: (\d+) sent in [\d.]+s \(([\d.]+) letters/s\)", out)
    return float(match[2]) if match else sys.exit(f"not every letter sent:\n{out[-2000:]}")


def spread(values: list[float], digits: int = 1) -> str:
    """'min / median / max'."""
    return " / ".join(f"{v:.{digits}f}" for v in
                      (min(values), statistics.median(values), max(values)))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table; figures are min / median / max."""
    lines = [header, ["---"] * len(header), *rows]
    print(f"\n{title}\n" + "\n".join(f"| {' | '.join(line)} |" for line in lines))
