"""The dry-run outbox: each letter as an `.eml` file a person can open and read."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ConfigError
from .message import Letter

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


def letter_filename(index: int, letter: Letter) -> str:
    """`00007-angela.merkel@example.org.eml`: list order first, then who it is for."""
    return f"{index:05d}-{_UNSAFE.sub('_', letter.email)[:100]}.eml"


def write_outbox(letters: Iterable[Letter], folder: Path) -> Iterator[tuple[Path, Letter]]:
    """Write each letter into `folder` (emptied of earlier `.eml` files first); yield each."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.eml"):
            old.unlink()
    except OSError as error:
        raise ConfigError(f"outbox {folder}: {error.strerror}; choose another with --outbox")\
            from None
    for index, letter in enumerate(letters, start=1):
        path = folder / letter_filename(index, letter)
        try:
            path.write_bytes(letter.data)
        except OSError as error:
            path.unlink(missing_ok=True)  # not half a letter to read
            raise ConfigError(f"outbox {folder}: cannot write {path.name}: "
                              f"{error.strerror or error}; free some space or choose another "
                              "folder with --outbox (nothing was sent)") from None
        yield path, letter
