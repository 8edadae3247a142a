"""Memory with a large attachment: encoded once, and about one letter held per connection.

Each measure is a `mailer` process's peak RSS (os.wait4) above the same run's with a tiny
attachment, in units of the attachment's encoded size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CampaignFiles, Server

MB = 1 << 20
ATTACHMENT = 12 * MB


def _peak(root: Path, *args: str, env: dict[str, str]) -> int:
    """The peak resident memory, in bytes, of `mailer ARGS` run in `root`."""
    process = subprocess.Popen([sys.executable, "-m", "mailer", *args], cwd=root,
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr and process.stderr.read()
    return usage.ru_maxrss * 1024


@pytest.fixture
def big(files: CampaignFiles) -> CampaignFiles:
    rows = [f"mp{n}@example.org,Dr,Member {n},UK" for n in range(6)]
    files.write_csv("email,title,name,country\n" + "\n".join(rows) + "\n")
    files.write_template("Subject: Briefing\nAttachment: {{ country }}.pdf\n\nDear {{ name }},\n")
    (files.root / "templates" / "UK.pdf").write_bytes(os.urandom(ATTACHMENT))
    return files


def _extra_letters(files: CampaignFiles, *args: str, env: dict[str, str]) -> float:
    """The peak above a run with a 1 kB attachment (a campaign of its own), in encoded
    attachments."""
    peak = _peak(files.root, *args, env=env)
    big_one = (files.root / "templates" / "UK.pdf").read_bytes()
    (files.root / "templates" / "UK.pdf").write_bytes(big_one[:1000])
    try:
        baseline = _peak(files.root, *args, "--campaign", "baseline", env=env)
    finally:
        (files.root / "templates" / "UK.pdf").write_bytes(big_one)
    return (peak - baseline) / (ATTACHMENT * 4 / 3)


def test_a_dry_run_holds_the_attachment_and_about_one_letter(big: CampaignFiles) -> None:
    # The encoded attachment, the letter built with it, and the one before as it goes.
    assert _extra_letters(big, "send", "--dry-run", env={}) < 3.5


def test_a_live_send_holds_about_one_letter_per_connection(big: CampaignFiles,
                                                          smtp_server: Server) -> None:
    env = {**smtp_server.env(), "MAILER_CONCURRENCY": "4"}
    assert _extra_letters(big, "send", "--yes", env=env) < 4 + 2
    assert len(smtp_server.handler.messages) == 6 + 6  # the big run and the baseline's
