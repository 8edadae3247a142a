"""Settings from `.env`, the environment and flags: values as written, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result

from mailer.errors import ConfigError
from mailer.settings import load_settings

Run = Callable[..., Result]


def test_a_value_in_single_quotes_is_taken_as_written(files: CampaignFiles) -> None:
    Path(".env").write_text("MAILER_SMTP_USERNAME=me\n"
                            "MAILER_SMTP_PASSWORD='se${HOME}cret #1'\n"
                            'MAILER_SENDER_NAME="Olive ${USER} Organiser"\n', encoding="utf-8")
    settings = load_settings()
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "se${HOME}cret #1"
    assert settings.sender_name == "Olive ${USER} Organiser"


def test_a_settings_file_that_is_not_utf8_names_its_line(files: CampaignFiles) -> None:
    Path(".env").write_bytes(b"MAILER_FROM=me@example.org\nMAILER_SENDER_NAME=J\xfcrgen\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == ("settings file .env:2: is not UTF-8 (byte 0xfc); save it as "
                                 "UTF-8")


@pytest.mark.parametrize(("text", "line"), [
    ("MAILER_FROM=me@example.org\nMAILER_SMTP_PORT 587\n", 2),  # no =
    ('MAILER_SMTP_USERNAME=me\nMAILER_SMTP_PASSWORD="s3cret\n', 2),  # the quote not closed
])
def test_a_settings_line_that_cannot_be_read_is_named_and_not_shown(
        files: CampaignFiles, run: Run, text: str, line: int) -> None:
    Path(".env").write_text(text, encoding="utf-8")
    result = run("check")
    assert (result.code, result.err) == (2, (
        f"error: settings file .env:{line}: cannot read this line; write it as NAME=value, "
        'and quote a value with spaces or # in it (NAME="a value"), closing the quotes\n'))


def test_an_env_file_that_is_a_folder_or_missing_is_an_error(files: CampaignFiles,
                                                             run: Run) -> None:
    result = run("check", "--env-file", "templates")
    assert (result.code, result.err) == (2, "error: settings file templates is a folder; "
                                            "give the path of a .env file\n")
    result = run("check", "--env-file", "nope.env")
    assert (result.code, result.err) == (2, "error: settings file nope.env does not exist; "
                                            "check --env-file\n")


def _mailer(files: CampaignFiles, *args: bytes | str,
            env: dict[str, str | bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = os.environb.copy()
    for key, value in (env or {}).items():
        environ[key.encode()] = value if isinstance(value, bytes) else value.encode()
    return subprocess.run([sys.executable.encode(), b"-m", b"mailer",
                           *(a if isinstance(a, bytes) else a.encode() for a in args)],
                          cwd=files.root, env=environ, capture_output=True, timeout=60,
                          check=False)


def test_a_setting_or_flag_that_is_not_utf8_is_an_error_not_a_traceback(
        files: CampaignFiles) -> None:
    result = _mailer(files, "send", "--dry-run", env={"MAILER_SENDER_NAME": b"J\xfcrgen"})
    assert (result.returncode, result.stderr) == (
        2, b"error: setting MAILER_SENDER_NAME: its value is not UTF-8 text; set it again in "
           b"a UTF-8 terminal or file\n")
    result = _mailer(files, "send", "--dry-run", "--campaign", b"Gr\xfc\xdfe")
    assert result.returncode == 2
    assert b"Invalid value for '--campaign': is not UTF-8 text" in result.stderr
    assert b"Traceback" not in result.stderr
