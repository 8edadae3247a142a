"""What happened to one letter: the states a recipient moves through, and a send's result."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .message import Letter


class Status(StrEnum):
    """A recipient's state in a campaign.

    pending -> sending -> sent | deferred (transient, retried next run) | failed (permanent)
    | unknown (the letter may have reached the server, but no answer was recorded); a sent
    letter is bounced when a delivery failure notice for it comes back to the mailbox.
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one letter's tries in a run, with the server's last word on it. It keeps
    the letter's SHA-256, not its bytes (a letter with a large attachment is not held
    longer than its send: `Outcome.of`)."""

    letter: Letter
    status: Status
    attempts: int
    code: int | None = None
    reply: str = ""
    # Unix times of the run's first and last try at this letter.
    first_try: float | None = None
    last_try: float | None = None
    # Cc or Bcc addresses refused while the letter itself went (the reply names them).
    copies_refused: int = 0
    sha256: str = ""

    @classmethod
    def of(cls, letter: Letter, status: Status, attempts: int, **details: Any) -> Outcome:
        """The outcome of `letter`, holding its hash and not its bytes."""
        return cls(dataclasses.replace(letter, data=b""), status, attempts,
                   sha256=hashlib.sha256(letter.data).hexdigest(), **details)

    def describe(self) -> str:
        """`550 5.1.1 no such user` or a plain reason, for people."""
        return f"{self.code} {self.reply}".strip() if self.code else self.reply
