"""The in-flight journal: which of a run's reserved letters may have reached the server.

The send log reserves letters (they are ``sending``, on disk) a batch at a time, ahead of
sending them, so that one fsync covers many letters. Reservation alone would leave every
reserved letter ``unknown`` after a crash, sent or not. So just before each DATA the sender
appends the letter's address to this file, beside the log, through a shared memory map: no
system call, no fsync. That costs about 3 µs a letter during a send (a write() each cost
6) and survives the process being killed (the kernel's page cache has the data), but not
the machine stopping. The next run therefore trusts the journal only if the machine has not
restarted since it was written (the same Linux boot id): reserved letters it names become
``unknown``, the others keep the state they had. Without that proof every reserved letter
becomes ``unknown``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from pathlib import Path
from typing import NamedTuple

_HEADER = "mailer in-flight journal 1"
_HEADER_LINE = re.compile(rf"{_HEADER} run=(?P<run>[0-9]+) boot=(?P<boot>\S+)")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# The file grows by at least this much at a time; what is not written yet reads as NUL bytes.
_GROWTH = 1 << 16


def boot_id() -> str | None:
    """This boot of the machine (Linux), or None where the system does not say."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class Flown(NamedTuple):
    """What a run's journal says: its run, and each address it started DATA for, with when."""

    run_id: int
    started: dict[str, float]


class Journal:
    """The journal a running send appends to; `started` before every DATA."""

    def __init__(self, path: Path, run_id: int) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _allocate(self._fd, 0, _GROWTH)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, _GROWTH)
        except OSError:
            os.close(self._fd)
            raise
        header = f"{_HEADER} run={run_id} boot={boot_id() or '-'}\n".encode()
        self._map[:len(header)] = header
        self._end = len(header)
        self._run_id = run_id

    def started(self, key: str, when: float) -> None:
        """Record that the letter to `key` (its casefolded address) goes to DATA at `when`
        (Unix time; raises OSError if it cannot)."""
        assert self._map is not None, "closed"
        # Addresses are validated ASCII without spaces or line breaks: one record per line.
        record = f"{key} {when:.3f}".encode("ascii")
        end = self._end + len(record)
        if end >= len(self._map):
            size = max(2 * len(self._map), end + _GROWTH)
            _allocate(self._fd, len(self._map), size)
            self._map.resize(size)
        self._map[self._end:end] = record
        # Its line break only once the record is whole: a process killed while copying it
        # leaves a record without one, which the reader ignores (the letter had not gone).
        self._map[end] = 0x0A
        self._end = end + 1

    def flown(self) -> Flown:
        """What this journal has recorded so far (read back from memory: no disk, no trust
        to check)."""
        assert self._map is not None, "closed"
        lines = self._map[:self._end].decode("ascii").split("\n")[1:-1]
        return Flown(self._run_id, _records(lines))

    def close(self) -> None:
        """Unmap the file (it stays on disk until the log settles the run)."""
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)


def _allocate(fd: int, start: int, end: int) -> None:
    """Extend the file to `end` bytes with NULs written, not a hole: a store through the
    map into a hole the disk has no room for would kill the process (SIGBUS), where this
    raises OSError."""
    os.pwrite(fd, bytes(end - start), start)


def discard_journal(path: Path) -> None:
    """Remove a journal once its run is settled (one left behind is harmless: it names no
    letter still `sending`)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def read_journal(path: Path) -> Flown | None:
    """The journal at `path` if it can be trusted (written since this machine booted);
    None if there is none, or it may have lost records."""
    try:
        # Up to the last line break: after it come unwritten NUL bytes and perhaps a record
        # its process was killed copying.
        written = path.read_bytes().rpartition(b"\n")[0]
        lines = written.decode("ascii").split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    header = _HEADER_LINE.fullmatch(lines[0]) if lines else None
    if header is None or header["boot"] != boot_id():
        return None
    # A record is whole once its line break is there, so a malformed line (a NUL byte, say)
    # means something else touched the file: trust none of it.
    try:
        return Flown(int(header["run"]), _records(lines[1:]))
    except ValueError:
        return None


def _records(lines: list[str]) -> dict[str, float]:
    """Each address with when it went to DATA (its last time); ValueError if a line is not
    a record."""
    return {email: float(when) for email, when in (line.split(" ") for line in lines)}
