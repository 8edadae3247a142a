"""Test doubles: an aiosmtpd server that records what it gets and misbehaves on demand.

`RecordingHandler` keeps every message it accepts and can be told (`Faults`) to refuse, slow
down or drop. Its hooks (`on_mail`, `on_rcpt`, `on_data_command`, `on_message`) run at the
points of a letter's SMTP life where the crash tests kill the sender.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, Session

from mailer.sink import Received, SinkController, received


@dataclass(slots=True)
class Faults:
    """Misbehaviour to inject. Counts say how many times a fault fires before it stops.

    - `rcpt`: address -> reply (e.g. "451 4.3.0 busy" or "550 5.1.1 no such user") for its
      next `rcpt_times[address]` RCPTs (default: always).
    - `drop_at_mail`: drop the connection at the next N MAIL commands (before DATA).
    - `slow_mail`: seconds to wait before answering the next `slow_mail_times` MAIL commands.
    - `slow_data`: seconds to wait before answering the next `slow_data_times` messages;
      the message *is* kept, as a real server would (so the client cannot know).
    - `drop_after_data`: for the next N messages, keep the message but drop the connection
      instead of replying.
    """

    rcpt: dict[str, str] = field(default_factory=dict)
    rcpt_times: dict[str, int] = field(default_factory=dict)
    drop_at_mail: int = 0
    slow_mail: float = 0.0
    slow_mail_times: int = 0
    slow_data: float = 0.0
    slow_data_times: int = 0
    drop_after_data: int = 0


Hook = Callable[[str], None]  # given the transaction's first recipient


class RecordingHandler:
    """aiosmtpd handler that records what it receives, with `faults` and hooks."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.messages: list[Received] = []
        self.commands: Counter[str] = Counter()
        self.on_mail: Callable[[str], None] | None = None
        self.on_rcpt: Callable[[str], None] | None = None
        self.on_data_command: Hook | None = None
        self.on_message: Callable[[Received], None] | None = None
        self._lock = threading.Lock()

    def by_recipient(self) -> Counter[str]:
        """How many messages each envelope recipient received."""
        with self._lock:
            return Counter(rcpt.lower() for m in self.messages for rcpt in m.rcpt_tos)

    async def handle_EHLO(self, server: SMTPServer, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.commands["EHLO"] += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.commands["MAIL"] += 1
        if self.on_mail is not None:
            self.on_mail(address)
        if self._fire("drop_at_mail"):
            return _drop(server)
        if self._fire("slow_mail_times"):
            await asyncio.sleep(self.faults.slow_mail)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.commands["RCPT"] += 1
        if self.on_rcpt is not None:
            self.on_rcpt(address)
        reply = self.faults.rcpt.get(address.lower())
        if reply is not None:
            left = self.faults.rcpt_times.get(address.lower())
            if left is None or left > 0:
                if left is not None:
                    self.faults.rcpt_times[address.lower()] = left - 1
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        self.commands["DATA"] += 1
        message = received(envelope)
        with self._lock:
            self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)
        if self._fire("drop_after_data"):
            return _drop(server)
        if self._fire("slow_data_times"):
            await asyncio.sleep(self.faults.slow_data)
        return "250 2.0.0 OK: queued"

    def _fire(self, counter: str) -> bool:
        """Use up one firing of a counted fault; False once it has none left."""
        left: int = getattr(self.faults, counter)
        if left > 0:
            setattr(self.faults, counter, left - 1)
        return left > 0


def _drop(server: SMTPServer) -> str:
    """Cut the connection without a reply (the returned one never reaches the client)."""
    if isinstance(server.transport, asyncio.Transport):
        server.transport.abort()
    return "421 4.4.2 connection dropped by fault injection"


class _HookedServer(SMTPServer):
    """aiosmtpd's server, calling the handler's `on_data_command` when DATA arrives (before
    its 354: the client has sent its letter's mark to the log, and not yet the letter)."""

    async def smtp_DATA(self, arg: str) -> None:
        hook = getattr(self.event_handler, "on_data_command", None)
        if hook is not None:
            rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
            hook(rcpts[0] if rcpts else "")
        await super().smtp_DATA(arg)


class HookedController(SinkController):
    def factory(self) -> SMTPServer:
        return _HookedServer(self.handler, **self.SMTP_kwargs)


def start_server(handler: RecordingHandler, **smtp_options: Any) -> HookedController:
    """Start a server for `handler` on 127.0.0.1, a random port (`.port`); `.stop()` it."""
    options = {"server_hostname": "mailer-test", "ident": "mailer test", **smtp_options}
    controller = HookedController(handler, hostname="127.0.0.1", port=0, **options)
    controller.start()
    return controller


class ScriptedServer:
    """A small raw SMTP server (asyncio, in a thread of its own) for what aiosmtpd cannot
    do: a scripted reply to a given command, malformed or not UTF-8; Postfix's way of
    keeping a transaction open after a refused DATA or end of data (a MAIL before RSET gets
    `503 5.5.1 Error: nested MAIL command`); and a 421 greeting past `max_connections`.

    `script[COMMAND]` (MAIL, RCPT, DATA, or DOT for the end of data) holds raw replies given
    instead of the usual one, in turn (b"" for the usual one). A letter whose end-of-data
    reply is scripted counts as received unless that reply is a 4xx or 5xx.
    """

    def __init__(self, max_connections: int = 100) -> None:
        self.script: dict[str, list[bytes]] = {}
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.max_connections = max_connections
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> ScriptedServer:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self._loop).result(10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def by_recipient(self) -> Counter[str]:
        return Counter(rcpt.lower() for m in self.messages for rcpt in m.rcpt_tos)

    def _scripted(self, command: str) -> bytes | None:
        replies = self.script.get(command)
        return (replies.pop(0) or None) if replies else None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > self.max_connections:
                writer.write(b"421 4.7.0 scripted: too many connections from 127.0.0.1\r\n")
                return
            writer.write(b"220 scripted ESMTP\r\n")
            await self._commands(reader, writer)
        finally:
            self._open -= 1
            writer.close()

    async def _commands(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender: str | None = None
        recipients: list[str] = []
        while line := await reader.readline():
            verb, _, argument = line.decode("ascii", "replace").strip().partition(" ")
            verb = verb.upper()
            self.commands.append(verb)
            scripted = self._scripted(verb)
            if scripted is not None:
                writer.write(scripted)
            elif verb in ("EHLO", "HELO"):
                writer.write(b"250-scripted\r\n250 8BITMIME\r\n")
            elif verb == "MAIL":
                if sender is not None:
                    writer.write(b"503 5.5.1 Error: nested MAIL command\r\n")
                else:
                    sender = argument.partition(":")[2].strip("<>")
                    writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                recipients.append(argument.partition(":")[2].strip("<>"))
                writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == "DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                data = b""
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data += chunk
                reply = self._scripted("DOT") or b"250 2.0.0 Ok: queued as SCRIPTED\r\n"
                if reply[:1] not in (b"4", b"5"):  # kept; a refusal leaves it open
                    self.messages.append(Received(sender or "", tuple(recipients), data))
                    sender, recipients = None, []
                writer.write(reply)
            elif verb == "RSET":
                sender, recipients = None, []
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()


class OAuthHandler(RecordingHandler):
    """A recording handler that logs in by XOAUTH2 (`user=...^Aauth=Bearer TOKEN^A^A`): each
    token in `tokens` is good for one login (then it has expired); a bad one gets the error
    challenge (334 and a base64 JSON status), then `535 5.7.8` once the client answers."""

    def __init__(self, user: str, tokens: set[str]) -> None:
        super().__init__()
        self.user = user
        self.tokens = tokens
        self.logins: list[str] = []

    async def auth_XOAUTH2(self, server: SMTPServer, args: list[str]) -> AuthResult:
        fields = dict(part.split("=", 1) for part in
                      base64.b64decode(args[1]).decode().split("\x01") if part)
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.logins.append(token)
        if fields.get("user") == self.user and token in self.tokens:
            self.tokens.discard(token)
            return AuthResult(success=True, handled=False)
        status = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})
        await server.challenge_auth(status)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")
