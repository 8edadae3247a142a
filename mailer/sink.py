"""`mailer sink`: a local SMTP server (aiosmtpd) that keeps every letter it is given, for a
practice send with no mail account."""

from __future__ import annotations

import asyncio
import mailbox
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: envelope and bytes as the server got them."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def subject(self) -> str:
        return str(BytesHeaderParser(policy=default).parsebytes(self.data).get("Subject", ""))


def received(envelope: Envelope) -> Received:
    """What an aiosmtpd envelope holds once its DATA is in."""
    content = envelope.original_content or envelope.content or b""
    data = content if isinstance(content, bytes) else content.encode()
    return Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), data, time.monotonic())


class Sink:
    """aiosmtpd handler: stores each message in a Maildir and tells `on_message` of it."""

    def __init__(self, maildir: Path, on_message: Callable[[Received], None]) -> None:
        self._maildir = mailbox.Maildir(maildir, create=True)
        self._on_message = on_message

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        message = received(envelope)
        self._maildir.add(message.data)
        self._on_message(message)
        return "250 2.0.0 OK: queued"


class SinkController(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (it reports the port it was given)."""

    def _run(self, ready_event: threading.Event) -> None:
        try:
            super()._run(ready_event)
        finally:
            # aiosmtpd leaves start() waiting out its whole timeout when binding fails.
            ready_event.set()

    def _trigger_server(self) -> None:
        if self._thread_exception is not None:
            raise self._thread_exception
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


def start_sink(handler: Any, host: str = "127.0.0.1", port: int = 0,
               **smtp_options: Any) -> SinkController:
    """Start a server in a background thread; `.port` is its port, `.stop()` ends it."""
    options = {"server_hostname": "mailer-sink", "ident": "mailer sink", **smtp_options}
    controller = SinkController(handler, hostname=host, port=port, **options)
    controller.start()
    return controller
