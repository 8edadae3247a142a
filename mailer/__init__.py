"""mailer: letter campaigns by email, one personal copy per official, from your own mailbox."""

from .campaign import Campaign, CheckReport
from .errors import (
    AuthError,
    ConfigError,
    InputError,
    LeaseLost,
    LogError,
    LogLocked,
    MailerError,
    Problem,
    SendError,
    ServerUnreachable,
    TLSError,
    TooManyFailures,
)
from .message import Letter, LetterBuilder
from .recipients import Recipient, RecipientList
from .settings import Rate, Settings, load_settings
from .template import LetterTemplate

__all__ = [
    "AuthError",
    "Campaign",
    "CheckReport",
    "ConfigError",
    "InputError",
    "LeaseLost",
    "Letter",
    "LetterBuilder",
    "LetterTemplate",
    "LogError",
    "LogLocked",
    "MailerError",
    "Problem",
    "Rate",
    "Recipient",
    "RecipientList",
    "SendError",
    "ServerUnreachable",
    "Settings",
    "TLSError",
    "TooManyFailures",
    "load_settings",
]
