"""Logging in to the sender's own mailbox: a password (from the settings, or printed by a
command, run once a process: a run of the CLI) or an OAuth2 access token (printed by a
command at each login, since tokens expire within the hour on a campaign that runs for
days). No secret is ever shown, logged or stored, and a command that fails is a clear error
before anything is sent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from pydantic import SecretStr

from .errors import ConfigError
from .settings import ENV_KEYS, Settings, is_loopback


class Login:
    """Who logs in and how; `secret()` gives the password or a fresh token. `field(name)`
    names the setting each part comes from (`smtp_username`, or IMAP's own or its twin)."""

    def __init__(self, settings: Settings, field: Callable[[str], str]) -> None:
        self.username: str = getattr(settings, field("username")) or ""
        self.mechanism: str = getattr(settings, field("auth"))
        self._token_field = field("oauth2_token_command")
        self._token_command: SecretStr | None = getattr(settings, self._token_field)
        self._password: SecretStr | None = None
        if self.mechanism == "password":
            command = field("password_command")
            self._password = getattr(settings, field("password")) or (
                SecretStr(_password_from(command, getattr(settings, command)))
                if getattr(settings, command) else None)

    def __repr__(self) -> str:
        return f"Login({self.username!r}, {self.mechanism})"

    def secret(self) -> str:
        """The password, or a token the command prints now."""
        if self._password is not None:
            return self._password.get_secret_value()
        assert self._token_command is not None
        return run_secret_command(self._token_field, self._token_command)


def login(settings: Settings) -> Login | None:
    """The SMTP login the settings describe (None: the server takes mail without one),
    after refusing what would be unsafe or cannot work; runs a password command."""
    if (settings.smtp_username and settings.security == "none"
            and not is_loopback(settings.smtp_host) and not settings.allow_insecure_auth):
        raise ConfigError(
            f"refusing to send the password for {settings.smtp_username} to "
            f"{settings.smtp_host} without TLS; set MAILER_SMTP_SECURITY=starttls or tls "
            "(or MAILER_ALLOW_INSECURE_AUTH=true if you really mean it)")
    return _checked(settings, lambda name: f"smtp_{name}", "smtp")


def mailbox_login(settings: Settings) -> Login:
    """The IMAP login: IMAP's own settings, each missing one its SMTP twin's. A mailbox
    is always read with a login (over TLS: IMAP security has no `none`)."""
    found = _checked(settings, settings.imap_field, "imap")
    if found is None:
        raise ConfigError("reading the mailbox needs a login: set MAILER_IMAP_USERNAME and "
                          "MAILER_IMAP_PASSWORD (or the SMTP ones, if they are the same)")
    return found


def _checked(settings: Settings, field: Callable[[str], str], service: str) -> Login | None:
    xoauth2 = getattr(settings, field("auth")) == "xoauth2"
    names = (("oauth2_token_command",) if xoauth2 else ("password", "password_command"))
    given = any(getattr(settings, field(name)) for name in names)
    if bool(getattr(settings, field("username"))) != given:
        keys = [ENV_KEYS[f"{service}_{name}"] for name in ("username", *names)]
        needed = " (or ".join(keys[1:]) + ")" * (len(keys) - 2)
        raise ConfigError(f"set both {keys[0]} and {needed}, or neither")
    return Login(settings, field) if given else None


# What each password command printed, by its text: checking the settings before the question,
# sending and saving Sent copies all log in, and each run of the command may prompt the user
# (pinentry, a fingerprint). Tokens are not kept: they expire.
_PASSWORDS: dict[str, str] = {}


def _password_from(field: str, command: SecretStr) -> str:
    text = command.get_secret_value()
    if text not in _PASSWORDS:
        _PASSWORDS[text] = run_secret_command(field, command)
    return _PASSWORDS[text]


def run_secret_command(field: str, command: SecretStr | None) -> str:
    """The first line a secret-printing command writes; never shown."""
    key = ENV_KEYS[field]
    assert command is not None
    try:
        done = subprocess.run(["/bin/sh", "-c", command.get_secret_value()],
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"{key} could not be run: {error}") from None
    why = done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else ""
    if done.returncode != 0:
        raise ConfigError(f"{key} failed (exit status {done.returncode})"
                          + (f": {why}" if why else "") + "; run it yourself to see why")
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{key} printed nothing; it must print the secret on its first line")
    return lines[0].strip()
