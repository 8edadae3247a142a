"""What happened to one letter: the states a recipient moves through, and a send's result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .message import Letter


class Status(StrEnum):
    """A recipient's state in a campaign.

    pending -> sending -> sent | deferred (transient, retried next run) | failed (permanent)
    | unknown (the run stopped while the letter was in flight: the server may have it).
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one letter's attempts in a run, with the server's last word on it."""

    letter: Letter
    status: Status
    attempts: int
    code: int | None = None
    reply: str = ""

    def describe(self) -> str:
        """`550 5.1.1 no such user` or a plain reason, for people."""
        return f"{self.code} {self.reply}".strip() if self.code else self.reply
