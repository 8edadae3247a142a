"""`mailer init`: a starter campaign a volunteer gets to a dry run with, and the providers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, CampaignFiles, Result

from mailer.settings import load_settings
from mailer.starter import PROVIDERS

Run = Callable[..., Result]


def test_init_writes_a_campaign_that_checks_clean_and_dry_runs(files: CampaignFiles,
                                                               run: Run) -> None:
    result = run("init", "demo")
    assert result.code == 0, result.err
    assert result.out == (
        "wrote demo/recipients.csv\nwrote demo/templates/letter.txt\nwrote demo/.env.example\n"
        "Next:\n  cd demo\n"
        "  mailer send --dry-run              # every letter into outbox/, nothing sent\n"
        "  cp .env.example .env               # then your address, name and password in .env\n"
        "  mailer send --to you@example.org   # a test letter to yourself; then: mailer send\n")
    os.chdir("demo")
    assert run("check") == Result(0, "14 recipients, 0 problems\n", "")
    result = run("send", "--dry-run")
    assert result.code == 0, result.err
    assert result.out.endswith("Dry run: 14 letters written to outbox/, 0 problems; nothing "
                               "was sent.\n")


def test_init_overwrites_nothing_and_names_what_is_there(files: CampaignFiles,
                                                         run: Run) -> None:
    before = files.recipients.read_text(encoding="utf-8")
    result = run("init")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: recipients.csv exists already; mailer init writes only into "
                          "a folder without a starter campaign (choose another folder, or move "
                          "it)\n")
    assert files.recipients.read_text(encoding="utf-8") == before
    assert not Path(".env.example").exists()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_init_fills_env_example_in_for_a_provider(provider: str, files: CampaignFiles,
                                                  run: Run) -> None:
    assert run("init", "kit", "--provider", provider).code == 0
    settings = load_settings(Path("kit/.env.example"))
    chosen = PROVIDERS[provider].settings
    assert (settings.smtp_host, str(settings.smtp_port), settings.security, settings.smtp_auth) \
        == (chosen["MAILER_SMTP_HOST"], chosen["MAILER_SMTP_PORT"],
            chosen["MAILER_SMTP_SECURITY"], chosen["MAILER_SMTP_AUTH"])
    assert str(settings.daily_limit or "") == chosen.get("MAILER_DAILY_LIMIT", "")


def test_every_provider_is_in_the_readme_with_its_host_and_limit() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for provider in PROVIDERS.values():
        assert f"`{provider.name}`" in readme
        assert provider.settings["MAILER_SMTP_HOST"] in readme
        limit = provider.settings.get("MAILER_DAILY_LIMIT")
        assert limit is None or f"{int(limit):,}" in readme
