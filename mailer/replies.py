"""Server replies that are about the account, not the letter, and what to do about each.

A provider's daily quota refuses every letter after it alike, so such a reply stops the run
(the letter is deferred, the rest stay due) instead of failing letter after letter; a login
the provider no longer takes names the setting to change. Each entry says where its words
come from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Meaning = Literal["quota", "login", "tls"]


@dataclass(frozen=True, slots=True)
class Known:
    """A reply recognised by its code, enhanced status code and words."""

    code: int
    enhanced: str
    words: str
    meaning: Meaning
    advice: str
    source: str


KNOWN = (
    Known(550, "5.4.5", r"daily|limit|quota", "quota",
          "the account's daily sending limit is used up",
          "Gmail: 550 5.4.5 Daily user sending limit exceeded "
          "(support.google.com/a/answer/166852)"),
    Known(554, "5.2.0", r"SubmissionQuotaExceeded|quota", "quota",
          "the account's sending quota is used up",
          "Microsoft 365: 554 5.2.0 STOREDRV.Submission.Exception: "
          "SubmissionQuotaExceededException (learn.microsoft.com, Exchange Online limits)"),
    Known(550, "5.1.90", r"", "quota",
          "the account's daily limit of recipients is reached",
          "Outlook.com: 550 5.1.90 Your message can't be sent because you've reached your "
          "daily limit for message recipients"),
    Known(421, "4.7.0", r"unusual rate|rate limit|too many", "quota",
          "the provider has paused the account's sending for a while",
          "Gmail: 421 4.7.0 Our system has detected an unusual rate of unsolicited mail "
          "(support.google.com/mail/answer/81126)"),
    Known(421, "4.4.2", r"", "quota",
          "the provider has stopped taking the account's mail for a while",
          "Microsoft 365: 421 4.4.2 ... message submission rate for this client has exceeded "
          "the configured limit"),
    Known(451, "4.7.500", r"busy|later", "quota",
          "the provider asks the account to wait before sending more",
          "Microsoft 365: 451 4.7.500 Server busy. Please try again later"),
    Known(535, "5.7.139", r"", "login",
          "Microsoft no longer takes a password for this account: set MAILER_SMTP_AUTH=xoauth2 "
          "and MAILER_SMTP_OAUTH2_TOKEN_COMMAND",
          "Microsoft 365: 535 5.7.139 Authentication unsuccessful, basic authentication is "
          "disabled (learn.microsoft.com, SMTP AUTH)"),
    Known(534, "5.7.9", r"", "login",
          "Gmail wants an app password for this account: create one at "
          "myaccount.google.com/apppasswords and put it in MAILER_SMTP_PASSWORD (or set "
          "MAILER_SMTP_AUTH=xoauth2)",
          "Gmail: 534 5.7.9 Application-specific password required "
          "(support.google.com/mail/?p=InvalidSecondFactor)"),
    Known(535, "5.7.8", r"", "login",
          "the server does not take this user name and password: check MAILER_SMTP_USERNAME "
          "and MAILER_SMTP_PASSWORD (or the command that prints it)",
          "Gmail: 535 5.7.8 Username and Password not accepted "
          "(support.google.com/mail/?p=BadCredentials)"),
    Known(530, "5.7.0", r"STARTTLS", "tls",
          "the server takes mail only over TLS: set MAILER_SMTP_SECURITY=starttls",
          "RFC 3207; Gmail: 530 5.7.0 Must issue a STARTTLS command first"),
)
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def known(code: int, text: str) -> Known | None:
    """What a reply means, if it is one of KNOWN."""
    enhanced = _ENHANCED.search(text)
    for entry in KNOWN:
        if entry.code == code and (
                (enhanced is not None and enhanced[1] == entry.enhanced)
                or (entry.meaning == "tls" and enhanced is None)) \
                and re.search(entry.words, text, re.IGNORECASE):
            return entry
    return None
