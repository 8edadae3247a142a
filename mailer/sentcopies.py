"""A copy of each letter the server accepted, in the sender's own Sent folder (IMAP APPEND),
so the volunteer's mailbox holds what went and replies thread with it.

A copy never changes a letter's fate: it is made after the letter was sent and recorded, an
append that fails is kept in a temporary file and tried once more at the end of the run, and
what could not be saved is counted, not retried by a later run. The exact bytes sent are
saved, marked read (\\Seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .account import mailbox_login
from .errors import MailboxError, MailerError
from .mailbox import Mailbox, mailbox_context
from .settings import Settings

# Submission servers that file a copy in Sent themselves: a second would be a duplicate.
_FILED_BY_PROVIDER = ("smtp.gmail.com", "smtp.googlemail.com", "smtp.office365.com",
                      "smtp-mail.outlook.com", "smtp.live.com")
# Copies waiting for the mailbox: a slow mailbox slows the send rather than fill memory.
_WAITING = 4


def saves_sent(settings: Settings) -> bool:
    """Whether a run saves copies: `yes`; `auto` when a mailbox is configured
    (MAILER_IMAP_HOST) and the provider does not file copies itself."""
    if settings.save_sent != "auto":
        return settings.save_sent == "yes"
    return settings.imap_host is not None and \
        settings.smtp_host.lower() not in _FILED_BY_PROVIDER


@dataclass(slots=True)
class CopiesSummary:
    folder: str = ""
    saved: int = 0
    unsaved: int = 0
    error: str = ""  # why the last copy that could not be saved was not


class SentCopies:
    """``async with SentCopies(settings) as copies: await copies.save(data, when)``.

    Entering connects and finds the Sent folder (MailboxError if it cannot: nothing has been
    sent yet); leaving saves what waits, tries the failed copies once more, and disconnects.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._login = mailbox_login(settings)
        self._context = mailbox_context(settings)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mailer-sent")
        self._mailbox: Mailbox | None = None
        self._queue: asyncio.Queue[tuple[bytes, float] | None] = asyncio.Queue(_WAITING)
        self._saver: asyncio.Task[None] | None = None
        self._spill = tempfile.TemporaryDirectory(prefix="mailer-sent-")
        self._failed: list[tuple[Path, float]] = []
        self.summary = CopiesSummary()

    async def __aenter__(self) -> SentCopies:
        try:
            await self._call(self._connect)
        except BaseException:
            await self._call(self._disconnect)
            self._thread.shutdown()
            self._spill.cleanup()
            raise
        self._saver = asyncio.create_task(self._saving())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        try:
            if kind is not None and issubclass(kind, asyncio.CancelledError):
                # Stopped at once: what waits is not saved (the letters went all the same).
                if self._saver is not None:
                    self._saver.cancel()
                self.summary.unsaved += self._queue.qsize() + len(self._failed)
                return
            if self._saver is not None:
                await self._queue.put(None)
                await self._saver
            for path, when in self._failed:  # once more each, at the end of the run
                await self._call(lambda p=path, w=when: self._save(p.read_bytes(), w,
                                                                   last_try=True))
        finally:
            await self._call(self._disconnect)
            self._thread.shutdown()
            self._spill.cleanup()

    async def save(self, data: bytes, when: float) -> None:
        """Queue a copy of a letter sent at `when`; waits while the mailbox catches up."""
        await self._queue.put((data, when))

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _saving(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._call(self._save, *item)

    def _connect(self) -> None:
        mailbox = Mailbox(self._settings, self._login, self._context).__enter__()
        self._mailbox = mailbox
        if not self.summary.folder:
            folder = mailbox.sent_folder()
            if folder is None:
                raise MailboxError(f"{mailbox.account} has no Sent folder (none marked \\Sent, "
                                   "none named Sent): set MAILER_SAVE_SENT=no to send "
                                   "without copies")
            self.summary.folder = folder.name

    def _disconnect(self) -> None:
        if self._mailbox is not None:
            with contextlib.suppress(MailerError, OSError):
                self._mailbox.__exit__(None, None, None)
            self._mailbox = None

    def _save(self, data: bytes, when: float, *, last_try: bool = False) -> None:
        try:
            if self._mailbox is None:
                self._connect()
            assert self._mailbox is not None
            self._mailbox.append(self.summary.folder, data, when)
            self.summary.saved += 1
        except Exception as error:  # whatever it is, the letter went: count the copy
            self._disconnect()  # the next copy reconnects
            self.summary.error = str(error)
            if last_try:
                self.summary.unsaved += 1
                return
            path = Path(self._spill.name) / f"{len(self._failed)}.eml"
            try:
                path.write_bytes(data)
            except OSError:
                self.summary.unsaved += 1  # no room to keep it for another try
                return
            self._failed.append((path, when))
