"""What came back to the sender's mailbox: bounces and replies, recorded against the letters.

`read_inbox` reads each folder from where it last stopped (its UIDVALIDITY and last UID, kept
in the send log), only messages received since the first letter went, the headers of each
and the whole of a message only when it may be a bounce. A letter is found by its
Message-ID (one per campaign and recipient), which a bounce returns and a reply names; a
bounce that returns none is matched by its failed address to the latest campaign that wrote
to it before. Recording is idempotent: a folder read again records nothing twice, so a
stopped read is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from .bounces import Bounce, Reply, classify, may_be_bounce
from .mailbox import Mailbox
from .sendlog import SendLog, stamp

_CLOCK_SKEW = 300.0


@dataclass(frozen=True, slots=True)
class Bounced:
    """A letter recorded bounced."""

    campaign: str
    email: str
    status: str
    diagnostic: str


@dataclass(slots=True)
class InboxSummary:
    """What one read found; `known` were about letters and recorded by an earlier read."""

    folders: list[str] = field(default_factory=list)
    read: int = 0
    replies: int = 0
    auto_replies: int = 0
    bounced: list[Bounced] = field(default_factory=list)
    delayed: int = 0  # delay notices: the letter's state does not change
    copies_bounced: int = 0  # bounces of a letter's Cc or Bcc copy, not of the letter
    known: int = 0
    unrelated: int = 0


def read_inbox(mailbox: Mailbox, log: SendLog, folders: Sequence[str], since: date,
               campaign: str | None = None, *, from_start: bool = False) -> InboxSummary:
    """Read `folders` for bounces and replies to the letters of `campaign` (None: every
    campaign in the log), received since `since`; record them in `log`. `from_start`
    reads again what earlier reads read (from `since`)."""
    reader = _Reader(log, campaign)
    for folder in folders:
        key = f"{mailbox.account} {folder} {campaign or '*'}"
        uidvalidity = mailbox.examine(folder)
        mark = log.mailbox_mark(key)
        # Another UIDVALIDITY: the folder was rebuilt and its UIDs mean other messages.
        after = mark[1] if mark and mark[0] == uidvalidity and not from_start else 0
        uids = mailbox.search(since, after)
        candidates = []
        for message in mailbox.fetch(uids):
            reader.summary.read += 1
            if may_be_bounce(message.data):
                candidates.append(message.uid)
            else:
                reader.take(classify(message.data), message.received)
        for message in mailbox.fetch(candidates, ""):
            reader.take(classify(message.data), message.received)
        last = max([after, *uids, *(mark[1:] if mark and mark[0] == uidvalidity else ())])
        log.set_mailbox_mark(key, uidvalidity, last, time.time())
        reader.summary.folders.append(folder)
    return reader.summary


class _Reader:
    def __init__(self, log: SendLog, campaign: str | None) -> None:
        self.log = log
        self.campaign = campaign
        self.summary = InboxSummary()

    def _ours(self, message_ids: Sequence[str]) -> list[tuple[str, str]]:
        found = self.log.find(message_ids) if message_ids else {}
        return [letter for letter in found.values()
                if self.campaign is None or letter[0] == self.campaign]

    def _latest(self, email: str, before: float) -> list[tuple[str, str]]:
        # A server's INTERNALDATE has whole seconds, and its clock may be a little off ours.
        campaigns = [c for c in self.log.sent_to(email, before + _CLOCK_SKEW)
                     if self.campaign is None or c == self.campaign]
        return [(campaigns[0], email.casefold())] if campaigns else []

    def take(self, item: Bounce | Reply | None, received: float) -> None:
        if isinstance(item, Bounce):
            self._bounce(item, received)
        elif isinstance(item, Reply):
            self._reply(item, received)
        else:
            self.summary.unrelated += 1

    def _bounce(self, bounce: Bounce, received: float) -> None:
        summary = self.summary
        letters = self._ours(bounce.message_ids)
        failed = {address.casefold() for address in bounce.recipients}
        if letters and failed and not any(email in failed for _, email in letters):
            summary.copies_bounced += 1  # the letter went; a copy to someone else did not
            return
        if not letters:
            letters = [found for address in bounce.recipients
                       for found in self._latest(address, received)]
        if not letters:
            summary.unrelated += 1
        elif bounce.delayed:
            summary.delayed += 1
        for campaign, email in [] if bounce.delayed else letters:
            if self.log.record_bounce(campaign, email, bounce.status, bounce.diagnostic,
                                      received):
                summary.bounced.append(Bounced(campaign, email, bounce.status,
                                               bounce.diagnostic))
            else:
                summary.known += 1

    def _reply(self, reply: Reply, received: float) -> None:
        summary = self.summary
        letters = self._ours(reply.refers_to)
        if not letters and not reply.refers_to and reply.automatic:
            # A vacation robot that names no letter: its sender is the official.
            letters = self._latest(reply.sender, received)
        if not letters:
            summary.unrelated += 1
        for campaign, email in letters:
            if self.log.record_reply(campaign, email, reply.automatic,
                                     reply.date or stamp(received), reply.sender,
                                     reply.subject):
                if reply.automatic:
                    summary.auto_replies += 1
                else:
                    summary.replies += 1
            else:
                summary.known += 1
