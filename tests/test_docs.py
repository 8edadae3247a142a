"""The README documents every command, and CI runs the test command the README gives."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
from conftest import REPO, CampaignFiles, Server

from mailer.cli import cli

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_the_cli_has_its_commands() -> None:
    assert COMMANDS == ["check", "inbox", "init", "log", "print", "report", "send", "sink"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_section_in_the_readme(command: str) -> None:
    assert f"### `mailer {command}`" in README


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_is_in_the_readme(command: str) -> None:
    options = [opt for param in cli.commands[command].params
               if isinstance(param, click.Option) for opt in param.opts if opt.startswith("--")]
    missing = [opt for opt in options if opt not in README and opt != "--help"]
    assert missing == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mailer", command, "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: mailer {command} [OPTIONS]"), result.stdout
    assert (cli.commands[command].help or "").split("\n")[0] in result.stdout


def test_every_setting_is_documented_in_readme_and_env_example() -> None:
    from mailer.settings import ENV_KEYS

    example = (REPO / "mailer" / "starter" / "env.example").read_text(encoding="utf-8")
    for key in ENV_KEYS.values():
        assert f"`{key}`" in README
        assert re.search(rf"^{key}=", example, re.M), key


def test_ci_runs_the_readme_test_command() -> None:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "Run the tests:" in script
    assert "Run the tests:" in README
    quick_start = README.split("## Quick start")[1].split("###")[0]
    blocks = re.findall(r"```sh\n(.+?)\n```", quick_start)
    assert len(blocks) == 2
    assert "mailer send --dry-run" in blocks[0]
    assert "pytest" in blocks[1]


def test_the_readme_library_example_sends_the_campaign(
        smtp_server: Server, files: CampaignFiles, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    example = README.split("## Using it as a library")[1].split("```python\n")[1]
    exec(compile(example.split("```")[0], "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert out.startswith("2 recipients, 0 problems\nada@example.org ")
    assert out.endswith("sent grace@example.net 250 2.0.0 OK: queued\n")
    assert smtp_server.handler.by_recipient() == {"ada@example.org": 1, "grace@example.net": 1}
