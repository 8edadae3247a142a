"""`mailer inbox` over a 10,000-message folder of a real Dovecot (../shared/tools/mta, started
first: `eval "$(../shared/tools/mta start)"`), against a send log of 1,000 letters sent: the
first read, and a second that finds nothing new. See README.md."""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import ssl
import tempfile
import time
from pathlib import Path

import common as c

from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.sendlog import Listed
from mailer.sqlitelog import SQLiteLog

LETTERS = 1000
FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 50


def _message(number: int) -> bytes:
    """Mostly mail about other things; 6% replies, 2% automatic, 3% bounces, 1% delays."""
    ours = f"<{number % LETTERS}.bench@example.org>"
    kind = number % 100
    head = f"Message-ID: <m{number}@elsewhere.example>\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\n"
    if kind < 8:
        auto = "Auto-Submitted: auto-replied\r\n" if kind >= 6 else ""
        return (f"{head}From: p{number % LETTERS}@parl.example\r\nTo: campaign@example.org\r\n"
                f"Subject: Re: the letter\r\nIn-Reply-To: {ours}\r\n{auto}\r\nThank you.\r\n"
                ).encode()
    if kind < 12:
        action, status = ("delayed", "4.4.1") if kind == 11 else ("failed", "5.1.1")
        return (f"{head}From: MAILER-DAEMON@mx.example\r\nTo: campaign@example.org\r\n"
                "Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/"
                'report; report-type=delivery-status; boundary="B"\r\n\r\n--B\r\n\r\nFailed.'
                "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx"
                f"\r\n\r\nFinal-Recipient: rfc822; p{number % LETTERS}@parl.example\r\nAction: "
                f"{action}\r\nStatus: {status}\r\n\r\n--B\r\nContent-Type: text/rfc822-headers"
                f"\r\n\r\nMessage-ID: {ours}\r\n\r\n--B--\r\n").encode()
    return (f"{head}From: news@list.example\r\nTo: campaign@example.org\r\nSubject: News "
            f"{number}\r\n\r\n{FILLER}\r\n").encode()


def _fill(folder: str, count: int) -> float:
    """Create `folder` and append `count` messages; seconds it took."""
    imap = _connect()
    started = time.perf_counter()
    imap.create(folder)
    for number in range(count):
        imap.append(folder, "", imaplib.Time2Internaldate(time.time()), _message(number))
    imap.logout()
    return time.perf_counter() - started


def _connect() -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=os.environ["MAILER_SMTP_CA_FILE"])
    imap = imaplib.IMAP4_SSL("127.0.0.1", int(os.environ["MAILER_IMAP_PORT"]),
                             ssl_context=context)
    imap.login(os.environ["MAILER_IMAP_USERNAME"], os.environ["MAILER_IMAP_PASSWORD"])
    return imap


def _log(path: Path) -> None:
    """A send log in which the campaign's 1,000 letters were sent an hour ago."""
    letters = [Letter(n + 2, f"p{n}@parl.example", "campaign@example.org",
                      (f"p{n}@parl.example",), f"<{n}.bench@example.org>", b"x")
               for n in range(LETTERS)]
    with SQLiteLog.open(path) as log:
        run = log.begin_run("bench", {}, "x")
        log.register("bench", [Listed(x.email, x.line, x.message_id) for x in letters], "x")
        sent = time.time() - 3600
        log.commit(run, [], [Outcome.of(x, Status.SENT, 1, code=250, first_try=sent,
                                        last_try=sent) for x in letters], sent)
        log.end_run(run, "completed", {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-inbox-"))
    folder = f"Bench{time.time_ns()}"
    print(f"{args.messages:,} messages appended in {_fill(folder, args.messages):.1f} s")
    env = {**os.environ, "MAILER_LOG": str(base / "log.sqlite3")}
    first, again, rss = [], [], []
    try:
        for _ in range(args.runs):
            (base / "log.sqlite3").unlink(missing_ok=True)
            _log(base / "log.sqlite3")
            command = [str(c.BIN / "mailer"), "inbox", "--folder", folder]
            seconds, peak, out = c.run(command, base, env, keep=True)
            first.append(seconds)
            rss.append(peak)
            again.append(c.run(command, base, env)[0])
        print(out.strip())
        c.table(f"mailer inbox, {args.runs} runs (min / median / max)", ["", "seconds"],
                [["first read", c.spread(first, 2)], ["second read (nothing new)",
                                                      c.spread(again, 2)],
                 ["peak RSS MB, first read", c.spread(rss, 1)]])
    finally:
        imap = _connect()
        imap.delete(folder)
        imap.logout()
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
