"""Letters for the post: the campaign's rows, checked as for a send, laid out as one
print-ready PDF (paper.py), each paper copy recorded in the send log.

A row's postal address is its `address` column, its lines separated by `|` or by line breaks
inside the quoted field; the recipient's name heads it, as the letter's To header shows it,
unless the address starts with it. A row without an address is left out (or, with
`require_address`, a problem). The PDF is written whole or not at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from .campaign import Campaign, CheckReport
from .errors import InputError, Problem
from .message import default_name
from .paper import Paper, PaperError, PaperLetter, print_letters
from .recipients import Recipient, fold
from .sendlog import Listed, SendLog
from .settings import postal_lines
from .template import Body, Multipart, Part, html_parts


@dataclass(slots=True)
class Printed:
    """What a print made: letters and pages, and the rows left out for want of an address."""

    letters: int = 0
    pages: int = 0
    without_address: list[tuple[int, str]] = field(default_factory=list)


def print_campaign(campaign: Campaign, out: Path, log: SendLog | None, *,
                   paper: Paper = "a4", require_address: bool = False,
                   when: float | None = None) -> Printed:
    """Print every letter of the campaign into `out`; InputError (and no file) if a row or
    the template has a problem, as `check` would find it."""
    report = campaign.check()
    if not report.ok:
        raise InputError(report.problems, f"{report.summary()}; nothing was printed")
    when = time.time() if when is None else when
    printed = Printed()
    rows: list[tuple[Listed, Recipient]] = []
    letters = _paper_letters(campaign, printed, rows, when, report)
    part = out.with_name(out.name + ".part")
    try:
        with part.open("wb") as file:
            pages = print_letters(letters, file, paper=paper)
        if require_address and printed.without_address:
            raise InputError([Problem(str(campaign.recipients_path), line, "has no address "
                                      "to print; fill in its address column", "address")
                              for line, _ in printed.without_address])
        if pages:
            os.replace(part, out)
    except PaperError as error:
        raise InputError([Problem(str(campaign.recipients_path), error.line,
                                  error.message)]) from None
    finally:
        part.unlink(missing_ok=True)
    printed.letters, printed.pages = len(pages), sum(pages)
    if log is not None and pages:
        log.record_paper(campaign.name, [(listed, count) for (listed, _), count
                                         in zip(rows, pages, strict=True)], when)
    return printed


def _paper_letters(campaign: Campaign, printed: Printed, rows: list[tuple[Listed, Recipient]],
                   when: float, report: CheckReport) -> Iterator[PaperLetter]:
    settings = campaign.settings
    sender = settings.postal_address
    if not sender or fold(sender[0]) != fold(settings.shown_name):  # the name written once
        sender = (settings.shown_name, *sender)
    day = time.strftime("%-d %B %Y", time.localtime(when))
    place_date = f"{settings.sender_place}, {day}" if settings.sender_place else day
    for item in campaign.recipients():
        if isinstance(item, Problem):
            continue  # the check found none: the list changed since; it is not printed
        letter = campaign.build_one(item)
        if isinstance(letter, Problem):
            continue
        address = postal_lines(item.fields.get("address", ""))
        if not address:
            printed.without_address.append((item.line, letter.email))
            continue
        name = default_name(item.fields)
        if name and fold(address[0]) != fold(name):
            address = (name, *address)
        rows.append((Listed(letter.email, letter.line, letter.message_id), item))
        rendered = campaign.builder_for(item).render(item)
        yield PaperLetter(item.line, sender, address, place_date, _text(rendered.body),
                          settings.shown_name)


def _text(body: Body) -> str:
    """The text a printed letter carries: its plain part (HTML only if it has none)."""
    if isinstance(body, Part) and body.subtype == "plain":
        return body.text
    if isinstance(body, Multipart):
        for part in body.parts:
            if isinstance(part, Part) and part.subtype == "plain":
                return part.text
    return "\n".join(_visible(part.text) for part in html_parts(body))


def _visible(html: str) -> str:
    reader = _Visible()
    reader.feed(html)
    return "".join(reader.pieces).strip() + "\n"


class _Visible(HTMLParser):
    """The text an HTML body shows, a line for each block."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def handle_data(self, data: str) -> None:
        self.pieces.append(data)

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("p", "br", "div", "li", "h1", "h2", "h3"):
            self.pieces.append("\n")
