"""`mailer print`: the campaign's letters as one PDF for the post, recorded in the send log,
and nothing a send does changed by it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pdfplumber
import pytest
from conftest import CampaignFiles, Result, Server

Run = Callable[..., Result]

SENDER = {"MAILER_FROM": "Zoë Ñandú-Jürgensen <zoe@hkwatch.example>",
          "MAILER_SENDER_ADDRESS": "Hong Kong Watch Europe|Rue de la Loi 42|1040 Brussels",
          "MAILER_SENDER_PLACE": "Brussels"}


@pytest.fixture
def sample(files: CampaignFiles, run: Run, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The starter campaign (mailer init), with a sender who has a postal address."""
    assert run("init", "kit").code == 0
    os.chdir("kit")
    for key, value in SENDER.items():
        monkeypatch.setenv(key, value)
    return files.root / "kit"


def _pages(path: Path) -> list[tuple[str, str]]:
    """Each page's text: its left half (the address, then the letter), its right (the
    sender's block and the date)."""
    with pdfplumber.open(path) as pdf:
        return [(page.crop((0, 0, page.width * 0.45, page.height)).extract_text() or "",
                 page.crop((page.width * 0.45, 0, page.width, page.height * 0.3)).extract_text()
                 or "") for page in pdf.pages]


def _in_order(text: str, *pieces: str) -> bool:
    """Whether the pieces come in `text` one after the other."""
    place = 0
    for piece in pieces:
        place = text.find(piece, place)
        if place < 0:
            return False
        place += len(piece)
    return True


def test_the_sample_campaign_prints_a_letter_a_page_each_in_list_order(
        sample: Path, run: Run) -> None:
    result = run("print")
    assert result == Result(0, "Printed 14 letters (14 pages) into letters.pdf; each paper "
                               "copy is recorded in mailer-log.sqlite3.\n", "")
    pages = _pages(sample / "letters.pdf")
    assert len(pages) == 14
    left, right = pages[0]
    assert _in_order(left, "Ms Amelia Hartley\nEuropean Parliament\nRue Wiertz 60\n"
                           "1047 Brussels\nBelgium", "Dear Ms Amelia Hartley,",
                     "We are a group of human rights", "Best Regards,",
                     "Zoë Ñandú-Jürgensen")
    assert _in_order(right, "Zoë Ñandú-Jürgensen\nHong Kong Watch Europe\nRue de la Loi 42\n"
                            "1040 Brussels", "Brussels, ")
    assert _in_order(pages[13][0], "President Étienne Marchand\nPalais de l'Élysée",
                     "Dear President Étienne Marchand,")


def test_a_paper_copy_is_recorded_and_changes_nothing_a_send_does(
        sample: Path, run: Run, smtp_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("print", "--where", "country=France").code == 0
    result = run("log")
    assert "  2 letters printed for the post\n" in result.out
    assert result.out.count(", 1 p. ") == 2
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAILER_FROM", "zoe@hkwatch.example")
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "Campaign 'letter': 14 letters to send."
    assert len(smtp_server.handler.messages) == 14


def test_rows_without_an_address_are_listed_and_left_out(sample: Path, run: Run) -> None:
    lines = (sample / "recipients.csv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].rpartition(",")[0] + ","  # Jürgen Müller's address
    (sample / "recipients.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("print")
    assert result.code == 0
    assert result.err == ("recipients.csv:3: warning: jurgen.mueller@europarl.example has no "
                          "address; left out of the print\n")
    assert result.out.startswith("Printed 13 letters (13 pages)")
    os.remove("letters.pdf")
    result = run("print", "--require-address")
    assert result.code == 1
    assert result.err == ("error: recipients.csv:3: address: has no address to print; fill in "
                          "its address column\n")
    assert not Path("letters.pdf").exists()


def test_a_character_the_font_lacks_is_named_with_its_row_and_nothing_is_printed(
        sample: Path, run: Run) -> None:
    text = (sample / "recipients.csv").read_text(encoding="utf-8")
    (sample / "recipients.csv").write_text(text.replace("Zoë Lefèvre", "Zoë Lefèvre 🦜"),
                                           encoding="utf-8")
    result = run("print")
    assert result.code == 1
    assert result.err.startswith("error: recipients.csv:4: ")
    assert "U+1F99C" in result.err
    assert not Path("letters.pdf").exists()


def test_printing_needs_the_senders_name_and_postal_address(
        sample: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILER_SENDER_ADDRESS")
    result = run("print")
    assert result.code == 2
    assert result.err.startswith("error: printed letters carry your name and postal address: "
                                 "set MAILER_SENDER_NAME")


def test_a_list_with_problems_prints_nothing(sample: Path, run: Run) -> None:
    with (sample / "recipients.csv").open("a", encoding="utf-8") as csv:
        csv.write("not-an-address,Dr,Bad,Italy,MEP,Europe/Rome,Somewhere\n")
    result = run("print")
    assert result.code == 1
    assert result.err.endswith("15 recipients, 1 problem; nothing was printed\n")
    assert not Path("letters.pdf").exists()


def test_a_postal_address_that_starts_with_the_senders_name_shows_the_name_once(
        sample: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SENDER_ADDRESS", "Zoë Ñandú-Jürgensen|Rue de la Loi 42|1040 "
                                                "Brussels")
    assert run("print").code == 0
    _, right = _pages(sample / "letters.pdf")[0]
    assert _in_order(right, "Zoë Ñandú-Jürgensen\nRue de la Loi 42\n1040 Brussels")
    assert right.count("Ñandú") == 1
