"""A throwaway PostgreSQL server for the tests: a fresh cluster in a temporary folder,
listening on 127.0.0.1 at a free port, started once per session and removed at its end.

The tests never skip for want of a server: without PostgreSQL's programs (``initdb``,
``pg_ctl``) every test that asks for one fails, saying how to install them. As root (CI),
the server runs as the ``postgres`` user (or ``nobody``), since initdb refuses root.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

# The cluster's superuser, trusted from 127.0.0.1; every other role logs in with a password.
ADMIN = "mailer"
PG_USER, PG_PASSWORD = "olive", "correct horse battery staple"

_HBA = f"""\
host all {ADMIN} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
# Durability is not under test here (the log asks for synchronous commits; the server may
# skip the fsync), nor is anything a larger server would do better.
_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
full_page_writes = off
synchronous_commit = on
max_connections = 50
"""


def binaries() -> Path:
    """The folder of the newest PostgreSQL server programs on this machine."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda path: int(path.parent.parent.name)
                   if path.parent.parent.name.isdigit() else 0)
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None or not Path(initdb).with_name("pg_ctl").exists():
        pytest.fail("the PostgreSQL tests need a PostgreSQL server's programs (initdb, pg_ctl) "
                    "and found none in /usr/lib/postgresql/*/bin or on PATH: install them "
                    "(bash .ci/postgres, or apt-get install postgresql)", pytrace=False)
    return Path(initdb).parent


def query(url: str, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Read or change the log with a connection of its own, as any other program would."""
    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(sql, parameters or None)
        return cursor.fetchall() if cursor.description else []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PgServer:
    """A running cluster: `url()` to reach one of its databases, `create_database()` for a
    new, empty one."""

    root: Path
    port: int
    bin: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres", user: str = ADMIN,
            password: str | None = None) -> str:
        secret = "" if password is None else f":{quote(password, safe='')}"
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        name = f"test_{next(self._names)}"
        with self.admin() as db:
            db.execute(f'CREATE DATABASE "{name}" OWNER {ADMIN}')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as db:
            db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def pg_ctl(self, *args: str) -> None:
        _as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args],
                        self.root)


def _as_server_user(command: list[str], cwd: Path) -> None:
    """Run a PostgreSQL program, as an unprivileged user if we are root."""
    user = None
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _exists(u)), None)
        if user is None:
            pytest.fail("running as root, the PostgreSQL tests need a 'postgres' or 'nobody' "
                        "user to run the server as", pytrace=False)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                          user=user, group=None if user is None else pwd.getpwnam(user).pw_gid,
                          extra_groups=None if user is None else [])
    if done.returncode != 0:
        log = cwd / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{tail}",
                    pytrace=False)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def start_server() -> PgServer:
    """initdb a cluster in a new temporary folder and start it (the caller stops it)."""
    bin = binaries()
    root = Path(tempfile.mkdtemp(prefix="mailer-pg-"))
    if os.geteuid() == 0:
        owner = next(u for u in ("postgres", "nobody") if _exists(u))
        shutil.chown(root, owner, pwd.getpwnam(owner).pw_gid)
    server = PgServer(root, _free_port(), bin)
    try:
        _as_server_user([str(bin / "initdb"), "-D", str(root / "data"), "-U", ADMIN,
                         "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"], root)
        with (root / "data" / "postgresql.conf").open("a") as conf:
            conf.write(_CONF.format(port=server.port, sockets=root))
        (root / "data" / "pg_hba.conf").write_text(_HBA)
        server.pg_ctl("-l", str(root / "server.log"), "-w", "-t", "60", "start")
        with server.admin() as db:
            db.execute(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'")
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: PgServer) -> None:
    if (server.root / "data" / "postmaster.pid").exists():
        server.pg_ctl("-m", "immediate", "-w", "stop")
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a new, empty database of its own, for one test (dropped after it)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)
