"""What the CLI shows: a server's words, the list's and the template's text, made safe to print.

Nothing that came from a server, the recipient list or the template is ever read as Rich
markup, and its control characters (ESC, OSC and the other C0 and C1 codes, and the Unicode
controls that reorder text) are shown escaped, never acted on by the terminal. A CSV export
neutralises the cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import fields
from email import policy
from email.parser import BytesParser
from typing import Any, TextIO

import rich.progress
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .outcome import Outcome, Status
from .sender import Waiting
from .sendlog import Entry

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                      "\u2066-\u2069]")
_LINE_BREAK = re.compile("[\t\n\r\u2028\u2029]")
# OWASP's CSV injection advice: a cell starting with one of these runs as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# The start of a letter that a preview reads.
_PREVIEW = 1 << 20
# The table of `mailer log` shows this many rows; --format csv or json lists them all.
TABLE_ROWS = 200


def shown(text: str, *, one_line: bool = False) -> str:
    """`text` as it may be printed: control characters written as escapes (`\\x1b`), and
    with `one_line`, line breaks and tabs too."""
    text = _CONTROL.sub(_escape, text)
    return _LINE_BREAK.sub(_escape, text) if one_line else text


def _escape(match: re.Match[str]) -> str:
    return match[0].encode("unicode_escape").decode("ascii")


def where_it_went(letter_email: str, envelope: tuple[str, ...]) -> str:
    """The address a letter went to: its own, or a test send's."""
    return letter_email if letter_email.casefold() in {a.casefold() for a in envelope} \
        else ", ".join(envelope)


def outcome_line(outcome: Outcome) -> str:
    letter = outcome.letter
    address = where_it_went(letter.email, letter.envelope)
    return shown(f"{outcome.status:<8} {address}  {outcome.describe()}", one_line=True)


class Progress:
    """A progress bar on a terminal; a plain line per letter anywhere else (CI, pipes)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.counts: Counter[Status] = Counter()
        self._bar: rich.progress.Progress | None = None
        self._task = rich.progress.TaskID(0)
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        if sys.stdout.isatty():
            columns = rich.progress.Progress.get_default_columns()
            tally = rich.progress.TextColumn("{task.fields[tally]}", markup=False)
            self._bar = rich.progress.Progress(*columns, tally)
            self._task = self._bar.add_task("sending", total=self.total, tally="")
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, event: Outcome | Waiting) -> None:
        """Count one outcome; print it if it is not a plain success (or if not on a
        terminal). Say when a wait begins, and until when."""
        if isinstance(event, Waiting):
            line = (f"Waiting until {time.strftime('%a %d %b %H:%M', time.localtime(event.until))}"
                    f" ({event.reason}); Ctrl-C stops")
            if self._bar is None:
                print(shown(line, one_line=True), flush=True)
            else:
                self._bar.update(self._task, description=shown(line, one_line=True))
            return
        outcome = event
        if self._bar is not None:
            self._bar.update(self._task, description="sending")
        self.counts[outcome.status] += 1
        if self._bar is None:
            print(outcome_line(outcome))
            return
        rate = sum(self.counts.values()) / max(time.monotonic() - self._started, 1e-9)
        tally = ", ".join(f"{n} {s}" for s, n in self.counts.items()) + f", {rate:.1f}/s"
        self._bar.update(self._task, advance=1, tally=tally)
        if outcome.status != Status.SENT or outcome.copies_refused:
            self._bar.console.print(Text(outcome_line(outcome)))


_ENTRY_FIELDS = [f.name for f in fields(Entry)]


def entry_dict(entry: Entry) -> dict[str, Any]:
    # Not dataclasses.asdict: its deep copies took two thirds of a 200,000-row export.
    return {**{name: getattr(entry, name) for name in _ENTRY_FIELDS},
            "status": str(entry.status)}


def _cell(value: object) -> object:
    if not isinstance(value, str):
        return value
    # A CSV is often read on a terminal (cat, less -r): no escape sequence from a reply.
    value = shown(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_csv(entries: Iterable[Entry], out: TextIO) -> None:
    """The entries as CSV, streamed; a cell a spreadsheet would run starts with `'`, and
    control characters are written as escapes (`\\x1b`)."""
    writer = csv.DictWriter(out, fieldnames=_ENTRY_FIELDS)
    writer.writeheader()
    for entry in entries:
        writer.writerow({key: _cell(value) for key, value in entry_dict(entry).items()})


def json_items(entries: Iterable[Entry]) -> Iterator[str]:
    """The entries as a JSON array, a piece at a time."""
    yield "["
    for number, entry in enumerate(entries):
        yield ("," if number else "") + "\n  " + json.dumps(entry_dict(entry))
    yield "\n]\n"


def print_table(entries: Iterable[Entry], title: str | None, *, several: bool,
                answers: bool = False, paper: bool = False) -> int:
    """The first TABLE_ROWS entries as a table, with columns for the answers and the paper
    copies if there are any; how many entries there were in all."""
    columns = ["line", "address", "status", "tries", "last attempt", "server reply",
               *(["answer"] if answers else []), *(["paper"] if paper else [])]
    table = Table(*(["campaign"] if several else []), *columns, title=title)
    count = 0
    for count, e in enumerate(entries, start=1):
        if count > TABLE_ROWS:
            continue
        server = (f"{e.bounce_status or ''} {e.bounce_text or ''}" if e.bounced_at
                  else f"{e.reply_code or ''} {e.reply_text or ''}").strip()
        answer = f"{e.reply} {(e.reply_at or '')[:10]}".strip() if e.reply else ""
        copy = f"{(e.paper_at or '')[:10]}, {e.paper_pages} p." if e.paper_at else ""
        cells = [*([e.campaign] if several else []), str(e.line or ""), e.address,
                 str(e.status), str(e.attempts), e.last_attempt or "", server,
                 *([answer] if answers else []), *([copy] if paper else [])]
        table.add_row(*(Text(shown(cell, one_line=True)) for cell in cells))
    if count:
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return count


def readable(data: bytes) -> str:
    """A letter as a person reads it: decoded headers, then the text body."""
    # Its text comes before any attachment: parsing a large one whole would cost many times
    # its size.
    message = BytesParser(policy=policy.default).parsebytes(data[:_PREVIEW])
    lines = [f"{name}: {value}" for name, value in message.items()
             if name.lower() not in {"mime-version", "content-type", "content-transfer-encoding"}]
    body = message.get_body(preferencelist=("plain",))
    text = str(body.get_content()) if body is not None else ""
    return shown("\n".join(lines) + "\n\n" + text.replace("\r\n", "\n"))
