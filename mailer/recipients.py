"""The recipient list: a CSV file read as a stream of validated rows.

Rows are validated by a pydantic model built for the file's own columns, so every problem is
reported per column, all of them in one pass (memory stays bounded whatever the list's size:
only a 64-bit hash per address is kept to find duplicates).
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from .addresses import InvalidAddress, normalize_address
from .errors import ConfigError, InputError, Problem
from .schedule import zone
from .template import CONTROL, LINE_BREAK, SETTINGS_VARIABLES

_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One validated row: the line it starts on, its normalized address ("" if the list has
    no email column) and all its fields."""

    line: int
    email: str
    fields: dict[str, str]


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("contains a NUL character; remove it")
    return value


def _single_line(value: str) -> str:
    if LINE_BREAK.search(value):
        raise ValueError("contains a line break, but it is used in a mail header; "
                         "put it on one line")
    control = CONTROL.search(value)
    if control:
        raise ValueError(f"contains a control character (U+{ord(control[0]):04X}), but it is "
                         "used in a mail header; remove it")
    return value


def _timezone(value: str) -> str:
    """A row's time zone, for its send window: an IANA name, or nothing for the default."""
    if value.strip():
        zone(value.strip())
    return value


def _required(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty, but the template uses it; fill it in")
    return value


def _email(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; every row needs an address")
    try:
        return normalize_address(value.strip())
    except InvalidAddress as error:
        raise ValueError(f"{value!r} is not a valid address: {error}") from None


def column_address(value: str) -> str:
    """The normalized address in a field the template uses as an address, or "" if the field is
    blank; ValueError saying what to fix if it holds anything else (a name, two addresses)."""
    if not value.strip():
        return ""
    try:
        return normalize_address(value.strip())
    except InvalidAddress as error:
        raise ValueError(f"{value!r} is not a valid address ({error}), but the template uses "
                         "this column as an address; put one address in it") from None


def _address(value: str) -> str:
    column_address(value)
    return value  # as written: the row shows it in the letter as the list has it


def row_model(columns: list[str], required: Iterable[str] = (),
              single_line: Iterable[str] = (), addresses: Iterable[str] = ()
              ) -> type[BaseModel]:
    """A pydantic model for rows with these columns (the `email` column is always checked)."""
    required, single_line, addresses = set(required), set(single_line), set(addresses)
    fields: dict[str, Any] = {}
    for index, column in enumerate(columns):
        checks = [AfterValidator(_no_nul)]
        if column == "email":
            checks.append(AfterValidator(_email))
        else:
            if column in single_line:
                checks.append(AfterValidator(_single_line))
            if column in required:
                checks.append(AfterValidator(_required))
            if column in addresses:
                checks.append(AfterValidator(_address))
            if column == "timezone":
                checks.append(AfterValidator(_timezone))
        fields[f"c{index}"] = (Annotated[str, *checks], Field(alias=column))
    return create_model("RecipientRow", __config__=ConfigDict(frozen=True), **fields)


def fold(text: str) -> str:
    """Text as `--where` compares it: without case or accents (Élysée = elysee)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c)).casefold().strip()


@dataclass(frozen=True, slots=True)
class Where:
    """Only the rows whose values match, any case and accents: several values of one column
    are alternatives, different columns must all match."""

    wanted: tuple[tuple[str, frozenset[str]], ...]
    text: str

    @classmethod
    def parse(cls, items: Iterable[str]) -> Where:
        wanted: dict[str, set[str]] = {}
        for item in items:
            column, sep, value = item.partition("=")
            if not sep or not column.strip():
                raise ValueError(f"{item!r} should look like country=France")
            key = "email" if column.strip().lower() == "email" else column.strip()
            wanted.setdefault(key, set()).add(fold(value))
        return cls(tuple((c, frozenset(v)) for c, v in wanted.items()),
                   " ".join(f"--where {item}" for item in items))

    def matches(self, fields: dict[str, str]) -> bool:
        return all(fold(fields[column]) in values for column, values in self.wanted)


class RecipientList:
    """A recipient CSV file: iterate it for its valid rows and, as they come, the problems
    of the others (each row's, then the duplicates, found once the file is read).

    `required` columns must be non-empty, `single_line` columns may not hold line breaks,
    `addresses` columns must hold one valid address or nothing (the template decides which: see
    `LetterTemplate.required_fields`, `header_variables` and `address_variables`).
    """

    def __init__(self, path: Path, *, required: Iterable[str] = (),
                 single_line: Iterable[str] = (), addresses: Iterable[str] = (),
                 allow_duplicates: bool = False, where: Where | None = None) -> None:
        self.path = path
        self.allow_duplicates = allow_duplicates
        self.columns = read_columns(path)
        self.where = where
        unknown = [c for c, _ in where.wanted if c not in self.columns] if where else []
        if unknown:
            raise InputError([Problem(str(path), 1, f"--where {column}=...: there is no column "
                                      f"{column!r}; the columns are {', '.join(self.columns)}")
                              for column in unknown])
        self._model = row_model(self.columns, required, single_line, addresses)
        # Records read by the last pass (the header and malformed records aside; with
        # `where`, only those that match).
        self.rows = 0

    def __iter__(self) -> Iterator[Recipient | Problem]:
        self.rows = 0
        seen: set[int] = set()
        suspects: dict[str, list[Recipient]] = {}
        values_seen: dict[str, set[str]] = {}
        for item in _records(self.path, self.columns, skip_header=True):
            if isinstance(item, Problem):
                yield item
                continue
            if self.where is not None:
                fields = dict(zip(self.columns, item[1], strict=True))
                if not self.where.matches(fields):
                    for column, _ in self.where.wanted:
                        if len(values_seen.setdefault(column, set())) < 5:
                            values_seen[column].add(fields[column].strip())
                    continue
            self.rows += 1
            recipient = self._validate(*item)
            if not isinstance(recipient, Recipient):
                yield from recipient
                continue
            if not self.allow_duplicates and recipient.email:
                key = recipient.email.casefold()
                digest = hash(key)
                if digest in seen:
                    # Held back: either a duplicate or (rarely) a hash collision, settled below.
                    suspects.setdefault(key, []).append(recipient)
                    continue
                seen.add(digest)
            yield recipient
        if suspects:
            del seen
            yield from self._settle_duplicates(suspects)
        if self.where is not None and not self.rows:
            found = "; ".join(f"{column} holds {', '.join(sorted(map(repr, values)))}..."
                              for column, values in values_seen.items())
            yield Problem(str(self.path), None, f"no row matches {self.where.text} ({found}); "
                          "check the spelling")

    def _validate(self, line: int, values: list[str]) -> Recipient | list[Problem]:
        try:
            row = self._model.model_validate(dict(zip(self.columns, values, strict=True)))
        except ValidationError as error:
            return [Problem(str(self.path), line,
                            str(item["msg"]).removeprefix("Value error, "),
                            str(item["loc"][0]) if item["loc"] else None)
                    for item in error.errors()]
        fields = dict(zip(self.columns, row.__dict__.values(), strict=True))
        # Without an email column, the letter's To header says who it goes to.
        return Recipient(line, fields.get("email", ""), fields)

    def _settle_duplicates(self, suspects: dict[str, list[Recipient]]
                           ) -> Iterator[Recipient | Problem]:
        """Find where each suspect address first appears; report duplicates, free the rest."""
        first: dict[str, int] = {}
        email = self.columns.index("email")
        for item in _records(self.path, self.columns, skip_header=True):
            if isinstance(item, Problem):
                continue
            line, values = item
            try:
                key = normalize_address(values[email].strip()).casefold()
            except InvalidAddress:
                continue
            # An invalid row is not sent, so it is not the copy that is kept.
            if self.where is not None and not self.where.matches(
                    dict(zip(self.columns, values, strict=True))):
                continue
            if (key in suspects and key not in first
                    and isinstance(self._validate(line, values), Recipient)):
                first[key] = line
        for key, held in suspects.items():
            for recipient in held:
                if first.get(key, recipient.line) == recipient.line:
                    yield recipient  # a hash collision, not a duplicate
                else:
                    yield Problem(
                        str(self.path), recipient.line,
                        f"{recipient.email} is already on line {first[key]}; remove one of the "
                        "two rows (or pass --allow-duplicates to keep both: the address gets one "
                        "letter)", "email")


def read_columns(path: Path) -> list[str]:
    """The header row's column names, with the email column (any case) named `email`; raises
    InputError if a column has no name, appears twice, or takes a settings variable's name."""
    header = next(_records(path, None, skip_header=False), None)
    if isinstance(header, Problem):
        raise InputError([header])
    if header is None:
        raise InputError([Problem(str(path), None, "the file is empty; the first line must be "
                                  "a header such as email,name,title,country")])
    columns = [name.strip() for name in header[1]]
    problems = []
    for index, name in enumerate(columns):
        if name.lower() == "email":
            columns[index] = "email"
        elif not name:
            problems.append(Problem(str(path), 1, f"column {index + 1} has no name; "
                                    "give every column a header"))
        elif name in SETTINGS_VARIABLES:
            # As a template variable it would replace the setting, forging From row by row.
            problems.append(Problem(str(path), 1, f"column {name!r} is reserved: {{{{ {name} }}}} "
                                    f"is {SETTINGS_VARIABLES[name]} from the settings, and a "
                                    "column must not change the sender per row; rename it"))
    for name in {c for c in columns if columns.count(c) > 1}:
        problems.append(Problem(str(path), 1, f"column {name!r} appears twice; rename one"))
    if problems:
        raise InputError(problems)
    return columns


def _records(path: Path, columns: list[str] | None, *,
             skip_header: bool) -> Iterator[tuple[int, list[str]] | Problem]:
    """Yield (start line, fields) per CSV record, or the Problem of a badly shaped one."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the recipient list: {error.strerror}") from None
    with handle:
        lines = _decoded_lines(handle, str(path))
        first = next(lines, None)
        if first is None:
            return
        if "\r" in first.rstrip("\r\n"):
            raise InputError([Problem(str(path), 1, "its lines end with a carriage return alone "
                                      "(an old Mac format); save it as CSV with Windows (CRLF) "
                                      "or Unix (LF) line ends")])
        delimiter = max(_DELIMITERS, key=first.count)
        position = _LineCounter()
        reader = csv.reader(position.track(_chain(first, lines)), delimiter=delimiter,
                            strict=True)
        header_seen = False
        while True:
            start = position.line + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield Problem(str(path), start, _malformed(error, position.line - start + 1))
                continue
            if not values or values == [""]:
                continue
            if not header_seen:
                header_seen = True
                if skip_header:
                    continue
            if columns is not None and len(values) != len(columns):
                yield Problem(str(path), start, f"has {len(values)} fields but the header has "
                              f"{len(columns)}; quote values that contain '{delimiter}'")
                continue
            yield start, values


def _malformed(error: csv.Error, lines: int) -> str:
    """What a CSV error means, for a record that took `lines` lines."""
    if "field larger than field limit" not in str(error):
        return f"malformed CSV ({error}); check the quotes"
    if lines > 1:
        return (f"a quoted field opens here and runs on for {lines} lines and more than "
                f"{csv.field_size_limit() // 1024} kB without its closing quote; close it")
    return (f"a field here is longer than {csv.field_size_limit() // 1024} kB; no letter needs "
            "that much: shorten it")


class _LineCounter:
    """Counts physical lines as csv pulls them (it never reads past a record's last line),
    so each record is located at the line where it starts."""

    def __init__(self) -> None:
        self.line = 0

    def track(self, lines: Iterator[str]) -> Iterator[str]:
        for text in lines:
            self.line += 1
            yield text


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _decoded_lines(handle: Any, name: str) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError([Problem(name, number, f"is not UTF-8 (byte {raw[error.start]:#x} "
                                      f"at column {error.start + 1}); save the file as UTF-8 CSV")
                              ]) from None
