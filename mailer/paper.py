"""Campaign letters on paper: one print-ready PDF for the post, a letter per recipient.

``print_letters`` lays out each :class:`PaperLetter` as a letter for a window envelope and writes
them all as one PDF (made with fpdf2). What it guarantees:

- Each letter starts on a new page. The returned list holds each letter's page count, in order,
  and the pages of the PDF are exactly those letters' pages.
- The recipient's postal address lies inside the envelope's window once the sheet is folded:
  A4 in a DL or C6/5 window envelope, laid out per DIN 5008 Form B (the default), or US Letter
  folded in three in a #10 window envelope. On A4 a small return line (the sender's address on
  one line, or two) sits above it in the window, as DIN 5008 has it. An address
  that cannot fit the window (too many lines, or a line too wide even at 8 pt) is an
  :class:`AddressTooLong` error, never an address cut off by the window's edge.
- Every character prints with its own glyph from the embedded DejaVu fonts (Latin, Greek,
  Cyrillic and more: DejaVu Serif for the letter, DejaVu Sans for the address and for the
  symbols the serif lacks) and comes back out of the PDF's text as written (in Unicode NFC). A
  character the fonts lack, or one they cannot print right (right-to-left scripts, control
  characters), is a :class:`MissingGlyph` error naming the row and the character: a letter
  never goes out with a blank box where a name should be.
- Long paragraphs wrap at spaces (a word longer than the line, such as a web address, between
  characters) and break across pages, never leaving one line of a paragraph alone at the foot
  or the head of a page; the signature shares its page with the closing line and the end of
  the paragraph before, so no page holds only "Best regards," and a name. Every page of
  a letter of several pages carries a discreet "2/3" at its foot; there are no other headers
  or footers.
- Letters are taken from the iterable one at a time and not kept: what stays in memory is what
  fpdf2 keeps of the pages drawn so far. ``out`` receives the PDF only once every letter is laid
  out, so an error leaves ``out`` untouched.

All positions are in millimetres from the page's top-left corner, font sizes in points.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    from fpdf import FPDF

__all__ = [
    "LAYOUTS",
    "AddressTooLong",
    "MissingGlyph",
    "Paper",
    "PaperError",
    "PaperLetter",
    "describe_char",
    "print_letters",
]

Paper = Literal["a4", "letter"]


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakref: tests see letters let go
class PaperLetter:
    """One letter to print, as the campaign rendered it for one row of the list."""

    line: int  # the row's line in recipients.csv (for error messages)
    sender: tuple[str, ...]  # the sender's postal address block, lines
    recipient: tuple[str, ...]  # the recipient's postal address lines
    place_date: str  # e.g. "Brussels, 1 December 2026"
    body: str  # greeting, paragraphs, closing line; \n line breaks
    signature: str  # the sender's name, printed under room for a handwritten signature


class PaperError(ValueError):
    """A letter that cannot be printed as it is; ``line`` is its row in the recipient list.

    ``message`` is the problem without the row, ready for ``Problem(file, line, message)``.
    """

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


class MissingGlyph(PaperError):
    """A character the print fonts cannot show as written; ``char`` is the first of ``chars``."""

    def __init__(self, line: int, field: str, chars: tuple[str, ...], why: str) -> None:
        self.field = field
        self.chars = chars
        self.char = chars[0]
        listed = " and ".join(describe_char(c) for c in chars)
        super().__init__(line, f"{field} has {listed}, {why}")


class AddressTooLong(PaperError):
    """The recipient's address does not fit the envelope's window."""


def describe_char(char: str) -> str:
    """``U+1F600 '😀' (GRINNING FACE)``: the code point, the character if it is safe to show."""
    code = f"U+{ord(char):04X}"
    name = unicodedata.name(char, "") or (
        "a control character" if unicodedata.category(char) == "Cc" else ""
    )
    # A control character shown as itself would act on the terminal that prints the message.
    if not char.isprintable():
        shown = ""
    elif unicodedata.combining(char):
        shown = f" '\u25cc{char}'"  # a combining mark is shown on a dotted circle, as Unicode does
    else:
        shown = f" '{char}'"
    return f"{code}{shown} ({name})" if name else f"{code}{shown}"


# --- Page geometry ------------------------------------------------------------------------------

MM_PER_PT = 25.4 / 72
INCH = 25.4


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle on the page, in mm from the page's top-left corner."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything goes on one paper size."""

    fpdf_format: str
    width: float
    height: float
    window: Rect  # the envelope's window as it falls on the folded sheet
    address_left: float
    address_right: float
    return_line: bool  # whether the sender's return line shows in the window
    return_top: float  # the return line (one or two lines) starts here
    address_top: float | None  # where the address starts (None: under the return line)
    address_top_min: float  # the highest it may start, when the return line gives way
    address_bottom: float
    sender_left: float
    sender_top: float
    sender_right: float
    body_top: float  # where the letter's text starts on its first page
    text_left: float
    text_right: float
    text_bottom: float
    continuation_top: float
    page_number_baseline: float
    fold_marks: tuple[float, ...]
    hole_mark: float | None


# A4 per DIN 5008 (2020), Form B ("tiefgestelltes Anschriftfeld"), for a DL (110 x 220 mm) or
# C6/5 (114 x 229 mm) window envelope per DIN 680 (window 90 x 45 mm, 20 mm from the left and
# 15 mm from the bottom edge). The sheet is folded at the marks at 105 and 210 mm, so the top
# panel (0-105 mm) faces the window; resting on its fold in the envelope's bottom, the window
# falls on the sheet at 20-110 mm across and 45-90 mm down, which is DIN 5008's address field:
#   address field 85 x 45 mm, 20 mm from the left, 45 mm from the top, made of
#   - 5 mm for the return line (Ruecksendeangabe), 45-50 mm, at most 8 pt,
#   - the Zusatz- und Vermerkzone, 12.7 mm (3 lines of 4.23 mm), 50-62.7 mm,
#   - the Anschriftzone, 27.3 mm (6 lines), 62.7-90 mm, where the address starts.
# DIN 5008 treats the return line and the Vermerke as one zone of 17.7 mm (5 lines of 8 pt),
# so a return line too long for one line takes a second; and it lets an address of more than
# 6 lines run up into the Vermerkzone, which mailer leaves empty.
# Text: 25 mm left margin (the address field's text starts 5 mm inside it, on the same line),
# at least 20 mm right margin; information block (the sender's address, then place and date)
# 125 mm from the left, 50 mm from the top;
# fold marks at 105 and 210 mm, hole mark at 148.5 mm. Sources: DIN 5008:2020-03 section 19
# (Briefvordrucke) and DIN 680, as summarised in the DIN-lang and Falzmarke articles of the
# German Wikipedia and r9005.de's "Briefbogen Form B" sheet.
A4 = Layout(
    fpdf_format="A4",
    width=210.0,
    height=297.0,
    window=Rect(20.0, 45.0, 110.0, 90.0),
    address_left=25.0,
    address_right=105.0,
    return_line=True,
    return_top=45.8,  # a 7 pt line (2.9 mm) centred in the 5 mm return zone
    address_top=62.7,
    address_top_min=50.0,
    address_bottom=90.0,
    sender_left=125.0,
    sender_top=50.0,
    sender_right=190.0,
    # The first line after the address field, two of DIN 5008's 4.23 mm lines below it, where
    # DIN puts the subject: below the window (95 mm down even when the sheet rides up 5 mm).
    body_top=98.46,
    text_left=25.0,
    text_right=190.0,
    text_bottom=277.0,  # 20 mm bottom margin: there is no footer to make room for
    continuation_top=25.0,
    page_number_baseline=287.0,
    fold_marks=(105.0, 210.0),
    hole_mark=148.5,
)

# US Letter (8.5 x 11 in) folded in three (panels of 11/3 in) in a #10 window envelope
# (4 1/8 x 9 1/2 in), with the window of the common commercial standard: 4 1/2 x 1 1/8 in,
# 7/8 in from the left and 1/2 in from the bottom edge. The top panel faces the window; resting
# on its fold in the envelope's bottom and centred (1/2 in to spare on each side), the sheet
# sees the window at 0.375-4.875 in across and 2.042-3.167 in down (3.667 - 1.625, 3.667 - 0.5).
# USPS DMM 601.6.3 wants 1/8 in clear between the address and the window's edges as the
# insert moves to its limits: the sheet can slide 1/2 in either way across, so the address
# stays within 1-4.25 in across (which is also the 1 in text margin), and 2.167-3.042 in down
# (the bottom 1/8 in of the window is also the top of the barcode clear zone, the envelope's
# bottom 5/8 in). No return line in the window: USPS wants nothing but the address in the
# OCR read area (other printing as high and as far from it as can be), and a #10 envelope
# carries the return address in its top left corner.
_LETTER_ADDRESS_TOP = 2.0 + 1 / 24 + 1 / 8  # 2.1667 in
LETTER = Layout(
    fpdf_format="Letter",
    width=8.5 * INCH,
    height=11.0 * INCH,
    window=Rect(0.375 * INCH, (11 / 3 - 1.625) * INCH, 4.875 * INCH, (11 / 3 - 0.5) * INCH),
    address_left=1.0 * INCH,
    address_right=4.25 * INCH,
    return_line=False,
    return_top=_LETTER_ADDRESS_TOP * INCH,
    address_top=None,
    address_top_min=_LETTER_ADDRESS_TOP * INCH,
    address_bottom=(11 / 3 - 0.625) * INCH,
    # The sender's address, then place and date, top right: above the window's reach (its top
    # edge falls no higher than 2.04 in on the sheet, 1.92 in less the 1/8 in), so nothing but
    # the address shows through it, for a sender block of up to six lines.
    sender_left=5.0 * INCH,
    sender_top=0.5 * INCH,
    sender_right=7.5 * INCH,
    body_top=3.75 * INCH,  # below the fold at 3.667 in: never in the window
    text_left=1.0 * INCH,
    text_right=7.5 * INCH,
    text_bottom=10.4 * INCH,  # 0.6 in bottom margin: there is no footer to make room for
    continuation_top=1.0 * INCH,
    page_number_baseline=11.0 * INCH - 10.0,
    fold_marks=(11 / 3 * INCH, 22 / 3 * INCH),
    hole_mark=None,
)

LAYOUTS: Mapping[str, Layout] = {"a4": A4, "letter": LETTER}

# --- Typography ---------------------------------------------------------------------------------
# A letter, not a report: a serif text face at 10 pt on 1.25 line spacing (DejaVu Serif is
# large on its body: 10 pt of it reads like 11-12 pt of Times), ragged right, a blank line
# between paragraphs. A typical campaign letter (2 kB) then fits on one sheet.
# The address is in the sans face at 10 pt, never below 8 pt: the USPS asks for machine-read
# addresses in 8-18 pt (10-12 best), sans serif preferred, and DIN 5008 for no less than 8 pt
# (sans serif below 10 pt).

_FONT_DIR = Path(__file__).resolve().parent / "fonts"
_SERIF_FILE = _FONT_DIR / "DejaVuSerif.ttf"
_SANS_FILE = _FONT_DIR / "DejaVuSans.ttf"

BODY_PT = 10.0
BODY_LEADING = 1.25
SENDER_PT = 9.0
ADDRESS_PTS = (10.0, 9.5, 9.0, 8.5, 8.0)
ADDRESS_LEADING = 1.2
RETURN_PTS = (7.0, 6.5, 6.0)
RETURN_LEADING = 1.15
RETURN_GAP = 1.0  # mm between the return line and the address
PAGE_NUMBER_PT = 8.0
SIGNATURE_ROOM_LINES = 3  # blank lines between the closing line and the name (DIN 5008)
GREY = 110  # page numbers and fold marks: there, but not part of the letter


@dataclass(frozen=True, slots=True)
class _Face:
    """A font file, and the one that prints what it lacks (DejaVu Serif lacks ❤ and ★)."""

    key: str
    widths: Mapping[int, float]  # advance of each code point, in 1/1000 em, spare's included
    own: frozenset[int]  # the code points this font prints itself
    covers: frozenset[int]  # ... and with its spare
    ascent: float  # of the em, as the PDF's font descriptor (and text extraction) has it
    descent: float
    spare: _Face | None = None


def _face(pdf: FPDF, key: str, path: Path, spare: _Face | None = None) -> _Face:
    from fpdf.fonts import TTFFont

    pdf.add_font(key, "", path)
    font = pdf.fonts[key]
    assert isinstance(font, TTFFont)
    own = frozenset(font.cmap)
    widths = {cp: font.cw[cp] for cp in own}
    if spare is not None:
        widths = {**{cp: spare.widths[cp] for cp in spare.covers - own}, **widths}
    return _Face(
        key=key,
        widths=widths,
        own=own,
        covers=own | spare.covers if spare else own,
        ascent=font.desc.ascent / 1000,
        descent=-font.desc.descent / 1000,
        spare=spare,
    )


def _runs(text: str, face: _Face) -> list[tuple[_Face, str]]:
    """``text`` cut where it changes between the face and its spare."""
    spare = face.spare
    if spare is None or face.own.issuperset(map(ord, text)):
        return [(face, text)]
    runs: list[tuple[_Face, str]] = []
    for char in text:
        which = face if ord(char) in face.own else spare
        if runs and runs[-1][0] is which:
            runs[-1] = (which, runs[-1][1] + char)
        else:
            runs.append((which, char))
    return runs


class _Measure:
    """Widths of words in a face, kept: a campaign's letters share almost all their words."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], float] = {}

    def units(self, face: _Face, text: str) -> float:
        """The advance of ``text`` in 1/1000 em (no kerning: fpdf2 does not apply it either)."""
        key = (face.key, text)
        width = self._cache.get(key)
        if width is None:
            widths = face.widths
            width = sum(widths.get(ord(c), 0.0) for c in text)
            if len(self._cache) > 200_000:  # letters that share no words: keep memory flat
                self._cache.clear()
            self._cache[key] = width
        return width

    def mm(self, face: _Face, text: str, size: float) -> float:
        return self.units(face, text) * size / 1000 * MM_PER_PT


# --- Text as the letters have it ------------------------------------------------------------

# Characters that are dropped: they only tell a screen how to show the text. Variation selectors
# ask for an emoji or a text form (print has only the text form); a soft hyphen shows only where
# a word is broken, and mailer breaks lines at spaces.
_INVISIBLE = dict.fromkeys((0x00AD, 0xFE0E, 0xFE0F))
_LINE_BREAKS = re.compile(r"\r\n|[\r\u2028\u2029\x85\x0b\x0c]")


def _clean(text: str) -> str:
    # NFC: the fonts have the composed letters (a decomposed "e" + U+0301 would need a shaping
    # engine to place the accent), and text extraction then gives back what the row had.
    text = unicodedata.normalize("NFC", text)
    text = _LINE_BREAKS.sub("\n", text).replace("\t", "    ")
    return text.translate(_INVISIBLE)


def _unprintable(text: str, face: _Face) -> tuple[list[str], list[str]]:
    """The distinct characters of ``text`` the face lacks, and those it cannot print right."""
    lacks: list[str] = []
    wrong: list[str] = []
    for char in dict.fromkeys(text):
        if char == "\n":
            continue
        if unicodedata.category(char) in ("Cc", "Cs") or ord(char) not in face.covers:
            lacks.append(char)
        elif unicodedata.bidirectional(char) in ("R", "AL", "RLE", "RLO", "RLI"):
            # The glyphs exist, but printed without a bidi and shaping engine the words would
            # come out backwards and unjoined: wrong, not merely ugly.
            wrong.append(char)
    return lacks, wrong


def _check(line: int, field: str, text: str, *faces: _Face) -> None:
    for face in faces:
        lacks, wrong = _unprintable(text, face)
        if lacks:
            raise MissingGlyph(
                line, field, tuple(lacks), "which the print font lacks: replace or remove it"
            )
        if wrong:
            raise MissingGlyph(
                line, field, tuple(wrong), "right-to-left text, which cannot be printed yet"
            )


_TOKENS = re.compile(r"[^ ]+| +")


def _wrap(text: str, face: _Face, size: float, width: float, measure: _Measure) -> list[str]:
    """Break one line of text into lines at most ``width`` mm wide, at spaces.

    Spaces that indent the line are kept; a wrapped line starts at the margin. A word wider
    than the line is broken between characters (a long web address), not let out of the margin.
    """
    limit = width / MM_PER_PT * 1000 / size  # in 1/1000 em
    lines: list[str] = []
    current: list[str] = []
    used = 0.0
    space = ""
    for token in _TOKENS.findall(text):
        if token[0] == " ":
            space = token
            continue
        lead = space if current or not lines else ""
        space = ""
        lead_units = measure.units(face, lead) if lead else 0.0
        units = measure.units(face, token)
        if used + lead_units + units <= limit:
            current += (lead, token)
            used += lead_units + units
            continue
        if current:
            lines.append("".join(current))
            current, used = [], 0.0
        if units <= limit:
            current, used = [token], units
            continue
        piece, used = "", 0.0
        for char in token:  # char by char, adding up: a pasted 100 kB blob stays linear
            advance = face.widths.get(ord(char), 0.0)
            if piece and used + advance > limit:
                lines.append(piece)
                piece, used = "", 0.0
            piece += char
            used += advance
        current = [piece]
    if current or not lines:
        lines.append("".join(current))
    return lines


# --- One letter laid out -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Placed:
    y: float  # baseline
    text: str


@dataclass(frozen=True, slots=True)
class _Address:
    size: float
    leading: float  # mm
    first_baseline: float
    lines: tuple[str, ...]
    return_lines: tuple[str, ...]  # empty when the return line gives way, or there is none
    return_size: float


def _return_lines(
    sender: list[str], room: float, sans: _Face, measure: _Measure
) -> tuple[tuple[str, ...], float]:
    """The sender's address on one line (or two) that fits ``room`` mm; none if it cannot."""
    if not sender:
        return (), RETURN_PTS[0]
    # One line at a slightly smaller size reads better than two; 6 pt is the least.
    for most in (1, 2):
        for size in RETURN_PTS[: 2 if most == 1 else 3]:
            if any(measure.mm(sans, item, size) > room for item in sender):
                continue
            lines = [sender[0]]
            for item in sender[1:]:
                joined = f"{lines[-1]} · {item}"
                if measure.mm(sans, joined, size) <= room:
                    lines[-1] = joined
                else:
                    lines.append(item)
            if len(lines) <= most:
                return tuple(lines), size
    return (), RETURN_PTS[0]


def _fit_address(
    letter: PaperLetter,
    lines: list[str],
    sender: list[str],
    lay: Layout,
    sans: _Face,
    measure: _Measure,
) -> _Address:
    """The largest size, and the place, at which every line of the address fits the window."""
    if not lines:
        raise AddressTooLong(
            letter.line, "recipient address is empty: a letter for the post needs one"
        )
    room = lay.address_right - lay.address_left
    return_lines, return_size = _return_lines(
        sender if lay.return_line else [], room, sans, measure
    )
    return_height = len(return_lines) * return_size * RETURN_LEADING * MM_PER_PT
    under_return = lay.return_top + return_height + RETURN_GAP if return_lines else None
    # Where the address may start, best first: where the standard puts it, then straight under
    # the return line, then (the return line giving way) as high as the window allows.
    starts: list[tuple[float, bool]] = []
    if lay.address_top is not None and (under_return or 0.0) <= lay.address_top:
        starts.append((lay.address_top, True))
    if under_return is not None:
        starts.append((under_return, True))
    starts.append((lay.address_top_min, False))
    widest = max(lines, key=lambda s: measure.units(sans, s))
    for size in ADDRESS_PTS:
        if measure.mm(sans, widest, size) > room:
            continue
        leading = size * ADDRESS_LEADING * MM_PER_PT
        # From the first line's ascent to the last line's descent: what text extraction and
        # the eye see as the block.
        height = (len(lines) - 1) * leading + (sans.ascent + sans.descent) * size * MM_PER_PT
        for top, with_return in starts:
            if top + height <= lay.address_bottom + 1e-6:
                return _Address(
                    size=size,
                    leading=leading,
                    first_baseline=top + sans.ascent * size * MM_PER_PT,
                    lines=tuple(lines),
                    return_lines=return_lines if with_return else (),
                    return_size=return_size,
                )
    smallest = ADDRESS_PTS[-1]
    if measure.mm(sans, widest, smallest) > room:
        wide = measure.mm(sans, widest, smallest)
        raise AddressTooLong(
            letter.line,
            f"recipient address line {widest!r} is too wide for the envelope window "
            f"({wide:.0f} mm at {smallest:g} pt, {room:.0f} mm fit): shorten it or split it",
        )
    leading = smallest * ADDRESS_LEADING * MM_PER_PT
    tallest = lay.address_bottom - lay.address_top_min
    most = int((tallest - (sans.ascent + sans.descent) * smallest * MM_PER_PT) / leading) + 1
    raise AddressTooLong(
        letter.line,
        f"recipient address has {len(lines)} lines; the envelope window holds {most}",
    )


def _paragraphs(body: str) -> list[list[str] | None]:
    """The body as paragraphs (their source lines) and blank lines (None)."""
    blocks: list[list[str] | None] = []
    paragraph: list[str] = []
    for raw in body.split("\n"):
        if raw.strip():
            paragraph.append(raw.rstrip())
            continue
        if paragraph:
            blocks.append(paragraph)
            paragraph = []
        blocks.append(None)
    if paragraph:
        blocks.append(paragraph)
    return blocks


def _body_without_signature(body: str, signature: list[str]) -> str:
    """The body, less a last line that repeats the signature's name.

    A mail template ends with the sender's name (``{{ sender_name }}``); on paper the name is
    printed under the room for a handwritten signature, so it must not also close the text.
    """
    lines = body.rstrip().split("\n")
    if signature and len(lines) > len(signature):
        tail = [s.strip() for s in lines[-len(signature) :]]
        if tail == signature:
            lines = lines[: -len(signature)]
    return "\n".join(lines).strip("\n").rstrip()


class _Flow:
    """Lines going down the pages of one letter, a page break when the text area is full."""

    def __init__(self, top: float, lay: Layout, leading: float, baseline_offset: float) -> None:
        self.pages: list[list[_Placed]] = [[]]
        self.y = top  # top of the next line's box
        self.lay = lay
        self.leading = leading
        self.offset = baseline_offset

    def room(self) -> int:
        return int((self.lay.text_bottom - self.y) / self.leading + 1e-6)

    def at_page_top(self) -> bool:
        return not self.pages[-1]

    def new_page(self) -> None:
        self.pages.append([])
        self.y = self.lay.continuation_top

    def put(self, text: str) -> None:
        if self.room() < 1:
            self.new_page()
        self.pages[-1].append(_Placed(self.y + self.offset, text))
        self.y += self.leading

    def blank(self) -> None:
        if not (self.at_page_top() and len(self.pages) > 1):  # no page starts with a blank line
            self.y += self.leading

    def paragraph(self, lines: list[str], tail: int) -> None:
        """Place a paragraph; ``tail`` lines that follow it must share the page of its end.

        No line of a paragraph is left alone at the foot of a page (an orphan) or carried
        alone to the next (a widow); with a tail, the last two lines go with it.
        """
        done = 0
        while True:
            rest = len(lines) - done
            room = self.room()
            if rest + tail <= room:
                break
            take = min(room, rest - (min(rest, 2) if tail else 0))
            if rest - take == 1:
                take -= 1
            if done == 0 and take == 1:
                take = 0
            if take <= 0 and self.at_page_top():
                # Not even a fresh page holds it as the rules want: fill this one instead of
                # moving on for ever.
                take = min(room, rest)
                if take == rest:
                    break
            for text in lines[done : done + max(take, 0)]:
                self.put(text)
            done += max(take, 0)
            self.new_page()
        for text in lines[done:]:
            self.put(text)


def _number_pages(pages: int) -> list[str]:
    return [f"{n}/{pages}" for n in range(1, pages + 1)] if pages > 1 else [""]


class _Printer:
    def __init__(self, lay: Layout) -> None:
        # fpdf2 is imported here, not with the module: it is 0.4 s of every command's start-up
        # otherwise, and only mailer print draws pages.
        from fpdf import FPDF

        self.lay = lay
        pdf = FPDF(orientation="portrait", unit="mm", format=lay.fpdf_format)
        pdf.set_auto_page_break(False)  # pages are broken by _Flow, with widow control
        pdf.set_margins(lay.text_left, lay.continuation_top, lay.width - lay.text_right)
        pdf.set_creator("mailer")
        pdf.set_title("Letters")
        self.pdf = pdf
        self.sans = _face(pdf, "sans", _SANS_FILE)
        self.serif = _face(pdf, "serif", _SERIF_FILE, spare=self.sans)
        self.measure = _Measure()
        self.leading = BODY_PT * BODY_LEADING * MM_PER_PT
        glyph_box = (self.serif.ascent + self.serif.descent) * BODY_PT * MM_PER_PT
        # Glyphs centred in their line's box, so a line box's top is where its text starts.
        self.offset = (self.leading - glyph_box) / 2 + self.serif.ascent * BODY_PT * MM_PER_PT
        self._font: tuple[str, float] | None = None

    def draw(self, face: _Face, size: float, x: float, y: float, text: str) -> None:
        """Print ``text`` with its baseline at ``y``, each character in the font that has it."""
        for which, run in _runs(text, face):
            if self._font != (which.key, size):
                self.pdf.set_font(which.key, size=size)
                self._font = (which.key, size)
            if run:
                self.pdf.text(x, y, run)
            x += self.measure.mm(which, run, size)

    def letter(self, letter: PaperLetter) -> int:
        lay, serif, sans = self.lay, self.serif, self.sans
        sender = [s.strip() for s in map(_clean, letter.sender) if s.strip()]
        # DIN 5008: no blank lines inside an address block.
        recipient = [s.strip() for s in map(_clean, letter.recipient) if s.strip()]
        place_date = " ".join(_clean(letter.place_date).split())
        signature = [s.strip() for s in _clean(letter.signature).split("\n") if s.strip()]
        body = _body_without_signature(_clean(letter.body), signature)

        _check(letter.line, "recipient address", "\n".join(recipient), sans)
        _check(letter.line, "sender address", "\n".join(sender), serif, sans)
        _check(letter.line, "place and date", place_date, serif)
        _check(letter.line, "letter text", body, serif)
        _check(letter.line, "signature", "\n".join(signature), serif)
        address = _fit_address(letter, recipient, sender, lay, sans, self.measure)

        sender_leading = SENDER_PT * BODY_LEADING * MM_PER_PT
        sender_width = lay.sender_right - lay.sender_left
        sender_lines = [
            wrapped
            for line in sender
            for wrapped in _wrap(line, serif, SENDER_PT, sender_width, self.measure)
        ]
        # Place and date close the sender's block after a blank line, at the text's size.
        date_top = lay.sender_top + (len(sender_lines) + 1) * sender_leading * bool(sender_lines)
        date_baseline = date_top + self.offset
        block_bottom = date_top + self.leading if place_date else date_top
        width = lay.text_right - lay.text_left
        flow = _Flow(max(lay.body_top, block_bottom + self.leading), lay, self.leading, self.offset)
        blocks = [
            None
            if block is None
            else [
                wrapped
                for line in block
                for wrapped in _wrap(line, serif, BODY_PT, width, self.measure)
            ]
            for block in _paragraphs(body)
        ]
        # What must share a page with what follows it: the signature goes with the end of the
        # last paragraph, and a short one ("Best regards,") with the end of the one before, so
        # no page holds only the closing and the name.
        tail = SIGNATURE_ROOM_LINES + len(signature) if signature else 0
        tails: dict[int, int] = {}
        texts = [i for i, block in enumerate(blocks) if block is not None]
        if tail and texts:
            tails[texts[-1]] = tail
            closing = blocks[texts[-1]] or []
            if len(closing) <= 2 and len(texts) > 1:
                tails[texts[-2]] = texts[-1] - texts[-2] - 1 + len(closing) + tail
        for i, block in enumerate(blocks):
            if block is None:
                flow.blank()
            else:
                flow.paragraph(block, tails.get(i, 0))
        if signature:
            if flow.room() < tail:
                flow.new_page()
            flow.y += SIGNATURE_ROOM_LINES * self.leading
            for line in signature:
                flow.put(line)

        numbers = _number_pages(len(flow.pages))
        pdf = self.pdf
        for n, placed in enumerate(flow.pages):
            pdf.add_page()
            self._font = None  # fpdf2 sets the font anew on each page
            if n == 0:
                pdf.start_section(f"{letter.line}: {recipient[0]}")
                self.first_page(address, sender_lines, sender_leading, place_date, date_baseline)
            for item in placed:
                self.draw(serif, BODY_PT, lay.text_left, item.y, item.text)
            if numbers[n]:
                pdf.set_text_color(GREY)
                x = lay.text_right - self.measure.mm(sans, numbers[n], PAGE_NUMBER_PT)
                self.draw(sans, PAGE_NUMBER_PT, x, lay.page_number_baseline, numbers[n])
                pdf.set_text_color(0)
        return len(flow.pages)

    def first_page(
        self,
        address: _Address,
        sender_lines: list[str],
        sender_leading: float,
        place_date: str,
        date_baseline: float,
    ) -> None:
        lay, pdf, serif, sans = self.lay, self.pdf, self.serif, self.sans
        # Fold and hole marks at the left edge, short and grey, 4 mm in: most printers leave
        # the outer 4 mm blank.
        pdf.set_draw_color(GREY)
        pdf.set_line_width(0.2)
        for y in lay.fold_marks:
            pdf.line(4.0, y, 9.0, y)
        if lay.hole_mark is not None:
            pdf.line(4.0, lay.hole_mark, 11.0, lay.hole_mark)
        size = address.return_size
        return_leading = size * RETURN_LEADING * MM_PER_PT
        return_baseline = lay.return_top + sans.ascent * size * MM_PER_PT
        for i, line in enumerate(address.return_lines):
            self.draw(sans, size, lay.address_left, return_baseline + i * return_leading, line)
        for i, line in enumerate(address.lines):
            y = address.first_baseline + i * address.leading
            self.draw(sans, address.size, lay.address_left, y, line)
        first = lay.sender_top + serif.ascent * SENDER_PT * MM_PER_PT
        for i, line in enumerate(sender_lines):
            self.draw(serif, SENDER_PT, lay.sender_left, first + i * sender_leading, line)
        if place_date:
            self.draw(serif, BODY_PT, lay.sender_left, date_baseline, place_date)


def print_letters(
    letters: Iterable[PaperLetter], out: BinaryIO, *, paper: Paper = "a4"
) -> list[int]:
    """Write one PDF, each letter starting on a new page; return each letter's page count.

    ``paper="a4"`` (the default) is A4 for a DL or C6/5 window envelope per DIN 5008 Form B;
    ``paper="letter"`` is US Letter for a #10 window envelope. Raises :class:`MissingGlyph` or
    :class:`AddressTooLong` (both :class:`PaperError`, naming the letter's row) before anything
    is written to ``out``. No letters: nothing is written, and the list is empty.
    """
    lay = LAYOUTS.get(paper)
    if lay is None:
        raise ValueError(f"paper must be 'a4' or 'letter', not {paper!r}")
    printer = _Printer(lay)
    counts = [printer.letter(letter) for letter in letters]
    if counts:
        out.write(printer.pdf.output())
    return counts
