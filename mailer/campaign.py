"""A campaign: settings, a recipient list and a template, composed into a stream of letters.

Nothing here touches the network or the send log: `build` turns each valid row into a letter
and yields the problem of every row that cannot be one, and `check` proves that every letter
can be built before anything is sent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, Problem
from .message import Letter, LetterBuilder
from .recipients import Recipient, RecipientList, Where, read_columns
from .settings import Settings
from .template import LetterTemplate, RenderError

# A language version of `letter.txt`: `letter.fr.txt`, `letter.pt-br.txt`.
_VERSION = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})?")


def _versions(template: Path) -> list[tuple[str, Path]]:
    """The language versions beside a template, by language code."""
    found = []
    for path in sorted(template.parent.glob(f"{template.stem}.*{template.suffix}")):
        language = path.name[len(template.stem) + 1:-len(template.suffix) or None].lower()
        if path != template and _VERSION.fullmatch(language):
            found.append((language, path))
    return found


# Problems a report keeps to list (it counts them all).
MAX_PROBLEMS = 10_000


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 problem`, `2 problems` (`1 reply`, `2 replies` with `nouns`)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@dataclass(slots=True)
class CheckReport:
    """What `Campaign.check` found: how many rows and letters, and every problem."""

    rows: int = 0
    letters: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    # Where the letters' recipients come from: "the email column", or the To header's.
    recipients_from: str = ""
    # Letters per language version ("" for the template itself).
    versions: Counter[str] = field(default_factory=Counter)
    # Letters to international addresses (they need SMTPUTF8): how many, and the first few.
    international: int = 0
    international_examples: list[tuple[int, str]] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self) -> str:
        """`214 recipients, 0 problems`, with a note when not every problem is listed."""
        text = f"{plural(self.rows, 'recipient')}, {plural(self.problem_count, 'problem')}"
        hidden = self.problem_count - len(self.problems)
        return text + (f" ({hidden} not listed)" if hidden else "")


class Campaign:
    """One letter campaign. `name` defaults to the template's file stem."""

    def __init__(self, settings: Settings, recipients: Path, template: Path, *,
                 name: str | None = None, allow_duplicates: bool = False,
                 where: Where | None = None) -> None:
        self.settings = settings
        self.recipients_path = recipients
        self.template = LetterTemplate.load(template)
        self.name = name or template.stem
        self.allow_duplicates = allow_duplicates
        self.where = where
        self.builder = LetterBuilder(self.template, settings, self.name)
        # Language versions beside the template (letter.fr.txt), each with its builder.
        self.versions = {language: LetterBuilder(LetterTemplate.load(path, language), settings,
                                                 self.name)
                         for language, path in _versions(template)}

    @property
    def templates(self) -> list[LetterTemplate]:
        """The template and its language versions."""
        return [self.template, *(builder.template for builder in self.versions.values())]

    def recipients(self) -> RecipientList:
        """A fresh pass over the recipient list; raises InputError if its columns cannot work."""
        columns = read_columns(self.recipients_path)
        missing = [problem for template in self.templates
                   for problem in template.missing_columns(columns)]
        if "email" not in columns and not self.template.get("To"):
            missing.append(Problem(str(self.recipients_path), 1, "no 'email' column (found: "
                                   f"{', '.join(columns)}), and the template has no To header "
                                   "to say who each letter goes to; add one or the other"))
        if missing:
            raise InputError(missing)
        templates = self.templates
        return RecipientList(self.recipients_path,
                             required=set().union(*(t.required_fields() for t in templates)),
                             single_line=set().union(*(t.header_variables() for t in templates)),
                             addresses=set().union(*(t.address_variables() for t in templates)),
                             allow_duplicates=self.allow_duplicates, where=self.where)

    def builder_for(self, recipient: Recipient) -> LetterBuilder:
        """The builder of the row's language version (its `language` column), or the
        template's."""
        language = recipient.fields.get("language", "").strip().lower()
        return self.versions.get(language, self.builder)

    def build_one(self, recipient: Recipient, *, redirect_to: str | None = None
                  ) -> Letter | Problem:
        """One recipient's letter, or the problem that keeps it from being built."""
        builder = self.builder_for(recipient)
        try:
            return builder.build(recipient, redirect_to=redirect_to)
        except RenderError as error:
            return Problem(str(self.recipients_path), recipient.line,
                           f"{error} (rendering {builder.template.path})", error.column)

    def build(self, recipients: Iterable[Recipient | Problem] | None = None, *,
              redirect_to: str | None = None) -> Iterator[Letter | Problem]:
        """A letter for each valid row and the problem of each other, in list order.

        Without an email column, a letter is known by its To header's first address, which
        two rows may not share (unless duplicates are allowed: one letter per address).
        """
        first: dict[str, int] = {}
        for item in self.recipients() if recipients is None else recipients:
            built = item if isinstance(item, Problem) else \
                self.build_one(item, redirect_to=redirect_to)
            if isinstance(item, Recipient) and isinstance(built, Letter) and not item.email \
                    and not self.allow_duplicates:
                line = first.setdefault(built.email.casefold(), built.line)
                if line != built.line:
                    built = Problem(str(self.recipients_path), built.line, f"this row's letter "
                                    f"goes to {built.email}, as line {line}'s does; remove one "
                                    "of the two rows (or pass --allow-duplicates: the address "
                                    "gets one letter)")
            yield built

    def letters(self, *, redirect_to: str | None = None) -> Iterator[Letter]:
        """Every letter of a list already checked; InputError at the first problem (the list
        changed since the check)."""
        for item in self.build(redirect_to=redirect_to):
            if isinstance(item, Problem):
                raise InputError([item], f"{self.recipients_path} changed since it was "
                                 "checked; nothing more was sent")
            yield item

    def check(self) -> CheckReport:
        """Validate the list and build every letter, keeping none: proof before a send."""
        report = CheckReport(recipients_from=self.recipients_from())
        recipients = self.recipients()
        for item in self.build(recipients):
            if isinstance(item, Problem):
                report.add(item)
                continue
            report.letters += 1
            report.versions[item.version] += 1
            if item.smtputf8:
                report.international += 1
                if len(report.international_examples) < 5:
                    report.international_examples.append((item.line, item.email))
        report.rows = recipients.rows
        return report

    def recipients_from(self) -> str:
        """Where the letters' recipients come from, for people."""
        if "email" in read_columns(self.recipients_path):
            return "the 'email' column"
        columns = sorted(self.template.address_variables() & set(
            self.template.header_variables()))
        source = ", ".join(f"column {c!r}" for c in columns) or "its own text"
        return f"the To header: {self.template.get('To')[0]} ({source})"

    def require_clean(self) -> CheckReport:
        """`check`, raising InputError listing every problem unless there are none."""
        report = self.check()
        if not report.ok:
            raise InputError(report.problems, report.summary())
        return report
