"""The in-flight journal: which of a run's reserved letters may have reached the server.

The send log reserves letters (they are ``sending``, on disk) a batch at a time, ahead of
sending them, so that one fsync covers many letters. Reservation alone would leave every
reserved letter ``unknown`` after a crash, sent or not. So just before each DATA the sender
appends the letter's address to this file, beside the log: one plain write(), no fsync. That
costs microseconds and survives the process being killed (the kernel has the data), but not
the machine stopping. The next run therefore trusts the journal only if the machine has not
restarted since it was written (the same Linux boot id): reserved letters it names become
``unknown``, the others keep the state they had. Without that proof every reserved letter
becomes ``unknown``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import NamedTuple

_HEADER = "mailer in-flight journal 1"
_HEADER_LINE = re.compile(rf"{_HEADER} run=(?P<run>[0-9]+) boot=(?P<boot>\S+)")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            os.write(self._fd, f"{_HEADER} run={run_id} boot={boot_id() or '-'}\n".encode())
        except OSError:
            os.close(self._fd)
            raise

    def started(self, key: str, when: float) -> None:
        """Record that the letter to `key` (its casefolded address) goes to DATA at `when`
        (Unix time; raises OSError if it cannot)."""
        # Addresses are validated ASCII without spaces or line breaks: one record per line.
        os.write(self._fd, f"{key} {when:.3f}\n".encode("ascii"))

    def close(self) -> None:
        """Close the file (it stays on disk until the log settles the run)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def discard_journal(path: Path) -> None:
    """Remove a journal once its run is settled (one left behind is harmless: it names no
    letter still `sending`)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def read_journal(path: Path) -> Flown | None:
    """The journal at `path` if it can be trusted (written since this machine booted);
    None if there is none, or it may have lost records."""
    try:
        lines = path.read_bytes().decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    header = _HEADER_LINE.fullmatch(lines[0]) if lines else None
    if header is None or header["boot"] != boot_id():
        return None
    # write() of one short record is all or nothing when a process dies, so a malformed
    # line means something else touched the file: trust none of it.
    try:
        started = {email: float(when) for email, when in
                   (line.split(" ") for line in lines[1:])}
    except ValueError:
        return None
    return Flown(int(header["run"]), started)
