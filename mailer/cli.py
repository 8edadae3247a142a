"""The `mailer` command: parses arguments, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import click

from .campaign import Campaign
from .errors import MailerError
from .outbox import write_outbox
from .settings import PLACEHOLDER_FROM, Settings, load_settings

_PATH = click.Path(path_type=Path)


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options every campaign command shares: which list, which template, which settings."""
    for option in reversed([
        click.option("--recipients", type=_PATH, default=Path("recipients.csv"),
                     show_default=True, help="The recipient list (CSV with an email column)."),
        click.option("--template", type=_PATH, default=Path("templates/letter.txt"),
                     show_default=True, help="The letter template."),
        click.option("--env-file", type=_PATH, default=Path(".env"), show_default=True,
                     help="Settings file (MAILER_* keys); the environment overrides it."),
        click.option("--allow-duplicates", is_flag=True,
                     help="Send to an address listed more than once (once per row)."),
    ]):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailer")
def cli() -> None:
    """Letter campaigns by email: one letter, a personal copy to each official."""


@cli.command()
@_common
def check(recipients: Path, template: Path, env_file: Path, allow_duplicates: bool) -> None:
    """Validate the recipient list, the template and every letter; send nothing.

    Exit status: 0 clean, 1 problems found, 2 usage or configuration error.
    """
    settings = load_settings(env_file)
    campaign = Campaign(settings, recipients, template, allow_duplicates=allow_duplicates)
    report = campaign.check()
    for problem in report.problems:
        click.echo(str(problem))
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@cli.command()
@_common
@click.option("--dry-run", is_flag=True, help="Write each letter to the outbox; send nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N letters.")
@click.option("--outbox", type=_PATH, default=Path("outbox"), show_default=True,
              help="Where --dry-run writes the .eml files.")
def send(recipients: Path, template: Path, env_file: Path, allow_duplicates: bool,
         dry_run: bool, limit: int | None, outbox: Path) -> None:
    """Send the campaign (or, with --dry-run, write every letter to the outbox)."""
    settings = load_settings(env_file)
    campaign = Campaign(settings, recipients, template, allow_duplicates=allow_duplicates)
    if not dry_run:
        raise click.UsageError("live sending is not available yet; use --dry-run")
    _dry_run(campaign, settings, outbox, limit)


def _dry_run(campaign: Campaign, settings: Settings, outbox: Path, limit: int | None) -> None:
    if settings.placeholder_sender:
        click.echo(f"No MAILER_FROM is set: letters show the placeholder sender {PLACEHOLDER_FROM}."
                   " Set MAILER_FROM and MAILER_SENDER_NAME in .env before a live send.\n")
    recipients = campaign.recipients()
    letters = campaign.letters(recipients)
    written = 0
    for path, letter in write_outbox(_first(letters, limit), outbox):
        if written == 0:
            click.echo(f"--- {path} ---")
            click.echo(_readable(letter.data))
        written += 1
    for problem in recipients.problems:
        click.echo(str(problem), err=True)
    click.echo(f"Dry run: {written} letter{'s' * (written != 1)} written to {outbox}/, "
               f"{recipients.problem_count} problem{'s' * (recipients.problem_count != 1)}; "
               "nothing was sent.")
    if recipients.problem_count:
        sys.exit(1)


def _first(items: Any, limit: int | None) -> Any:
    for count, item in enumerate(items, start=1):
        yield item
        if limit is not None and count >= limit:
            return


def _readable(data: bytes) -> str:
    """A letter as a person reads it: decoded headers, then the text body."""
    message = BytesParser(policy=policy.default).parsebytes(data)
    lines = [f"{name}: {value}" for name, value in message.items()
             if name.lower() not in {"mime-version", "content-type", "content-transfer-encoding"}]
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    return "\n".join(lines) + "\n\n" + str(text)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn MailerError into its message and exit code, never a traceback."""
    try:
        cli.main(args=argv, prog_name="mailer", standalone_mode=False)
    except MailerError as error:
        click.echo(f"error: {error}" if "\n" not in str(error) else str(error), err=True)
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return 0
