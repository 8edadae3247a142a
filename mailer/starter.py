"""`mailer init`: a starter campaign (the sample officials, the letter, `.env.example`), and
the settings of the mail providers volunteers use, each with where its figures come from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .errors import ConfigError

# What `mailer init` writes: a file of the package's starter kit, and where it goes.
FILES = (("recipients.csv", "recipients.csv"),
         ("templates/letter.txt", "templates/letter.txt"),
         ("env.example", ".env.example"))


@dataclass(frozen=True, slots=True)
class Provider:
    """A mail provider's submission server, how it takes logins, and its sending limits."""

    name: str
    title: str
    settings: dict[str, str]
    source: str


PROVIDERS = {provider.name: provider for provider in (
    Provider("gmail", "Gmail", {
        "MAILER_SMTP_HOST": "smtp.gmail.com", "MAILER_SMTP_PORT": "587",
        "MAILER_SMTP_SECURITY": "starttls", "MAILER_SMTP_AUTH": "password",
        "MAILER_IMAP_HOST": "imap.gmail.com", "MAILER_IMAP_PORT": "993",
        "MAILER_RATE": "20/min", "MAILER_DAILY_LIMIT": "500"},
        "about 500 letters a day for a personal account, and an app password to log in: "
        "support.google.com/a/answer/166852, support.google.com/accounts/answer/185833"),
    Provider("workspace", "Google Workspace", {
        "MAILER_SMTP_HOST": "smtp.gmail.com", "MAILER_SMTP_PORT": "587",
        "MAILER_SMTP_SECURITY": "starttls", "MAILER_SMTP_AUTH": "password",
        "MAILER_IMAP_HOST": "imap.gmail.com", "MAILER_IMAP_PORT": "993",
        "MAILER_RATE": "20/min", "MAILER_DAILY_LIMIT": "2000"},
        "2,000 letters a day per user: support.google.com/a/answer/166852"),
    Provider("microsoft", "Outlook.com / Microsoft 365", {
        "MAILER_SMTP_HOST": "smtp.office365.com", "MAILER_SMTP_PORT": "587",
        "MAILER_SMTP_SECURITY": "starttls", "MAILER_SMTP_AUTH": "xoauth2",
        "MAILER_IMAP_HOST": "outlook.office365.com", "MAILER_IMAP_PORT": "993",
        "MAILER_RATE": "30/min", "MAILER_DAILY_LIMIT": "10000"},
        "10,000 recipients a day and 30 messages a minute, and basic (password) logins being "
        "switched off: learn.microsoft.com/office365/servicedescriptions/"
        "exchange-online-service-description/exchange-online-limits"),
    Provider("self-hosted", "your organisation's own server", {
        "MAILER_SMTP_HOST": "mail.example.org", "MAILER_SMTP_PORT": "587",
        "MAILER_SMTP_SECURITY": "starttls", "MAILER_SMTP_AUTH": "password",
        "MAILER_IMAP_HOST": "mail.example.org", "MAILER_IMAP_PORT": "993"},
        "ask whoever runs it for the host, and for any daily limit"),
)}


def init(folder: Path, provider: str | None = None) -> list[Path]:
    """Write the starter campaign into `folder`; the files written. Refuses, writing
    nothing, if any of them exists."""
    chosen = PROVIDERS[provider] if provider else None
    targets = [(source, folder / target) for source, target in FILES]
    taken = [target for _, target in targets if target.exists()]
    if taken:
        raise ConfigError(f"{taken[0]} exists already; mailer init writes only into a folder "
                          "without a starter campaign (choose another folder, or move it)")
    kit = files("mailer") / "starter"
    try:
        for source, target in targets:
            text = (kit / source).read_text(encoding="utf-8")
            if source == "env.example" and chosen is not None:
                text = _filled(text, chosen)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write the starter campaign into {folder}: "
                          f"{error.strerror or error}") from None
    return [target for _, target in targets]


def _filled(text: str, provider: Provider) -> str:
    """`.env.example` with the provider's settings in place of the defaults."""
    for key, value in provider.settings.items():
        text, count = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        assert count == 1, key  # every setting is in .env.example (a test holds it)
    return (f"# Settings for {provider.title}: {provider.source}.\n" + text)
