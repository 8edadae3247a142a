"""Shared fixtures: campaign files in tmp_path, settings, and the CLI run in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailer.cli import main
from mailer.settings import Rate, Settings

REPO = Path(__file__).resolve().parent.parent

SIMPLE_TEMPLATE = """\
To: "{{ title }} {{ name }}" <{{ email }}>
Subject: Hello {{ name }}

Dear {{ title }} {{ name }},

Please act now.

Best regards,
{{ sender_name }}
"""

SIMPLE_CSV = """\
email,title,name,country
ada@example.org,Dr,Ada Lovelace,UK
grace@example.net,Admiral,Grace Hopper,US
"""


@dataclass
class CampaignFiles:
    """Paths of a campaign written into a test's tmp_path."""

    root: Path
    recipients: Path
    template: Path

    def write_csv(self, text: str, encoding: str = "utf-8") -> Path:
        self.recipients.write_bytes(text.encode(encoding))
        return self.recipients

    def write_template(self, text: str, html: str | None = None) -> Path:
        self.template.write_text(text, encoding="utf-8")
        if html is not None:
            self.template.with_suffix(".html").write_text(html, encoding="utf-8")
        return self.template


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignFiles:
    """A campaign folder (the working directory) with a small CSV and template in it."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("MAILER_")]:
        monkeypatch.delenv(key)
    (tmp_path / "templates").mkdir()
    found = CampaignFiles(tmp_path, tmp_path / "recipients.csv",
                          tmp_path / "templates" / "letter.txt")
    found.write_csv(SIMPLE_CSV)
    found.write_template(SIMPLE_TEMPLATE)
    return found


@pytest.fixture
def settings() -> Settings:
    """Settings of a real-looking organiser, sending to a local server with no rate limit."""
    return Settings(from_address="organiser@example.org", sender_name="Olive Organiser",
                    rate=Rate(0), smtp_host="127.0.0.1")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(files: CampaignFiles, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `mailer ARGS...` in-process in the campaign folder: exit code, stdout, stderr."""

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke
