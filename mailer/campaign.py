"""A campaign: settings, a recipient list and a template, composed into a stream of letters.

Nothing here touches the network or the send log: `build` turns each valid row into a letter
and yields the problem of every row that cannot be one, and `check` proves that every letter
can be built before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, Problem
from .message import Letter, LetterBuilder
from .recipients import Recipient, RecipientList, read_columns
from .settings import Settings
from .template import LetterTemplate, RenderError

# Problems a report keeps to list (it counts them all).
MAX_PROBLEMS = 10_000


def plural(count: int, noun: str) -> str:
    """`1 problem`, `2 problems`."""
    return f"{count} {noun}{'s' * (count != 1)}"


@dataclass(slots=True)
class CheckReport:
    """What `Campaign.check` found: how many rows and letters, and every problem."""

    rows: int = 0
    letters: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

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
                 name: str | None = None, allow_duplicates: bool = False) -> None:
        self.settings = settings
        self.recipients_path = recipients
        self.template = LetterTemplate.load(template)
        self.name = name or template.stem
        self.allow_duplicates = allow_duplicates
        self.builder = LetterBuilder(self.template, settings, self.name)

    def recipients(self) -> RecipientList:
        """A fresh pass over the recipient list; raises InputError if its columns cannot work."""
        missing = self.template.missing_columns(read_columns(self.recipients_path))
        if missing:
            raise InputError(missing)
        return RecipientList(self.recipients_path,
                             required=self.template.required_fields(),
                             single_line=self.template.header_variables(),
                             addresses=self.template.address_variables(),
                             allow_duplicates=self.allow_duplicates)

    def build_one(self, recipient: Recipient, *, redirect_to: str | None = None
                  ) -> Letter | Problem:
        """One recipient's letter, or the problem that keeps it from being built."""
        try:
            return self.builder.build(recipient, redirect_to=redirect_to)
        except RenderError as error:
            return Problem(str(self.recipients_path), recipient.line,
                           f"{error} (rendering {self.template.path})", error.column)

    def build(self, recipients: Iterable[Recipient | Problem] | None = None, *,
              redirect_to: str | None = None) -> Iterator[Letter | Problem]:
        """A letter for each valid row and the problem of each other, in list order."""
        for item in self.recipients() if recipients is None else recipients:
            yield item if isinstance(item, Problem) else \
                self.build_one(item, redirect_to=redirect_to)

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
        report = CheckReport()
        recipients = self.recipients()
        for item in self.build(recipients):
            if isinstance(item, Problem):
                report.add(item)
            else:
                report.letters += 1
        report.rows = recipients.rows
        return report

    def require_clean(self) -> CheckReport:
        """`check`, raising InputError listing every problem unless there are none."""
        report = self.check()
        if not report.ok:
            raise InputError(report.problems, report.summary())
        return report
