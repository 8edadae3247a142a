"""Logging in to the sender's own mailbox: a password (from the settings, or printed by a
command, run once a run) or an OAuth2 access token (printed by a command at each login,
since tokens expire within the hour on a campaign that runs for days). No secret is ever
shown, logged or stored, and a command that fails is a clear error before anything is sent.
"""

from __future__ import annotations

import subprocess

from pydantic import SecretStr

from .errors import ConfigError
from .settings import ENV_KEYS, Settings, is_loopback


class Login:
    """Who logs in and how; `secret()` gives the password or a fresh token."""

    def __init__(self, settings: Settings) -> None:
        self.username = settings.smtp_username or ""
        self.mechanism = settings.smtp_auth
        self._token_command = settings.smtp_oauth2_token_command
        self._password: SecretStr | None = None
        if self.mechanism == "password":
            self._password = settings.smtp_password or (
                SecretStr(run_secret_command("smtp_password_command",
                                             settings.smtp_password_command))
                if settings.smtp_password_command else None)

    def __repr__(self) -> str:
        return f"Login({self.username!r}, {self.mechanism})"

    def secret(self) -> str:
        """The password, or a token the command prints now."""
        if self._password is not None:
            return self._password.get_secret_value()
        assert self._token_command is not None
        return run_secret_command("smtp_oauth2_token_command", self._token_command)


def login(settings: Settings) -> Login | None:
    """The login the settings describe (None: the server takes mail without one), after
    refusing what would be unsafe or cannot work; runs a password command."""
    if (settings.smtp_username and settings.security == "none"
            and not is_loopback(settings.smtp_host) and not settings.allow_insecure_auth):
        raise ConfigError(
            f"refusing to send the password for {settings.smtp_username} to "
            f"{settings.smtp_host} without TLS; set MAILER_SMTP_SECURITY=starttls or tls "
            "(or MAILER_ALLOW_INSECURE_AUTH=true if you really mean it)")
    secrets = (settings.smtp_oauth2_token_command,) if settings.smtp_auth == "xoauth2" \
        else (settings.smtp_password, settings.smtp_password_command)
    needed = ("MAILER_SMTP_OAUTH2_TOKEN_COMMAND" if settings.smtp_auth == "xoauth2"
              else "MAILER_SMTP_PASSWORD (or MAILER_SMTP_PASSWORD_COMMAND)")
    if bool(settings.smtp_username) != any(secrets):
        raise ConfigError(f"set both MAILER_SMTP_USERNAME and {needed}, or neither")
    return Login(settings) if settings.smtp_username else None


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
