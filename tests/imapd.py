"""A real IMAP server for the tests: pymap's in-memory backend, in-process, on 127.0.0.1.

`IMAPServer` speaks IMAP4rev1 over implicit TLS (IMAPS) or STARTTLS with a certificate from a
trustme CA, takes one login, and holds folders of messages that a test fills directly (with
their dates and flags) and reads back directly (to check that a client changed nothing). It
is pymap's own protocol code end to end: a client talks to it as to any server.

What pymap lacks, added here through its extension points, with no change to pymap:

- implicit TLS (pymap only offers STARTTLS): the listening socket is TLS;
- LOGINDISABLED until STARTTLS (pymap lets any connection from localhost log in in clear);
- special-use mailboxes (RFC 6154): `\\Sent`, `\\Drafts`, `\\Trash`, `\\Junk`, `\\Archive` in
  every LIST response, the `SPECIAL-USE` capability, and LIST-EXTENDED's `RETURN
  (SPECIAL-USE)` and `(SPECIAL-USE)` selection (RFC 5258), the only LIST options parsed;
- and, for speed, each message is its own thread (THREADID), see `_OwnThreads`.

The server runs its own event loop in a thread, as aiosmtpd's Controller does, so it serves
synchronous clients (imaplib) and asyncio clients in the test's own loop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import ssl
import threading
from argparse import Namespace
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar

import trustme
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Subsystem
from pymap.config import BackendCapability
from pymap.context import connection_exit, current_command
from pymap.imap import IMAPConnection
from pymap.imap.state import ConnectionState
from pymap.interfaces.login import LoginInterface
from pymap.listtree import ListEntry, ListTree
from pymap.mime import MessageContent
from pymap.parsing import EndLine, Params, Space
from pymap.parsing.command.auth import ListCommand
from pymap.parsing.commands import Commands
from pymap.parsing.exceptions import NotParseable
from pymap.parsing.message import AppendMessage
from pymap.parsing.modutf7 import modutf7_decode
from pymap.parsing.primitives import String
from pymap.parsing.response import CommandResponse, ResponseOk
from pymap.parsing.specials import FetchRequirement, Flag, ObjectId
from pymap.parsing.specials.flag import Recent
from pymap.parsing.specials.mailbox import Mailbox
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

T = TypeVar("T")

# The folders a provider's mailbox has (Dovecot's, Gmail's and Microsoft's defaults, under
# Dovecot's names), with their RFC 6154 attribute; INBOX is always there.
DEFAULT_FOLDERS: Mapping[str, str | None] = {
    "INBOX": None,
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

# Seconds to wait for the server's thread: starting, adding thousands of messages, stopping.
TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Stored:
    """One message as the server holds it."""

    uid: int
    flags: frozenset[str]  # permanent flags, e.g. {"\\Seen"}; \Recent is not one
    data: bytes
    date: datetime  # the internal date (SEARCH SINCE, INTERNALDATE)


class IMAPServer:
    """A real IMAP server on 127.0.0.1, a free port, with one account and `folders`.

    Guarantees: every folder exists from the start with a UIDVALIDITY that stays the same for
    the server's life; UIDs rise from 101 in the order messages are added or appended;
    `messages` shows exactly what a client left (flags, expunges, appends), so a test can
    prove a client read-only. Use it as a context manager, or `start()` and `stop()`.
    """

    host = "127.0.0.1"

    def __init__(self, ca: trustme.CA | None = None, *, user: str = "campaign@example.org",
                 password: str | None = None,
                 security: Literal["tls", "starttls"] = "tls",
                 folders: Mapping[str, str | None] = DEFAULT_FOLDERS) -> None:
        self.ca = ca or trustme.CA()
        self.user = user
        self.password = password or secrets.token_urlsafe(16)  # a new one for each server
        self.security = security
        self.port = 0
        self._folders = {"INBOX": None, **folders}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._mailboxes: _SpecialUseMailboxSet | None = None
        self._connections: _Connections | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> IMAPServer:
        """Listen (returns once a client can connect); idempotent until `stop`."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="imapd", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()
        self._loop = self._thread = self._server = self._mailboxes = self._connections = None

    def __enter__(self) -> IMAPServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- what a test does --------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """A TLS context that trusts this server's certificate (for IMAP4_SSL and STARTTLS)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def add(self, folder: str, data: bytes, *, date: datetime | None = None,
            flags: Sequence[str] = ()) -> int:
        """Put a message into `folder` as delivery would; its UID. `date` is the internal
        date (default now; a naive one is UTC); `\\Recent` in `flags` makes it recent. A
        folder the server was not started with is a KeyError."""
        return self.add_many(folder, [(data, date, flags)])[0]

    def add_many(self, folder: str,
                 messages: Iterable[tuple[bytes, datetime | None, Sequence[str]]]) -> list[int]:
        """`add` for many messages at once (one trip to the server's thread): their UIDs."""
        items = [(data, _aware(date), tuple(flags)) for data, date, flags in messages]
        return self._call(self._append(folder, items))

    def messages(self, folder: str) -> list[tuple[int, set[str], bytes]]:
        """(UID, flags, bytes) of each message in `folder`, by UID."""
        return [(m.uid, set(m.flags), m.data) for m in self.stored(folder)]

    def stored(self, folder: str) -> list[Stored]:
        """Each message in `folder` as the server holds it, with its internal date, by UID."""
        return self._call(self._stored(folder))

    def uidvalidity(self, folder: str) -> int:
        return self._call(self._uidvalidity(folder))

    def cut_connections(self) -> None:
        """Cut every open connection, as a server restarting does; it goes on listening."""
        if self._connections is not None:
            self._call(self._connections.close())

    def folders(self) -> dict[str, str | None]:
        """Each folder and its special use (`\\Sent`...), or None."""
        return dict(self._folders)

    # -- inside the server's thread ----------------------------------------------------

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise RuntimeError("the IMAP server is not running")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(TIMEOUT)

    async def _start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(self.host, "localhost").configure_cert(context)
        # Only what pymap reads from its command line; no PROXY protocol, no passlib file.
        args = Namespace(debug=False, passlib_cfg=None, proxy_protocol=None,
                         inherited_sockets=None)
        config = _Config(args, host=self.host, port=0, demo_data=False, demo_user=self.user,
                         demo_password=self.password, ssl_context=context,
                         tls_enabled=self.security == "starttls", reject_dnsbl=False,
                         invalid_user_sleep=0.0, cpu_subsystem=Subsystem.for_asyncio(),
                         # A test login need not cost pbkdf2's 500,000 rounds.
                         hash_context=BuiltinHash(rounds=1000))
        login = Login(config)
        hashed = await Passwords(config).hash_password(self.password)
        await login.demo_user_identity.set(UserMetadata(config, self.user, password=hashed))
        mailboxes = _SpecialUseMailboxSet(
            {name: use[1:].encode() for name, use in self._folders.items() if use})
        for name in self._folders:
            if name.upper() != "INBOX":
                await mailboxes.add_mailbox(name)
        # The account's session uses these folders (pymap makes empty ones otherwise).
        config.set_cache[self.user] = (mailboxes, FilterSet())
        self._connections = _Connections(login, config)
        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(self._connections)
        self._server = await asyncio.start_server(
            callback, self.host, 0, ssl=context if self.security == "tls" else None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._mailboxes = mailboxes

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._connections is not None:
            await self._connections.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()  # what the closed connections left running
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _append(self, folder: str,
                      items: list[tuple[bytes, datetime, tuple[str, ...]]]) -> list[int]:
        mailbox = await self._set().get_mailbox(folder)
        uids = []
        for data, date, names in items:
            flags = frozenset(Flag(name) for name in names)
            message = await mailbox.append(AppendMessage(data, date, flags - {Recent}),
                                           recent=Recent in flags)
            uids.append(message.uid)
        return uids

    async def _stored(self, folder: str) -> list[Stored]:
        mailbox = await self._set().get_mailbox(folder)
        found = []
        async for message in mailbox.messages():
            content = await message.load_content(FetchRequirement.CONTENT)
            found.append(Stored(message.uid, frozenset(str(f) for f in message.permanent_flags),
                                bytes(content), message.internal_date))
        return sorted(found, key=lambda m: m.uid)

    async def _uidvalidity(self, folder: str) -> int:
        return (await self._set().get_mailbox(folder)).uid_validity

    def _set(self) -> _SpecialUseMailboxSet:
        if self._mailboxes is None:
            raise RuntimeError("the IMAP server is not running")
        return self._mailboxes


def _aware(date: datetime | None) -> datetime:
    if date is None:
        return datetime.now(UTC)
    return date if date.tzinfo is not None else date.replace(tzinfo=UTC)


# -- what pymap is given ------------------------------------------------------------------


class _Config(Config):
    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=True, object_id=True, multi_append=True,
                                 custom=[b"SPECIAL-USE"])

    @property
    def commands(self) -> Commands:
        commands = Commands()
        commands.register(_ListCommand)
        return commands

    @property
    def greeting(self) -> bytes:
        # pymap's default asks socket.getfqdn(), a DNS query at every connection.
        return b"Server ready imap.test"


class _Connections:
    """pymap's `IMAPServer` callback, with `_ConnectionState` for each connection, and a
    record of the open ones for `stop`."""

    def __init__(self, login: LoginInterface, config: _Config) -> None:
        self.commands = config.commands
        self.login = login
        self.config = config
        self.open: set[asyncio.StreamWriter] = set()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       sock_info: SocketInfo) -> None:
        connection = IMAPConnection(self.commands, self.config, reader, writer, sock_info)
        self.open.add(writer)
        try:
            async with contextlib.AsyncExitStack() as stack:
                connection_exit.set(stack)
                stack.enter_context(contextlib.closing(connection))
                await connection.run(_ConnectionState(self.login, self.config))
        finally:
            self.open.discard(writer)

    async def close(self) -> None:
        """Cut every open connection, as a server that goes away does (no TLS close_notify:
        a client left idle would never answer it), and wait until their sockets are closed."""
        for writer in list(self.open):
            writer.transport.abort()
        await asyncio.sleep(0)  # the transports close their sockets on the loop's next turn


class _ConnectionState(ConnectionState):
    async def do_greeting(self) -> CommandResponse:
        # pymap lets a connection from localhost log in before STARTTLS; no provider does, and
        # a client's test must see LOGINDISABLED until it has started TLS.
        return ResponseOk(b"*", self.config.greeting, self.capability)


class _ListCommand(ListCommand):
    """LIST, with RFC 5258's options as far as RFC 6154 needs them: `LIST (SPECIAL-USE) ""
    "*"` lists only special-use folders, `RETURN (SPECIAL-USE)` is accepted (the attributes
    are always returned, as Dovecot does)."""

    _selection: ClassVar[re.Pattern[bytes]] = re.compile(rb"\(([^()]*)\) ")
    _returning: ClassVar[re.Pattern[bytes]] = re.compile(rb" RETURN \(([^()]*)\)", re.I)

    def __init__(self, tag: bytes, ref_name: str, filter_: str,
                 special_only: bool = False) -> None:
        super().__init__(tag, ref_name, filter_)
        self.special_only = special_only

    @classmethod
    def parse(cls, buf: memoryview, params: Params) -> tuple[_ListCommand, memoryview]:
        _, buf = Space.parse(buf, params)
        special_only = False
        if selected := cls._selection.match(buf):
            options = {o.upper() for o in selected.group(1).split()}
            if not options <= {b"SPECIAL-USE"}:
                raise NotParseable(buf)
            special_only, buf = bool(options), buf[selected.end():]
        ref_name, buf = Mailbox.parse(buf, params)
        _, buf = Space.parse(buf, params)
        if named := cls._list_mailbox_pattern.match(buf):
            pattern, buf = bytes(named.group(0)), buf[named.end():]
        else:
            string, buf = String.parse(buf, params)
            pattern = string.value
        if returned := cls._returning.match(buf):
            if not {o.upper() for o in returned.group(1).split()} <= {b"SPECIAL-USE"}:
                raise NotParseable(buf)
            buf = buf[returned.end():]
        _, buf = EndLine.parse(buf, params)
        return cls(params.tag, ref_name.value, modutf7_decode(pattern), special_only), buf


@dataclass(frozen=True)
class _SpecialUseEntry(ListEntry):
    special: bytes | None = None

    @property
    def attributes(self) -> Sequence[bytes]:
        found = list(super().attributes)
        return [*found, self.special] if self.special else found


class _SpecialUseTree(ListTree):
    def __init__(self, delimiter: str, special: Mapping[str, bytes]) -> None:
        super().__init__(delimiter)
        self.special = special

    def list(self) -> Iterable[ListEntry]:
        command = current_command.get(None)
        only = isinstance(command, _ListCommand) and command.special_only
        for entry in super().list():
            use = self.special.get(entry.name)
            if use or not only:
                yield _SpecialUseEntry(entry.name, entry.exists, entry.marked,
                                       entry.has_children, use)


class _OwnThreads:
    """Each message its own thread (THREADID). pymap's own thread cache parses Subject,
    Message-ID, In-Reply-To and References of every message added, more than half the cost
    of adding one; the tests never ask for THREADID, and pymap offers no THREAD command."""

    def add(self, content: MessageContent) -> ObjectId:
        return ObjectId.random_thread_id()


class _SpecialUseMailboxSet(MailboxSet):
    """pymap's in-memory folders, listed with their special-use attributes."""

    def __init__(self, special: Mapping[str, bytes]) -> None:
        super().__init__()
        self.special = dict(special)
        # pymap has no option for this: its mailbox set's private caches are replaced before
        # any folder but INBOX exists, and INBOX made again with them.
        self._thread_cache = _OwnThreads()  # type: ignore[assignment]
        self._inbox = MailboxData(self._content_cache, self._thread_cache)

    async def list_mailboxes(self) -> ListTree:
        return self._special_use(await super().list_mailboxes())

    async def list_subscribed(self) -> ListTree:
        return self._special_use(await super().list_subscribed())

    def _special_use(self, tree: ListTree) -> ListTree:
        names = [entry.name for entry in tree.list() if entry.exists]
        return _SpecialUseTree(self.delimiter, self.special).update(*names)
