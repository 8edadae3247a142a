"""mailer.paper: campaign letters as one PDF for window envelopes.

The PDF is read back the way a person or a printer would meet it: its text as pdfplumber
extracts it, and where each character sits on the page, in mm from the top-left corner. The
envelope windows are worked out here again from the envelope standards, not taken from
mailer.paper, so a wrong constant there cannot agree with itself.
"""

from __future__ import annotations

import io
import re
import time
import unicodedata
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pdfplumber
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailer.paper import AddressTooLong, MissingGlyph, Paper, PaperLetter, print_letters

PT_PER_MM = 72 / 25.4
INCH = 25.4
STARTER_TEMPLATE = Path(__file__).resolve().parent.parent / "mailer/starter/templates/letter.txt"

SENDER = ("Hong Kong Watch Europe", "Rue de la Loi 42", "1040 Brussels", "Belgium")
BODY = """\
Dear Ms Amelia Hartley,

We are a group of human rights advocates from different countries, writing to you about the
judicial independence of Hong Kong.

We urge you to respond strongly and decisively.

Best regards,"""


def letter(
    line: int = 2,
    *,
    recipient: Sequence[str] = ("Ms Amelia Hartley", "European Parliament", "1047 Brussels"),
    body: str = BODY,
    sender: Sequence[str] = SENDER,
    place_date: str = "Brussels, 1 December 2026",
    signature: str = "Zoë Ñandú",
) -> PaperLetter:
    return PaperLetter(
        line=line,
        sender=tuple(sender),
        recipient=tuple(recipient),
        place_date=place_date,
        body=body,
        signature=signature,
    )


def render(letters: Sequence[PaperLetter], paper: Paper = "a4") -> tuple[list[int], bytes]:
    out = io.BytesIO()
    counts = print_letters(letters, out, paper=paper)
    return counts, out.getvalue()


def render_iter(letters: Iterator[PaperLetter]) -> tuple[list[int], bytes]:
    out = io.BytesIO()
    return print_letters(letters, out), out.getvalue()


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces as single spaces: wrapping moves them."""
    return " ".join(text.split())


def page_texts(pdf_bytes: bytes) -> list[str]:
    with pdfplumber.open(io.BytesIO(pdf_bytes)) as pdf:
        return [page.extract_text() for page in pdf.pages]


@dataclass(frozen=True)
class Line:
    """A line of text on the page and the box its characters cover, in mm from the top left."""

    text: str
    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class Rect:
    left: float
    top: float
    right: float
    bottom: float

    def holds(self, line: Line) -> bool:
        return (
            self.left <= line.left
            and line.right <= self.right
            and self.top <= line.top
            and line.bottom <= self.bottom
        )


def lines_of(page: Any, region: Rect | None = None) -> list[Line]:
    if region is not None:
        page = page.crop(
            tuple(v * PT_PER_MM for v in (region.left, region.top, region.right, region.bottom))
        )
    found: list[dict[str, Any]] = page.extract_text_lines()
    return [
        Line(
            str(d["text"]),
            d["x0"] / PT_PER_MM,
            d["top"] / PT_PER_MM,
            d["x1"] / PT_PER_MM,
            d["bottom"] / PT_PER_MM,
        )
        for d in found
    ]


def page_lines(pdf_bytes: bytes, region: Rect | None = None) -> list[list[Line]]:
    with pdfplumber.open(io.BytesIO(pdf_bytes)) as pdf:
        return [lines_of(page, region) for page in pdf.pages]


# The envelope windows as they fall on the folded sheet, worked out from the standards.
#
# DL envelope (110 x 220 mm), DIN 680 window: 90 x 45 mm, 20 mm from the left edge and 15 mm
# from the bottom, so 50-95 mm from the envelope's top. An A4 sheet folded at DIN 5008 Form B's
# marks (105 and 210 mm) is 105 mm tall: resting on its fold, its top is 5 mm below the
# envelope's, and the window shows 20-110 mm across and 45-90 mm down the sheet.
A4_DL_WINDOW = Rect(20.0, 50.0 - 5.0, 110.0, 95.0 - 5.0)
# #10 envelope (4 1/8 x 9 1/2 in), window 4 1/2 x 1 1/8 in, 7/8 in from the left and 1/2 in
# from the bottom. US Letter folded in three is 11/3 in tall: resting on its fold, centred
# (1/2 in to spare each side), it shows the window at 3/8-4 7/8 in across and
# (11/3 - 1 5/8)-(11/3 - 1/2) in down. USPS DMM 601.6.3: 1/8 in clear of every edge with the
# insert moved to its limits (1/2 in either way across).
LETTER_NO10_WINDOW = Rect(
    0.375 * INCH, (11 / 3 - 1.625) * INCH, 4.875 * INCH, (11 / 3 - 0.5) * INCH
)
LETTER_NO10_CLEAR = Rect(
    (0.875 + 0.125) * INCH,
    (11 / 3 - 1.625 + 0.125) * INCH,
    (4.875 - 0.5 - 0.125) * INCH,
    (11 / 3 - 0.5 - 0.125) * INCH,
)
# Wider than any window: the left part of the sheet's top third, where the address may be.
TOP_LEFT = Rect(0.0, 0.0, 120.0, 93.0)

WINDOWS = {"a4": A4_DL_WINDOW, "letter": LETTER_NO10_CLEAR}
PAGE_SIZES_PT = {"a4": (595.28, 841.89), "letter": (612.0, 792.0)}


def long_body(paragraphs: int) -> str:
    words = "We urge the EU and the G20 leaders to respond strongly and decisively, by imposing "
    text = [f"Paragraph {n}: " + words * 4 + f"end of {n}." for n in range(1, paragraphs + 1)]
    return "Dear Prime Minister,\n\n" + "\n\n".join(text) + "\n\nYours sincerely,"


# --- pages and order -------------------------------------------------------------------------


def test_each_letter_starts_on_its_own_page_and_counts_its_pages() -> None:
    letters = [
        letter(2, recipient=("Ms Amelia Hartley", "Dublin")),
        letter(3, recipient=("Mr Jürgen Müller", "Berlin"), body=long_body(20)),
        letter(4, recipient=("Ms Zoë Lefèvre", "Paris")),
    ]
    counts, pdf = render(letters)
    texts = page_texts(pdf)
    assert counts == [1, 3, 1]
    assert len(texts) == sum(counts)
    starts = [0, 1, 4]
    for start, name in zip(starts, ["Amelia Hartley", "Jürgen Müller", "Zoë Lefèvre"], strict=True):
        assert name in texts[start]
    assert "Jürgen" not in texts[0] + texts[4]


def test_a_letter_reads_in_order_from_address_to_signature() -> None:
    _, pdf = render([letter()])
    (window,) = page_lines(pdf, TOP_LEFT)
    address = [line.text for line in window if line.top > 55.0]
    assert address == ["Ms Amelia Hartley", "European Parliament", "1047 Brussels"]
    # The sender's block stands beside the address; from the date on, the letter is one column.
    (text,) = page_texts(pdf)
    reading = flat(text)
    expected = [
        "Brussels, 1 December 2026",
        "Dear Ms Amelia Hartley,",
        flat(
            "We are a group of human rights advocates from different countries, writing to you "
            "about the judicial independence of Hong Kong."
        ),
        "We urge you to respond strongly and decisively.",
        "Best regards,",
        "Zoë Ñandú",
    ]
    at = [reading.find(part) for part in expected]
    assert -1 not in at, [p for p, i in zip(expected, at, strict=True) if i < 0]
    assert at == sorted(at)


def test_body_ending_with_the_senders_name_prints_the_name_once() -> None:
    # A mail template ends with {{ sender_name }}; on paper the name goes under the signature.
    _, pdf = render([letter(body=BODY + "\nZoë Ñandú\n")])
    (text,) = page_texts(pdf)
    assert text.count("Zoë Ñandú") == 1
    assert text.index("Best regards,") < text.index("Zoë Ñandú")


def test_the_signature_has_room_for_a_handwritten_signature_above_the_name() -> None:
    _, pdf = render([letter()])
    (lines,) = page_lines(pdf)
    closing = next(line for line in lines if line.text == "Best regards,")
    name = next(line for line in lines if line.text == "Zoë Ñandú")
    assert name.top - closing.bottom >= 12.0  # mm of blank paper to sign in


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_page_size_is_the_paper_asked_for(paper: Paper) -> None:
    _, pdf = render([letter()], paper)
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        (page,) = doc.pages
        assert (float(page.width), float(page.height)) == pytest.approx(PAGE_SIZES_PT[paper])


def test_no_letters_write_nothing() -> None:
    out = io.BytesIO()
    assert print_letters([], out) == []
    assert out.getvalue() == b""


def test_unknown_paper_is_refused() -> None:
    with pytest.raises(ValueError, match="'a5'"):
        print_letters([letter()], io.BytesIO(), paper="a5")  # type: ignore[arg-type]


# --- the window ------------------------------------------------------------------------------


ADDRESSES = [
    ("Ms Amelia Hartley", "European Parliament", "Rue Wiertz 60", "1047 Brussels", "BELGIUM"),
    ("Mr Łukasz Nowak", "ul. Wiejska 4/6/8", "00-902 Warszawa"),
    (
        "The Hon. Jane Q. Public",
        "Member of Congress",
        "1234 Longworth House Office Building",
        "Washington, DC 20515-0001",
        "USA",
        "Attn: Legislative Correspondence",
    ),
]


@pytest.mark.parametrize("paper", ["a4", "letter"])
@pytest.mark.parametrize("recipient", ADDRESSES, ids=["5 lines", "3 lines", "6 lines"])
def test_recipient_address_lies_inside_the_envelope_window(
    paper: Paper, recipient: tuple[str, ...]
) -> None:
    # A4: the DIN 680 window of a DL envelope; Letter: a #10 window, 1/8 in clear of its edges.
    _, pdf = render([letter(recipient=recipient)], paper)
    (lines,) = page_lines(pdf, TOP_LEFT)
    window = WINDOWS[paper]
    for wanted in recipient:
        found = [line for line in lines if line.text == wanted]
        assert found, f"{wanted!r} not in the top left of the page: {lines}"
        assert window.holds(found[0]), (found[0], window)
    # Whatever else shows in the window is the return line, above the address and inside too
    # (on A4; the #10 window shows nothing but the address, as the USPS asks).
    first = next(line for line in lines if line.text == recipient[0])
    others = [line for line in lines if line.text not in recipient and line.top < window.bottom]
    assert bool(others) == (paper == "a4")
    for line in others:
        assert line.bottom <= first.top, line
        assert window.holds(line), line


def test_a4_return_line_sits_small_above_the_address_in_the_window() -> None:
    _, pdf = render([letter(sender=("Hong Kong Watch", "Rue de la Loi 42", "1040 Brussels"))])
    (lines,) = page_lines(pdf, TOP_LEFT)
    back = next(line for line in lines if line.text.startswith("Hong Kong Watch · "))
    name = next(line for line in lines if line.text == "Ms Amelia Hartley")
    assert back.text == "Hong Kong Watch · Rue de la Loi 42 · 1040 Brussels"
    assert A4_DL_WINDOW.holds(back)
    assert back.bottom < name.top
    assert back.bottom - back.top < (name.bottom - name.top) * 0.8  # smaller type


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_nothing_of_the_letters_text_shows_in_the_window(paper: Paper) -> None:
    # With the sheet resting on its fold or pushed up to the envelope's top (5 mm for DL,
    # 4 1/8 - 11/3 in for #10), no line of the letter itself falls in the window.
    _, pdf = render([letter()], paper)
    (lines,) = page_lines(pdf)
    window = {"a4": A4_DL_WINDOW, "letter": LETTER_NO10_WINDOW}[paper]
    play = {"a4": 5.0, "letter": (4.125 - 11 / 3) * INCH}[paper]
    body = [line for line in lines if "Dear" in line.text or "Brussels, 1" in line.text]
    for line in body:
        assert line.top > window.bottom + play or line.left > window.right, line


def test_address_with_too_many_lines_for_the_window_is_an_error_naming_the_row() -> None:
    too_many = tuple(f"line {n}" for n in range(1, 13))
    with pytest.raises(AddressTooLong, match=r"^line 7: recipient address has 12 lines") as info:
        render([letter(2), letter(7, recipient=too_many)])
    assert info.value.line == 7


def test_address_line_too_wide_for_the_window_is_an_error_naming_it() -> None:
    wide = "Bâtiment Altiero Spinelli, 60 rue Wiertz / Wiertzstraat 60, Bureau 08H156"
    with pytest.raises(AddressTooLong, match="too wide for the envelope window") as info:
        render([letter(5, recipient=("Ms Amelia Hartley", wide, "1047 Brussels"))])
    assert info.value.line == 5
    assert wide in info.value.message


def test_empty_address_is_an_error() -> None:
    with pytest.raises(AddressTooLong, match="recipient address is empty"):
        render([letter(3, recipient=("", "  "))])


# --- text as the letters have it -------------------------------------------------------------

NAMES = [
    "Łukasz Żółkiewski",
    "Ñandú Peña",
    "Zoë Brontë",
    "Jürgen Müller",
    "Ελένη Παπαδοπούλου",
    "Дмитрий Шостакович",
    "Øystein Ødegård",
    "Şükrü Ağaoğlu",
    "Nguyễn Thị Minh",
]


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_names_in_latin_greek_and_cyrillic_come_back_out_unchanged(paper: Paper) -> None:
    letters = [
        letter(
            n + 2,
            recipient=(name, "Parliament", "Capital"),
            body=f"Dear {name},\n\nPlease act now.\n\nKind regards,",
            signature=name,
        )
        for n, name in enumerate(NAMES)
    ]
    _, pdf = render(letters, paper)
    windows = page_lines(pdf, TOP_LEFT)
    for name, text, window in zip(NAMES, page_texts(pdf), windows, strict=True):
        assert name in [line.text for line in window]  # the address
        lines = text.splitlines()
        assert f"Dear {name}," in lines
        assert lines[-1] == name  # the signature


def test_decomposed_accents_print_as_the_composed_letters() -> None:
    decomposed = "Zoe\u0308 Lefe\u0300vre"  # e + COMBINING DIAERESIS, e + COMBINING GRAVE
    _, pdf = render([letter(recipient=(decomposed, "Paris"), body=f"Dear {decomposed},")])
    (window,) = page_lines(pdf, TOP_LEFT)
    assert "Zoë Lefèvre" in [line.text for line in window]
    (text,) = page_texts(pdf)
    assert "Dear Zoë Lefèvre," in text.splitlines()


def test_a_character_the_font_lacks_is_an_error_naming_the_row_and_the_character() -> None:
    out = io.BytesIO()
    letters = [letter(2), letter(9, body="Dear Ms Hartley,\n\nThank you 🦜 for your help.")]
    with pytest.raises(MissingGlyph) as info:
        print_letters(letters, out)
    error = info.value
    assert (error.line, error.char, error.field) == (9, "🦜", "letter text")
    assert str(error) == (
        "line 9: letter text has U+1F99C '🦜' (PARROT), which the print font lacks: "
        "replace or remove it"
    )
    assert error.message == str(error).removeprefix("line 9: ")
    assert out.getvalue() == b""  # nothing half-written


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("recipient address", {"recipient": ("Ms Amelia Hartley", "🦜 Parrot House", "Dublin")}),
        ("sender address", {"sender": ("Hong Kong Watch 🦜", "Brussels")}),
        ("place and date", {"place_date": "Brussels 🦜, 1 December 2026"}),
        ("signature", {"signature": "Zoë 🦜"}),
        ("letter text", {"body": "Dear Ms Hartley,\n\n漢字 and 🦜."}),
    ],
)
def test_every_part_of_the_letter_is_checked_for_missing_characters(
    field: str, change: dict[str, Any]
) -> None:
    with pytest.raises(MissingGlyph, match=f"^line 4: {field} has ") as info:
        render([letter(4, **change)])
    assert info.value.field == field
    if field == "letter text":
        assert info.value.chars == ("漢", "字", "🦜")
        assert "U+6F22 '漢' (CJK UNIFIED IDEOGRAPH-6F22) and U+5B57" in str(info.value)


def test_right_to_left_text_is_refused_rather_than_printed_backwards() -> None:
    with pytest.raises(MissingGlyph, match="right-to-left text") as info:
        render([letter(6, recipient=("מרים כהן", "Tel Aviv"))])
    assert info.value.char == "מ"


def test_a_control_character_is_named_without_being_printed_in_the_message() -> None:
    with pytest.raises(MissingGlyph) as info:
        render([letter(3, body="Dear Ms Hartley,\x1b[31m red")])
    assert info.value.char == "\x1b"
    assert "\x1b" not in str(info.value)
    assert "letter text has U+001B (a control character), " in str(info.value)


def test_emoji_presentation_selectors_and_soft_hyphens_are_dropped_not_refused() -> None:
    _, pdf = render([letter(body="Dear Ms Hartley,\n\nWith ❤\ufe0f from Brus\u00adsels.")])
    (text,) = page_texts(pdf)
    assert "With ❤ from Brussels." in text.splitlines()


def test_symbols_the_serif_face_lacks_print_from_the_sans_face_in_line() -> None:
    # DejaVu Serif has no ★ or 😀; DejaVu Sans does, and fills in, on the same line.
    _, pdf = render([letter(body="Dear Ms Hartley,\n\n★ Thank you 😀 for your help ★")])
    (lines,) = page_lines(pdf)
    (line,) = [line for line in lines if "Thank you" in line.text]
    assert line.text == "★ Thank you 😀 for your help ★"


# --- long letters ----------------------------------------------------------------------------


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_long_body_wraps_inside_the_margins_and_breaks_across_pages(paper: Paper) -> None:
    body = long_body(20)
    counts, pdf = render([letter(body=body), letter(3)], paper)
    assert counts == [3, 1]
    pages = page_lines(pdf)
    assert len(pages) == 4
    width, height = (210.0, 297.0) if paper == "a4" else (8.5 * INCH, 11 * INCH)
    text_lines = [
        line for page in pages[:3] for line in page if not re.fullmatch(r"\d/\d", line.text)
    ]
    for line in text_lines:
        assert line.left >= 24.0, line  # 25 mm or 1 in margins
        assert line.right <= width - 19.0, line
        assert line.bottom <= height - 14.0, line
    # All of the text, in order, across the three pages.
    reading = flat(" ".join(line.text for line in text_lines))
    at = [reading.find(f"Paragraph {n}:") for n in range(1, 21)]
    assert -1 not in at
    assert at == sorted(at)
    assert (
        reading.index("end of 20.") < reading.index("Yours sincerely,") < reading.index("Zoë Ñandú")
    )


def test_pages_of_a_long_letter_are_numbered_and_a_one_page_letter_is_not() -> None:
    _, pdf = render([letter(body=long_body(20)), letter(3)])
    numbers = [
        [line.text for line in page if re.fullmatch(r"\d+/\d+", line.text)]
        for page in page_lines(pdf)
    ]
    assert numbers == [["1/3"], ["2/3"], ["3/3"], []]


def test_a_word_longer_than_the_line_is_broken_not_let_out_of_the_margin() -> None:
    url = "https://example.org/" + "very-long-path-segment/" * 12 + "end"
    _, pdf = render([letter(body=f"Dear Ms Hartley,\n\nSee {url} please.")])
    (lines,) = page_lines(pdf)
    assert all(line.right <= 191.0 for line in lines)
    assert url in "".join(line.text for line in lines if line.left < 30)


# Letters, digits, punctuation and symbols of Latin, Greek and Cyrillic; words up to twice a
# line's width, so some are broken between characters.
LETTERS = st.one_of(
    *(
        st.characters(min_codepoint=low, max_codepoint=high, categories=["L", "N", "P", "S"])
        for low, high in ((0x21, 0x7E), (0xC0, 0x17F), (0x391, 0x3C9), (0x410, 0x44F))
    )
)
BODIES = st.lists(
    st.one_of(
        st.text(LETTERS, min_size=1, max_size=12),
        st.text(LETTERS, min_size=80, max_size=200),
        st.sampled_from(["\n", "\n\n", "   "]),
    ),
    min_size=1,
    max_size=300,
).map(" ".join)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=BODIES)
@example(text="0/0")  # a line that reads as a page number
def test_every_character_of_the_body_comes_out_once_in_order(text: str) -> None:
    body = f"Dear Reader,\n\n{text}\n\nYours,"
    _, pdf = render([letter(body=body)])
    texts = page_texts(pdf)
    # A page's number ("2/3") is its last line when there are several; the text may hold
    # one too.
    pages = [page.rpartition("\n")[0] if len(texts) > 1 else page for page in texts]
    printed = "\n".join(pages)
    start = printed.index("Dear Reader,") + len("Dear Reader,")
    end = printed.rindex("Yours,")

    def letters_only(s: str) -> str:
        return "".join(s.split())

    expected = letters_only(unicodedata.normalize("NFC", text))
    assert letters_only(printed[start:end]) == expected


def paragraph(tag: str, count: int) -> str:
    # Short source lines, so each is one printed line: "p3.1 ..." is paragraph 3's first.
    return "\n".join(f"{tag}.{n} lorem ipsum dolor sit amet" for n in range(1, count + 1))


def test_no_paragraph_leaves_one_line_alone_and_the_closing_stays_with_the_signature() -> None:
    # A first paragraph of 1..14 lines shifts the rest, so every break position is met.
    letters = [
        letter(
            2 + shift,
            body="\n\n".join(
                [
                    paragraph("p0", shift),
                    *(paragraph(f"p{n}", 3 + n % 4) for n in range(1, 9)),
                    "Yours sincerely,",
                ]
            ),
        )
        for shift in range(1, 15)
    ]
    counts, pdf = render(letters)
    assert all(count >= 2 for count in counts)
    pages = iter(page_lines(pdf))
    for count in counts:
        letter_pages = [next(pages) for _ in range(count)]
        seen: list[tuple[str, int]] = []  # (paragraph, how many of its lines) per page
        for lines in letter_pages:
            tags = [m.group(1) for line in lines if (m := re.match(r"(p\d+)\.\d+ ", line.text))]
            for tag in dict.fromkeys(tags):
                seen.append((tag, tags.count(tag)))
            texts = [line.text for line in lines]
            assert ("Yours sincerely," in texts) == ("Zoë Ñandú" in texts)
            if "Yours sincerely," in texts:
                assert len(tags) >= 2  # never the closing and the name alone on a page
        split = {tag for tag, _ in seen if sum(1 for t, _ in seen if t == tag) > 1}
        for tag, lines_here in seen:
            if tag in split:
                assert lines_here >= 2, (count, seen)


# --- streaming and speed -----------------------------------------------------------------------


def test_letters_are_taken_one_at_a_time_and_let_go() -> None:
    made: list[weakref.ref[PaperLetter]] = []
    alive_when_made: list[int] = []

    def letters() -> Iterator[PaperLetter]:
        for n in range(30):
            alive_when_made.append(sum(1 for ref in made if ref() is not None))
            item = letter(n + 2)
            made.append(weakref.ref(item))
            yield item
            del item

    counts, _ = render_iter(letters())
    assert counts == [1] * 30
    # At most the letter just printed is still referenced when the next one is made.
    assert max(alive_when_made) <= 1


def starter_body(name: str) -> str:
    template = STARTER_TEMPLATE.read_text(encoding="utf-8").split("\n\n", 1)[1]
    return (
        template.replace("{{ title }}", "Ms")
        .replace("{{ name }}", name)
        .replace("{{ sender_name }}", "Zoë Ñandú")
    )


@pytest.mark.slow
@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_a_thousand_typical_letters_print_in_well_under_thirty_seconds(paper: Paper) -> None:
    body = starter_body("Ελένη Παπαδοπούλου")

    def letters() -> Iterator[PaperLetter]:
        for n in range(1000):
            yield letter(n + 2, recipient=(f"Ms Reader {n}", "Parliament", "Capital"), body=body)

    started = time.perf_counter()
    counts, pdf = render_iter(letters())
    elapsed = time.perf_counter() - started
    assert len(counts) == 1000
    assert max(counts) <= 2
    assert elapsed < 30.0
    assert len(pdf) < 10_000_000


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_a_typical_campaign_letter_fits_on_one_sheet(paper: Paper) -> None:
    # Five paragraphs, 2 kB in all: the shape and length of the starter campaign's letter.
    sentence = "We urge the EU and the G20 leaders to respond strongly and decisively. "
    paragraphs = [sentence * n for n in (10, 3, 5, 6, 4)]
    body = "Dear Ms Ελένη Παπαδοπούλου,\n\n" + "\n\n".join(paragraphs) + "\n\nBest regards,"
    assert 2000 < len(body.encode()) < 2200
    counts, _ = render([letter(body=body)], paper)
    assert counts == [1]
