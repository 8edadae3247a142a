"""The letter template: a header block, a blank line, then the body, all Jinja (sandboxed).

The format is mailmerge's, so its templates work unchanged::

    To: "{{ title }} {{ name }}" <{{ email }}>
    Subject: Human rights in Hong Kong
    Attachment: briefing.pdf

    Dear {{ title }} {{ name }},

An HTML version of the body may sit beside the text template with the same stem
(`letter.txt` + `letter.html`); it is rendered with autoescape and sent as an alternative.

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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import SandboxedEnvironment

from .addresses import InvalidAddress, mailbox_parts
from .errors import ConfigError, InputError, Problem

ADDRESS_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To")
# The headers whose every address is checked (see the module docstring); From is the sender's.
GUARDED_HEADERS = ("To", "Cc", "Bcc", "Reply-To")
_CANONICAL = {name.lower(): name for name in (*ADDRESS_HEADERS, "Subject", "Attachment")}
# Headers mailer writes itself; a template that sets them would produce a broken message.
_RESERVED = {"date", "message-id", "mime-version", "content-type", "content-transfer-encoding"}
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


def _address_value(value: Any) -> Any:
    """Jinja `finalize` for address headers: also keeps data inside its quoted string."""
    text = _header_value(value if isinstance(value, str) else str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _environment(**options: Any) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                **options)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One letter's rendered parts, before it becomes a MIME message."""

    headers: list[tuple[str, str]]
    text: str
    html: str | None = None

    def get(self, name: str) -> list[str]:
        """Every rendered value of the header `name` (canonical spelling)."""
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class _Piece:
    """A compiled part of the template and the file line it starts on."""

    name: str
    source: str
    line: int
    compiled: Any = None
    variables: dict[str, int] = field(default_factory=dict)
    # Text with no Jinja syntax in it renders as itself (a fixed Subject, say).
    fixed: bool = False

    def __post_init__(self) -> None:
        self.fixed = "{" not in self.source

    def render(self, context: Mapping[str, Any]) -> str:
        return self.source if self.fixed else self.compiled.render(context)


class LetterTemplate:
    """A parsed, compiled letter template. Use `LetterTemplate.load(path)`."""

    def __init__(self, path: Path, text: str, html: str | None = None,
                 html_path: Path | None = None) -> None:
        self.path = path
        self.html_path = html_path
        problems: list[Problem] = []
        self.optional: set[str] = set()
        self._address_variables: frozenset[str] = frozenset()
        self.headers, body_line = _split_headers(path, text, problems)
        body = "\n".join(_lines(text)[body_line - 1:]) + "\n"
        self._pieces = [_Piece(name, value, line) for name, value, line in self.headers]
        self._body = _Piece("body", body, body_line)
        self._html = _Piece("html", html, 1) if html is not None else None
        self._compile(problems)
        if problems:
            raise InputError(problems)

    @classmethod
    def load(cls, path: Path) -> LetterTemplate:
        """Read the template at `path` (and its `.html` sibling, if there is one)."""
        text = _read(path)
        html_path = path.with_suffix(".html")
        if html_path == path or not html_path.is_file():
            return cls(path, text)
        return cls(path, text, _read(html_path), html_path)

    def _compile(self, problems: list[Problem]) -> None:
        plain = _environment(finalize=_header_value)
        address = _environment(finalize=_address_value)
        envs = {"body": _environment(), "html": _environment(autoescape=True)}
        for piece in self._all_pieces():
            env = envs.get(piece.name) or (address if piece.name in ADDRESS_HEADERS else plain)
            file = self.html_path if piece.name == "html" else self.path
            try:
                tree = env.parse(piece.source)
                piece.compiled = env.from_string(tree)
                # Jinja copies a template's globals into every render's context; as its
                # default ChainMap that copy costs more than rendering a short header.
                piece.compiled.globals = dict(piece.compiled.globals)
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
        yield self._body
        if self._html is not None:
            yield self._html

    @property
    def has_html(self) -> bool:
        """Whether an HTML alternative is sent with the text."""
        return self._html is not None

    def variables(self) -> dict[str, tuple[str, int]]:
        """Each variable the template reads, with the file and line of its first use."""
        found: dict[str, tuple[str, int]] = {}
        for piece in self._all_pieces():
            file = str(self.html_path if piece.name == "html" else self.path)
            for name, line in piece.variables.items():
                found.setdefault(name, (file, line))
        return found

    def header_variables(self) -> set[str]:
        """Variables used in headers: their values may never contain a line break."""
        names = {name for piece in self._pieces for name in piece.variables}
        if not any(piece.name == "To" for piece in self._pieces):
            names |= {"title", "name"}  # the default To header shows them
        return names

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
            text = self._body.render(context)
            html = self._html.render(context) if self._html is not None else None
        except RenderError:
            raise
        except TemplateError as error:
            raise RenderError(f"template: {error.message}") from None
        except Exception as error:  # the template's own code failed, e.g. {{ 1 / 0 }}
            raise RenderError(f"template: {type(error).__name__}: {error}") from None
        return Rendered(headers, text, html)


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


def _split_headers(path: Path, text: str,
                   problems: list[Problem]) -> tuple[list[tuple[str, str, int]], int]:
    """Parse the header block: (canonical name, value, line) triples and the body's first line."""
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
            problems.append(Problem(str(path), number, f"{line[:40]!r} is not a header line; "
                                    "the template starts with lines like 'Subject: ...', then a "
                                    "blank line, then the letter"))
            continue
        name = _CANONICAL.get(match[1].lower(), match[1])
        if name.lower() in _RESERVED:
            problems.append(Problem(str(path), number, f"the {name} header is set by mailer; "
                                    "remove it from the template"))
            continue
        headers.append((name, match[2].strip(), number))
    else:
        number = len(lines) + 1
    if not any(name == "Subject" for name, _, _ in headers) and not problems:
        problems.append(Problem(str(path), 1, "no Subject header; add a line 'Subject: ...' "
                                "at the top"))
    for single in ("From", "To", "Subject", "Reply-To"):
        repeated = [line for name, _, line in headers if name == single][1:]
        problems.extend(Problem(str(path), line, f"a second {single} header; keep one")
                        for line in repeated)
    return headers, number + 1


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
