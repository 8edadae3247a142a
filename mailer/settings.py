"""Settings: one pydantic model filled from `.env`, the environment and command-line flags.

Precedence, lowest first: defaults, `.env` in the working directory, the process environment,
explicit overrides (the CLI's flags). A bad value is a `ConfigError` naming the key to fix.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .addresses import InvalidAddress, normalize_address, parse_address_list
from .errors import ConfigError
from .schedule import Window, local_zone, zone
from .template import CONTROL, LINE_BREAK

PLACEHOLDER_FROM = "organiser@campaign.example"
PLACEHOLDER_NAME = "Campaign Organiser (placeholder)"

# What a URL's query may hold that no message may show.
_URL_SECRETS = ("password", "sslpassword")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+?)s?)?\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """A number of letters per period; ``count == 0`` means no limit."""

    count: float
    per_seconds: float = 1.0

    @property
    def unlimited(self) -> bool:
        return self.count == 0

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``30/min``, ``2/s``, ``1000/h`` or ``0`` (no limit)."""
        match = _RATE_RE.match(text.lower())
        if not match or (match[2] and match[2] not in _RATE_UNITS) or (not match[2] and
                                                                        float(match[1]) != 0):
            raise ValueError(f"{text!r} is not a rate; write it like 30/min, 2/s, 1000/h, or 0 "
                             "for no limit")
        return cls(float(match[1]), _RATE_UNITS[match[2]] if match[2] else 1.0)

    def __str__(self) -> str:
        if self.unlimited:
            return "unlimited"
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per_seconds, f"{self.per_seconds}s")
        return f"{self.count:g}/{unit}"


# Field name -> the environment key that sets it; the keys are what users read in errors.
ENV_KEYS = {
    "from_address": "MAILER_FROM",
    "sender_name": "MAILER_SENDER_NAME",
    "smtp_host": "MAILER_SMTP_HOST",
    "smtp_port": "MAILER_SMTP_PORT",
    "smtp_security": "MAILER_SMTP_SECURITY",
    "smtp_username": "MAILER_SMTP_USERNAME",
    "smtp_password": "MAILER_SMTP_PASSWORD",
    "smtp_password_command": "MAILER_SMTP_PASSWORD_COMMAND",
    "smtp_auth": "MAILER_SMTP_AUTH",
    "smtp_oauth2_token_command": "MAILER_SMTP_OAUTH2_TOKEN_COMMAND",
    "smtp_ca_file": "MAILER_SMTP_CA_FILE",
    "imap_host": "MAILER_IMAP_HOST",
    "imap_port": "MAILER_IMAP_PORT",
    "imap_security": "MAILER_IMAP_SECURITY",
    "imap_username": "MAILER_IMAP_USERNAME",
    "imap_password": "MAILER_IMAP_PASSWORD",
    "imap_password_command": "MAILER_IMAP_PASSWORD_COMMAND",
    "imap_auth": "MAILER_IMAP_AUTH",
    "imap_oauth2_token_command": "MAILER_IMAP_OAUTH2_TOKEN_COMMAND",
    "imap_ca_file": "MAILER_IMAP_CA_FILE",
    "save_sent": "MAILER_SAVE_SENT",
    "allow_insecure_auth": "MAILER_ALLOW_INSECURE_AUTH",
    "rate": "MAILER_RATE",
    "domain_rates": "MAILER_DOMAIN_RATES",
    "concurrency": "MAILER_CONCURRENCY",
    "timeout": "MAILER_TIMEOUT",
    "max_attempts": "MAILER_MAX_ATTEMPTS",
    "sender_address": "MAILER_SENDER_ADDRESS",
    "sender_place": "MAILER_SENDER_PLACE",
    "daily_limit": "MAILER_DAILY_LIMIT",
    "window": "MAILER_WINDOW",
    "window_tz": "MAILER_WINDOW_TZ",
    "log": "MAILER_LOG",
}
# Settings that are secrets, or that make one: never shown, stored or echoed back.
SECRETS = ("smtp_password", "smtp_password_command", "smtp_oauth2_token_command",
           "imap_password", "imap_password_command", "imap_oauth2_token_command")
# The login settings IMAP takes from SMTP's when it has none of its own.
TWINS = ("username", "password", "password_command", "auth", "oauth2_token_command", "ca_file")


class Settings(BaseModel):
    """Everything mailer needs to know that is not in the recipient list or the template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_address: str = PLACEHOLDER_FROM
    sender_name: str | None = None
    smtp_host: str = "localhost"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # A command whose first line of output is the password (run once a run).
    smtp_password_command: SecretStr | None = None
    smtp_auth: Literal["password", "xoauth2"] = "password"
    # A command that prints a current OAuth2 access token (run at each login).
    smtp_oauth2_token_command: SecretStr | None = None
    smtp_ca_file: Path | None = None
    # The sender's mailbox, read for bounces and replies (and written for Sent copies); each
    # login setting left out is its SMTP twin's (`imap_field`).
    imap_host: str | None = None
    imap_port: int | None = Field(None, ge=1, le=65535)
    imap_security: Literal["tls", "starttls"] = "tls"
    imap_username: str | None = None
    imap_password: SecretStr | None = None
    imap_password_command: SecretStr | None = None
    imap_auth: Literal["password", "xoauth2"] | None = None
    imap_oauth2_token_command: SecretStr | None = None
    imap_ca_file: Path | None = None
    # A copy of each letter sent into the mailbox's Sent folder: `auto` unless the provider
    # files one itself (Gmail, Microsoft 365).
    save_sent: Literal["auto", "yes", "no"] = "auto"
    allow_insecure_auth: bool = False
    rate: Rate = Rate(10)
    domain_rates: dict[str, Rate] = Field(default_factory=dict)
    concurrency: int = Field(4, ge=1, le=64)
    timeout: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(5, ge=1, le=100)
    # For letters on paper: the sender's postal address (lines separated by | or line
    # breaks) and the place on the date line.
    sender_address: str | None = None
    sender_place: str | None = None
    # At most this many letters from this account in any 24 hours (the provider's quota).
    daily_limit: int | None = Field(None, ge=1)
    window: Window | None = None
    window_tz: str | None = None
    # A file (SQLite), or a postgresql:// URL for a log that several workers share.
    log: str = "mailer-log.sqlite3"

    @model_validator(mode="before")
    @classmethod
    def _named_from(cls, values: Any) -> Any:
        """`MAILER_FROM=Olive Organiser <olive@example.org>`: the name is the sender's, unless
        MAILER_SENDER_NAME gives one."""
        if isinstance(values, dict) and isinstance(values.get("from_address"), str) \
                and "<" in values["from_address"]:
            try:
                [mailbox] = parse_address_list(values["from_address"])
            except (InvalidAddress, ValueError):
                return values  # the address check below says what is wrong
            values = {**values, "from_address": mailbox.address}
            if mailbox.name and not values.get("sender_name"):
                values["sender_name"] = mailbox.name
        return values

    @field_validator("from_address")
    @classmethod
    def _valid_from(cls, value: str) -> str:
        try:
            return normalize_address(value)
        except InvalidAddress as error:
            raise ValueError(f"{value!r} is not an email address: {error}") from None

    @field_validator("sender_name", "smtp_host", "smtp_username", "imap_host", "imap_username")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and (LINE_BREAK.search(value) or "\0" in value):
            raise ValueError("must be a single line (no line breaks)")
        if value is not None and CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("smtp_security", "smtp_auth", "imap_security", "imap_auth", "save_sent",
                     mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        return Window.parse(value) if isinstance(value, str) else value

    @field_validator("window_tz")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)  # ValueError naming it if it is not one
        return value

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        return Rate.parse(value) if isinstance(value, str) else value

    @field_validator("domain_rates", mode="before")
    @classmethod
    def _domain_rates(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            pairs = {}
            for item in value:
                domain, sep, rate = str(item).partition("=")
                if not sep or not domain.strip():
                    raise ValueError(f"{item!r} should look like europarl.europa.eu=10/min")
                pairs[domain.strip().lower()] = Rate.parse(rate)
            return pairs
        return value

    @property
    def placeholder_sender(self) -> bool:
        """True when no real sender was configured: fine for a dry run, refused for a send."""
        return self.from_address == PLACEHOLDER_FROM

    @property
    def shown_name(self) -> str:
        """The sender's name in letters ("" for none; the placeholder's in a dry run)."""
        return self.sender_name or (PLACEHOLDER_NAME if self.placeholder_sender else "")

    def require_sender(self, *, name: bool = False) -> None:
        """Raise ConfigError unless a real sender address (and with `name`, a name: the
        template signs with {{ sender_name }}) is configured."""
        if self.placeholder_sender:
            raise ConfigError("no sender is configured: set MAILER_FROM (your address, or "
                              "'Your Name <you@example.org>') in .env before a live send")
        if name and not self.sender_name:
            raise ConfigError("the template signs with {{ sender_name }}, but no name is set: "
                              "set MAILER_SENDER_NAME, or write MAILER_FROM as 'Your Name "
                              "<you@example.org>'")

    @property
    def postal_address(self) -> tuple[str, ...]:
        """The sender's postal address, a line at a time."""
        return postal_lines(self.sender_address or "")

    @property
    def account(self) -> str:
        """The account letters leave from, as the send log counts its daily limit."""
        return f"{self.from_address} via {self.smtp_host}"

    @property
    def zone(self) -> ZoneInfo:
        """The time zone of the send window, for rows that name none."""
        return zone(self.window_tz) if self.window_tz else local_zone()

    @property
    def security(self) -> Literal["starttls", "tls", "none"]:
        """The TLS mode in force: STARTTLS unless the server is on this machine."""
        if self.smtp_security:
            return self.smtp_security
        return "none" if is_loopback(self.smtp_host) else "starttls"

    def imap_field(self, name: str) -> str:
        """The setting that gives IMAP's `name` (one of TWINS): its own, else SMTP's."""
        own = f"imap_{name}"
        return own if getattr(self, own) is not None else f"smtp_{name}"

    @property
    def mailbox_host(self) -> str:
        """The IMAP server: MAILER_IMAP_HOST, else the SMTP server (one host for both)."""
        return self.imap_host or self.smtp_host

    @property
    def mailbox_port(self) -> int:
        return self.imap_port or (993 if self.imap_security == "tls" else 143)

    @property
    def shown_log(self) -> str:
        """The log's location as it may be shown: a URL without its password."""
        return shown_location(self.log)

    def public(self) -> dict[str, str]:
        """The settings worth recording with a run: everything but secrets."""
        shown = {name: str(getattr(self, name)) for name in type(self).model_fields
                 if name not in SECRETS}
        shown["log"] = self.shown_log
        shown["smtp_security"] = self.security
        shown["domain_rates"] = ",".join(f"{d}={r}" for d, r in self.domain_rates.items())
        return shown


def is_url(location: str) -> bool:
    """Whether a log's location is a PostgreSQL URL rather than a file."""
    return location.startswith(("postgresql://", "postgres://"))


def shown_location(location: str) -> str:
    """A log's location without the password a URL may hold."""
    return hide_password(location)[0] if is_url(location) else location


def hide_password(url: str) -> tuple[str, list[str]]:
    """The URL without its password, to show; and the password's spellings, to keep out of
    every message (libpq's own quote a URL it cannot read). Up to the last @ is the user's,
    even in a URL that leaves a / or @ of the password unescaped."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, at, place = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    pieces = query.split("&") if query else []
    hidden = [piece for piece in pieces if unquote(piece.partition("=")[0]) in _URL_SECRETS]
    secrets = [password, *(piece.partition("=")[2] for piece in hidden)]
    query = "&".join(piece for piece in pieces if piece not in hidden)
    shown = f"{scheme}://{user}{at}{place}" + (f"?{query}" if query else "")
    spellings = {spelling for secret in secrets if secret
                 for spelling in (secret, unquote(secret))}
    # The longest first, so that no part of one is left when a shorter one is replaced.
    return shown, sorted(spellings, key=len, reverse=True)


def postal_lines(text: str) -> tuple[str, ...]:
    """An address written on one line with `|` between its lines, or on several lines."""
    return tuple(part.strip() for part in re.split(r"\||\r?\n", text) if part.strip())


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (so nothing crosses a network)."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from `env_file` (default: `.env` if there is one), the environment
    and `overrides` (None = not given). Values are taken as written: `${NAME}` is never
    expanded, and a value with spaces or ` #` in it must be quoted."""
    values: dict[str, Any] = {}
    file_values = _read_env_file(env_file)
    for field, key in ENV_KEYS.items():
        value = os.environ.get(key, file_values.get(key))
        if value is not None and value.strip() != "":
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"setting {key}: its value is not UTF-8 text; set it again "
                                  "in a UTF-8 terminal or file") from None
            values[field] = value.strip()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigError(_explain(error)) from None


def _read_env_file(path: Path | None) -> dict[str, str | None]:
    if path is None:
        path = Path(".env")
        if not path.exists():
            return {}
    if path.is_dir():
        raise ConfigError(f"settings file {path} is a folder; give the path of a .env file")
    if not path.exists():
        raise ConfigError(f"settings file {path} does not exist; check --env-file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise ConfigError(f"settings file {path}:{line}: is not UTF-8 (byte "
                          f"{error.object[error.start]:#x}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"settings file {path}: {error.strerror or error}") from None
    # python-dotenv skips a line it cannot read, with a warning naming itself: the setting
    # (a password, say) would then be missing for a reason nobody is told. The line itself is
    # not shown: it may hold a secret.
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"settings file {path}:{binding.original.line}: cannot read this "
                              "line; write it as NAME=value, and quote a value with spaces "
                              "or # in it (NAME=\"a value\"), closing the quotes")
    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))


def _explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        key = ENV_KEYS.get(field, field)
        message = str(item["msg"]).removeprefix("Value error, ")
        # Never echo the input of a secret back to the terminal.
        shown = "" if field in SECRETS else f" (got {item.get('input')!r})"
        lines.append(f"setting {key}: {message}{shown}; fix it in .env or the environment")
    return "\n".join(lines)
