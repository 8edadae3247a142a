"""The letter template: a header block, a blank line, then the body, all Jinja (sandboxed).

The format is mailmerge's, so its templates work unchanged::

    To: "{{ title }} {{ name }}" <{{ email }}>
    Subject: Human rights in Hong Kong
    Attachment: briefing.pdf

    Dear {{ title }} {{ name }},

The body is plain text unless the template's `Content-Type` says otherwise: `text/html`,
`text/markdown` (sent as the Markdown itself and the HTML it makes), or a `multipart/...`
with a boundary, whose parts are written out in the body as in a mail message, each with its
own `Content-Type`. HTML is rendered with autoescape, and values placed in Markdown are
escaped before it becomes HTML, so that no value from the list becomes markup. An HTML
version may also sit beside a plain template with the same stem (`letter.txt` +
`letter.html`), sent as an alternative.

Who a letter goes to. An address in To, Cc, Bcc or Reply-To must be one of:

- the row's `email`;
- the value of a column the template uses *whole as an address*: a bare `{{ column }}` that is
  a whole mailbox (`Cc: {{ assistant }}`, `Cc: office@example.org, {{ assistant }}`) or the
  whole text between `<` and `>` (`Cc: "Office" <{{ assistant }}>`), in any branch of an
  `{% if %}`. The check holds each such column to one valid address per row (or nothing);
- an address written in the template's own address headers.

A variable anywhere else in an address header (in a display name, next to other text, through
a filter) stands in a name, and its value never contributes an address: `To: {{ name }}
<{{ email }}>` with name `evil@example.com, Bob` is refused, even if another column of the row
holds evil@example.com. `address_variables` finds the address positions in the Jinja syntax
tree, reading each way through the header's `{% if %}` blocks as `parse_address_list` reads a
rendered header.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import SandboxedEnvironment

from .addresses import InvalidAddress, mailbox_parts
from .errors import ConfigError, InputError, Problem

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

ADDRESS_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To")
# The headers whose every address is checked (see the module docstring); From is the sender's.
GUARDED_HEADERS = ("To", "Cc", "Bcc", "Reply-To")
_CANONICAL = {name.lower(): name for name in (*ADDRESS_HEADERS, "Subject", "Attachment",
                                              "Content-Type")}
# Headers mailer writes itself; a template that sets them would produce a broken message.
_RESERVED = {"date", "message-id"}
# Headers about the encoding, which mailer chooses: taken from a template and not written.
_ENCODING = {"mime-version", "content-transfer-encoding"}
_BODY_TYPES = ("text/plain", "text/html", "text/markdown")
# CommonMark lets any ASCII punctuation be escaped with a backslash.
_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")


@functools.cache
def _markdown() -> MarkdownIt:
    """The Markdown renderer, made when a template first needs it (its import and set-up
    are a part of every command's start-up otherwise)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"breaks": True, "html": True}).enable(
        ["table", "strikethrough"])

_HEADER_LINE = re.compile(r"([!-9;-~]+):[ \t]*(.*)")
# Variables that come from settings rather than from the recipient list, with their setting.
SETTINGS_VARIABLES = {"sender_name": "MAILER_SENDER_NAME", "sender_email": "MAILER_FROM"}
# What some reader takes for the end of a line: CR, LF, and what str.splitlines also breaks at
# besides the ASCII controls below (NEL, U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR).
LINE_BREAK = re.compile("[\r\n\x85\u2028\u2029]")
# ASCII controls but tab: a mail reader flags them in a header even when RFC 2047-encoded.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class RenderError(ValueError):
    """One letter could not be rendered; the message names what to fix."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


def _header_value(value: Any) -> Any:
    """Jinja `finalize` for headers: data can never bring a line break into a header."""
    text = value if isinstance(value, str) else str(value)
    if LINE_BREAK.search(text) or "\0" in text:
        raise RenderError("a value placed in a header contains a line break")
    if CONTROL.search(text):
        raise RenderError("a value placed in a header contains a control character")
    return value


def _markdown_value(value: Any) -> str:
    """Jinja `finalize` for the Markdown that becomes HTML: a value stays text."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\g<0>", value if isinstance(value, str) else str(value))


def _address_value(value: Any) -> Any:
    """Jinja `finalize` for address headers: also keeps data inside its quoted string."""
    text = _header_value(value if isinstance(value, str) else str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _environment(**options: Any) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                **options)


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf of a letter's body: `plain` or `html` text, in the charset the template
    declared (None: UTF-8)."""

    subtype: str
    text: str
    charset: str | None = None


@dataclass(frozen=True, slots=True)
class Multipart:
    """Parts of a letter's body that go together (`alternative`, `mixed`, `related`)."""

    subtype: str
    parts: tuple[Part | Multipart, ...]


Body = Part | Multipart


def html_parts(body: Body) -> list[Part]:
    """The HTML leaves of a body, in order."""
    if isinstance(body, Part):
        return [body] if body.subtype == "html" else []
    return [leaf for part in body.parts for leaf in html_parts(part)]


@dataclass(frozen=True, slots=True)
class Rendered:
    """One letter's rendered headers and body, before it becomes a MIME message."""

    headers: list[tuple[str, str]]
    body: Body

    def get(self, name: str) -> list[str]:
        """Every rendered value of the header `name` (canonical spelling)."""
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class _Piece:
    """A compiled part of the template and the file line it starts on."""

    # A header's name, or the body's part: "plain", "html" or "markdown".
    name: str
    source: str
    line: int
    charset: str | None = None
    compiled: Any = None
    # For Markdown: the same source with every value escaped, to make the HTML from.
    escaped: Any = None
    variables: dict[str, int] = field(default_factory=dict)
    # Text with no Jinja syntax in it renders as itself (a fixed Subject, say).
    fixed: bool = False

    def __post_init__(self) -> None:
        self.fixed = "{" not in self.source

    def render(self, context: Mapping[str, Any]) -> str:
        return self.source if self.fixed else self.compiled.render(context)

    def body(self, context: Mapping[str, Any]) -> Body:
        """This body part as rendered (Markdown: as itself and as the HTML it makes)."""
        if self.name != "markdown":
            return Part(self.name, self.render(context), self.charset)
        markdown = self.source if self.fixed else self.escaped.render(context)
        html = f"<html><body>{_markdown().render(markdown)}</body></html>\n"
        return Multipart("alternative", (Part("plain", self.render(context), self.charset),
                                         Part("html", html, self.charset)))


class LetterTemplate:
    """A parsed, compiled letter template. Use `LetterTemplate.load(path)`; `warnings` holds
    what it accepted but a reader should know (no Subject, say)."""

    def __init__(self, path: Path, text: str, html: str | None = None,
                 html_path: Path | None = None, language: str = "") -> None:
        self.path = path
        self.html_path = html_path
        # A language version's code (letter.fr.txt: "fr"), "" for the template itself.
        self.language = language
        problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.optional: set[str] = set()
        self._address_variables: frozenset[str] = frozenset()
        self.headers, body_line = _split_headers(path, text, problems, self.warnings)
        body = "\n".join(_lines(text)[body_line - 1:]) + "\n"
        self._pieces = [_Piece(name, value, line) for name, value, line in self.headers
                        if name != "Content-Type"]
        content_type = next((v for n, v, _ in self.headers if n == "Content-Type"), "")
        if html is not None and content_type and not content_type.startswith("text/plain"):
            problems.append(Problem(str(path), 1, f"has a Content-Type ({content_type}) and an "
                                    f"HTML version beside it ({html_path}); keep one"))
        self._multipart, self._body = _body_pieces(path, content_type, body, body_line,
                                                   problems)
        if html is not None:
            self._multipart = "alternative"
            self._body.append(_Piece("html", html, 1))
        self._compile(problems)
        if problems:
            raise InputError(problems)

    @classmethod
    def load(cls, path: Path, language: str = "") -> LetterTemplate:
        """Read the template at `path` (and its `.html` sibling, if there is one)."""
        text = _read(path)
        html_path = path.with_suffix(".html")
        if html_path == path or not html_path.is_file():
            return cls(path, text, language=language)
        return cls(path, text, _read(html_path), html_path, language)

    def _compile(self, problems: list[Problem]) -> None:
        plain = _environment(finalize=_header_value)
        address = _environment(finalize=_address_value)
        envs = {"plain": _environment(), "markdown": _environment(),
                "html": _environment(autoescape=True)}
        escaping = _environment(finalize=_markdown_value)
        for piece in self._all_pieces():
            env = envs.get(piece.name) or (address if piece.name in ADDRESS_HEADERS else plain)
            file = self.html_path if piece is self._body[-1] and self.html_path else self.path
            try:
                tree = env.parse(piece.source)
                piece.compiled = env.from_string(tree)
                # Jinja copies a template's globals into every render's context; as its
                # default ChainMap that copy costs more than rendering a short header.
                piece.compiled.globals = dict(piece.compiled.globals)
                if piece.name == "markdown":
                    piece.escaped = escaping.from_string(tree)
            except TemplateSyntaxError as error:
                line = piece.line + (error.lineno or 1) - 1
                problems.append(Problem(str(file), line, f"template syntax: {error.message}"))
                continue
            piece.variables = _variables(tree, piece.line)
            self.optional |= _tested_names(tree)
            if piece.name in GUARDED_HEADERS:
                self._address_variables |= _address_names(tree) & set(piece.variables)

    def _all_pieces(self) -> Iterable[_Piece]:
        yield from self._pieces
        yield from self._body

    def variables(self) -> dict[str, tuple[str, int]]:
        """Each variable the template reads, with the file and line of its first use."""
        found: dict[str, tuple[str, int]] = {}
        for piece in self._all_pieces():
            file = str(self.html_path if piece is self._body[-1] and self.html_path
                       else self.path)
            for name, line in piece.variables.items():
                found.setdefault(name, (file, line))
        return found

    def header_variables(self) -> set[str]:
        """Variables used in headers: their values may never contain a line break."""
        names = {name for piece in self._pieces for name in piece.variables}
        if not any(piece.name == "To" for piece in self._pieces):
            names |= {"title", "name"}  # the default To header shows them
        return names

    def get(self, name: str) -> list[str]:
        """The template's own text of every header `name` (canonical spelling)."""
        return [value for key, value, _ in self.headers if key == name]

    def address_variables(self) -> frozenset[str]:
        """Variables used whole as an address in To, Cc, Bcc or Reply-To (see the module
        docstring): the only ones whose values a letter may be addressed to, besides `email`."""
        return self._address_variables

    def missing_columns(self, columns: Iterable[str]) -> list[Problem]:
        """A problem for every variable the template uses that neither CSV nor settings give."""
        available = set(columns) | set(SETTINGS_VARIABLES)
        return [Problem(file, line, f"uses {{{{ {name} }}}}, but the recipient list has no "
                        f"column {name!r}; add the column or change the template")
                for name, (file, line) in sorted(self.variables().items(), key=lambda i: i[1])
                if name not in available]

    def required_fields(self) -> set[str]:
        """Variables that must not be empty: used, and not only tested with if/default."""
        return set(self.variables()) - self.optional - set(SETTINGS_VARIABLES)

    def render(self, context: Mapping[str, Any]) -> Rendered:
        """Render one letter; raise RenderError if it cannot be rendered safely."""
        try:
            headers = [(p.name, p.render(context)) for p in self._pieces]
            parts = [piece.body(context) for piece in self._body]
        except RenderError:
            raise
        except TemplateError as error:
            raise RenderError(f"template: {error.message}") from None
        except Exception as error:  # the template's own code failed, e.g. {{ 1 / 0 }}
            raise RenderError(f"template: {type(error).__name__}: {error}") from None
        body = parts[0] if self._multipart is None else Multipart(self._multipart, tuple(parts))
        return Rendered(headers, body)


def _tested_names(tree: nodes.Template) -> set[str]:
    """Names the template tests (`{% if x %}`, `x is defined`, `x | default(...)`): these
    may be empty in a row, since the template decides what to do then."""
    tests: list[nodes.Node | None] = [n.test for n in tree.find_all(nodes.If)]
    tests += [n.test for n in tree.find_all(nodes.CondExpr)]
    tests += [n.node for n in tree.find_all(nodes.Filter) if n.name in {"default", "d"}]
    tests += [n.node for n in tree.find_all(nodes.Test)]
    names: set[str] = set()
    for test in tests:
        if test is not None:
            names.update(n.name for n in test.find_all(nodes.Name))
            if isinstance(test, nodes.Name):
                names.add(test.name)
    return names


def _address_names(tree: nodes.Template) -> set[str]:
    """Names a header uses whole as an address: a whole mailbox or a whole `<...>`, in some way
    through its `{% if %}` blocks. A way that is not a valid address list tells nothing."""
    found: set[str] = set()
    for skeleton in _skeletons(tree.body):
        try:
            mailboxes = list(mailbox_parts(skeleton))
        except InvalidAddress:
            continue
        for words, angle in mailboxes:
            whole = _PLACE.fullmatch(angle if angle is not None else " ".join(words))
            if whole:
                found.add(whole[1])
    return found


# A variable's place in a skeleton, and anything else computed: private-use characters, which
# the address tokenizer reads as part of a word, so that a variable next to other text (or to
# another variable) is not whole.
_PLACE = re.compile("\ue000(\\w+)\ue000")
_COMPUTED = "\ue001"
# Ways through a header's `{% if %}` blocks that are read; a variable in address position only
# beyond them is merely not trusted with an address (its letters are refused, never misrouted).
_MAX_WAYS = 64


def _skeletons(body: list[nodes.Node]) -> list[str]:
    """The header's text for each way through its `{% if %}` blocks, a bare `{{ name }}` written
    as its `_PLACE` and any other computed part (a filter, a loop, a `{% set %}`) as one mark."""
    ways = [""]
    for node in body:
        if isinstance(node, nodes.Output):
            texts = ["".join(_skeleton_part(child) for child in node.nodes)]
        elif isinstance(node, nodes.If):
            branches = [node.body, *(elif_.body for elif_ in node.elif_), node.else_]
            texts = [text for branch in branches for text in _skeletons(branch)]
        else:
            texts = [_COMPUTED]
        ways = [way + text for way in ways for text in texts][:_MAX_WAYS]
    return ways


def _skeleton_part(node: nodes.Node) -> str:
    if isinstance(node, nodes.TemplateData):
        return str(node.data)
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return f"\ue000{node.name}\ue000"
    return _COMPUTED


def _variables(tree: nodes.Template, first_line: int) -> dict[str, int]:
    undeclared = find_undeclared_variables(tree)
    lines: dict[str, int] = {}
    for name_node in tree.find_all(nodes.Name):
        if name_node.name in undeclared and name_node.ctx == "load":
            lines.setdefault(name_node.name, first_line + name_node.lineno - 1)
    return lines


def _split_headers(path: Path, text: str, problems: list[Problem], warnings: list[Problem]
                   ) -> tuple[list[tuple[str, str, int]], int]:
    """Parse the header block: (canonical name, value, line) triples and the body's first
    line. As mailmerge (Python's email parser) does, the first line that is not a header
    starts the body even without a blank line before it."""
    headers: list[tuple[str, str, int]] = []
    lines = _lines(text)
    number = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            break
        if line[0] in " \t" and headers:
            name, value, first = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}", first)
            continue
        match = _HEADER_LINE.fullmatch(line)
        if not match:
            warnings.append(Problem(str(path), number, "warning: no blank line after the "
                                    "headers: the letter starts here (add a blank line above "
                                    "it to make that plain)"))
            number -= 1
            break
        name = _CANONICAL.get(match[1].lower(), match[1])
        if name.lower() in _RESERVED:
            problems.append(Problem(str(path), number, f"the {name} header is set by mailer; "
                                    "remove it from the template"))
        elif name.lower() not in _ENCODING:
            headers.append((name, match[2].strip(), number))
    else:
        number = len(lines) + 1
    if not any(name == "Subject" for name, _, _ in headers):
        warnings.append(Problem(str(path), 1, "warning: no Subject header; the letters will "
                                "have none (add a line 'Subject: ...' at the top)"))
    for single in ("From", "To", "Subject", "Reply-To", "Content-Type"):
        repeated = [line for name, _, line in headers if name == single][1:]
        problems.extend(Problem(str(path), line, f"a second {single} header; keep one")
                        for line in repeated)
    return headers, number + 1


def _body_pieces(path: Path, content_type: str, body: str, line: int,
                 problems: list[Problem]) -> tuple[str | None, list[_Piece]]:
    """The body's parts as the Content-Type declares them, and the multipart subtype that
    holds them together (None for a single part)."""
    declared = _content_type(content_type or "text/plain")
    kind = declared.get_content_type()
    if kind in _BODY_TYPES:
        return None, [_Piece(kind[5:], body, line, declared.get_content_charset())]
    boundary = declared.get_param("boundary")
    if declared.get_content_maintype() != "multipart" or not isinstance(boundary, str):
        problems.append(Problem(str(path), 1, f"Content-Type {content_type!r} is not a letter "
                                "mailer can build; use text/plain, text/html, text/markdown or "
                                "multipart/alternative with a boundary"))
        return None, []
    pieces = []
    for part_line, headers, text in _written_parts(body, line, boundary):
        part = _content_type(headers.get("content-type", "text/plain"))
        if part.get_content_type() not in _BODY_TYPES:
            problems.append(Problem(str(path), part_line, f"a part of type "
                                    f"{part.get_content_type()} inside {kind}: the parts written "
                                    "in a template are text/plain, text/html or text/markdown "
                                    "(attach files with an Attachment header)"))
            continue
        pieces.append(_Piece(part.get_content_type()[5:], text, part_line,
                             part.get_content_charset()))
    if not pieces:
        problems.append(Problem(str(path), line, f"no part starts with --{boundary}, the "
                                "boundary the Content-Type names"))
    return declared.get_content_subtype(), pieces


def _written_parts(body: str, line: int, boundary: str
                   ) -> Iterable[tuple[int, dict[str, str], str]]:
    """The parts of a multipart body written out by hand: the line each part's text starts
    on, its headers (lower-cased names), its text. What comes before the first boundary (a
    note for old mail readers) and after the closing one is left out."""
    lines = _lines(body)
    marks = [i for i, text in enumerate(lines) if text.rstrip() in (f"--{boundary}",
                                                                      f"--{boundary}--")]
    # The closing `--boundary--` may be left out (mailmerge's own example does): the body's
    # end ends the last part.
    for start, end in itertools.pairwise([*marks, len(lines)]):
        if lines[start].rstrip() == f"--{boundary}--":
            break
        headers: dict[str, str] = {}
        position = start + 1
        while position < end and (match := _HEADER_LINE.fullmatch(lines[position])):
            headers[match[1].lower()] = match[2].strip()
            position += 1
        if position < end and not lines[position].strip():
            position += 1  # the blank line after the part's headers
        text = "\n".join(lines[position:end]).rstrip("\n") + "\n"
        yield line + position, headers, text


def _content_type(value: str) -> Message:
    """A Content-Type value, read as mail readers read it."""
    message = Message()
    message["Content-Type"] = value
    return message


def _lines(text: str) -> list[str]:
    """Lines as an editor and Jinja count them: str.splitlines would also break at a form feed
    or U+2028, changing the letter and every line number after it."""
    lines = _NEWLINE.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the template: {error.strerror}") from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise InputError([Problem(str(path), line, "is not UTF-8; save the template as UTF-8")
                          ]) from None
