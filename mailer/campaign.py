"""A campaign: settings, a recipient list and a template, composed into a stream of letters.

Nothing here touches the network: `check` proves every letter can be built before anything is
sent, and `letters` yields them for the dry-run outbox or the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, Problem
from .message import Letter, LetterBuilder
from .recipients import Recipient, RecipientList, read_columns
from .settings import Settings
from .template import LetterTemplate, RenderError


@dataclass(slots=True)
class CheckReport:
    """What `Campaign.check` found: how many rows and letters, and every problem."""

    rows: int
    letters: int
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self) -> str:
        """`214 recipients, 0 problems`, with a note when not every problem is listed."""
        text = (f"{self.rows} recipient{'s' * (self.rows != 1)}, "
                f"{self.problem_count} problem{'s' * (self.problem_count != 1)}")
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
                             allow_duplicates=self.allow_duplicates)

    def letters(self, recipients: RecipientList, *, redirect_to: str | None = None,
                only: Callable[[Recipient], bool] | None = None) -> Iterator[Letter]:
        """Build a letter per valid row (of those `only` accepts, when given; the others are
        not rendered); rows that fail are added to `recipients.problems`."""
        template = str(self.template.path)
        for recipient in recipients:
            if only is not None and not only(recipient):
                continue
            try:
                yield self.builder.build(recipient, redirect_to=redirect_to)
            except RenderError as error:
                recipients.add_problem(Problem(str(self.recipients_path), recipient.line,
                                               f"{error} (rendering {template})", error.column))

    def check(self) -> CheckReport:
        """Validate the list and build every letter, keeping none: proof before a send."""
        recipients = self.recipients()
        letters = sum(1 for _ in self.letters(recipients))
        return CheckReport(recipients.rows, letters, recipients.problems,
                           recipients.problem_count)

    def require_clean(self) -> CheckReport:
        """`check`, raising InputError listing every problem unless there are none."""
        report = self.check()
        if not report.ok:
            raise InputError(report.problems, report.summary())
        return report
