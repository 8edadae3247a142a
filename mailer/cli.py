"""The `mailer` command: parses arguments, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import click

from . import starter
from .account import mailbox_login
from .addresses import InvalidAddress, normalize_address
from .campaign import Campaign, CheckReport, plural
from .delivery import Delivery, Preview, SendOptions
from .display import (
    TABLE_ROWS,
    Progress,
    json_items,
    outcome_line,
    print_table,
    readable,
    shown,
    write_csv,
)
from .errors import ConfigError, InputError, MailerError, Problem
from .mailbox import Mailbox, mailbox_context
from .outbox import write_outbox
from .outcome import Outcome, Status
from .post import print_campaign
from .recipients import Where
from .report import render_report
from .sender import Sender, SendSummary, Waiting
from .sendlog import Entry, SendLog, Worker, existing_log, open_log
from .sentcopies import CopiesSummary, saves_sent
from .settings import PLACEHOLDER_FROM, Settings, load_settings
from .sink import Received, Sink, start_sink
from .smtp import Connection, tls_context
from .starter import PROVIDERS

_PATH = click.Path(path_type=Path)
# Seconds between renewals of a run's lease while it waits for the user to say yes: well
# within the minute after which co-workers, or a second run, take it for dead.
_KEEP_ALIVE = 5.0


def _text(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    """A name given on the command line, which must be text (a terminal not in UTF-8 can
    pass other bytes)."""
    try:
        if value is not None:
            value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not UTF-8 text; type it again in a UTF-8 terminal"
                                 ) from None
    return value


def _warnings(campaign: Campaign) -> list[Problem]:
    return [warning for template in campaign.templates for warning in template.warnings]


def _unused_versions(campaign: Campaign, report: CheckReport) -> list[Problem]:
    return [Problem(str(t.path), None, f"warning: no row of {campaign.recipients_path} has "
                    f"language {t.language!r}") for t in campaign.templates
            if t.language and not report.versions[t.language]]


def _texts(context: click.Context, parameter: click.Parameter,
           values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        _text(context, parameter, value)
    return values


def _where(items: tuple[str, ...]) -> Where | None:
    try:
        return Where.parse(items) if items else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--where'") from None


_log_option = click.option(
    "--log", "log_path", metavar="FILE|URL", callback=_text,
    help="The send log: a file, or a postgresql:// URL shared by workers [MAILER_LOG].")


_env_file_option = click.option(
    "--env-file", type=_PATH,
    help="Settings file (MAILER_* keys) [default: .env, if there is one].")


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options every campaign command shares: which list, which template, which settings."""
    for option in reversed([
        click.option("--recipients", type=_PATH, default=Path("recipients.csv"),
                     show_default=True, help="The recipient list (CSV with an email column)."),
        click.option("--template", type=_PATH, default=Path("templates/letter.txt"),
                     show_default=True, help="The letter template."),
        click.option("--env-file", type=_PATH, help="Settings file (MAILER_* keys) [default: "
                     ".env, if there is one]; the environment overrides it."),
        click.option("--allow-duplicates", is_flag=True,
                     help="Accept an address listed more than once (it still gets one letter)."),
        click.option("--where", multiple=True, metavar="COLUMN=VALUE",
                     help="Only the rows whose COLUMN is VALUE (any case and accents); "
                          "repeatable: values of one column are alternatives, columns must "
                          "all match."),
    ]):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailer")
def cli() -> None:
    """Letter campaigns by email: one letter, a personal copy to each official."""


@cli.command()
@_common
def check(recipients: Path, template: Path, env_file: Path | None, allow_duplicates: bool,
          where: tuple[str, ...]) -> None:
    """Validate the recipient list, the template and every letter; send nothing.

    Exit status: 0 clean, 1 problems found, 2 usage or configuration error.
    """
    settings = load_settings(env_file)
    campaign = Campaign(settings, recipients, template, allow_duplicates=allow_duplicates,
                        where=_where(where))
    report = campaign.check()
    for warning in [*_warnings(campaign), *_unused_versions(campaign, report)]:
        click.echo(shown(str(warning)))
    if campaign.versions:
        click.echo(shown("Versions: " + ", ".join(
            f"{template.path.name} {plural(report.versions[template.language], 'letter')}"
            for template in campaign.templates) + "."))
    if report.recipients_from != "the 'email' column":
        click.echo(shown(f"The letters go to {report.recipients_from}."))
    for problem in report.problems:
        click.echo(shown(str(problem)))
    if report.international:
        examples = ", ".join(f"line {line}: {address}"
                             for line, address in report.international_examples)
        click.echo(shown(f"{plural(report.international, 'letter')} go to international "
                         f"addresses ({examples}{', ...' * (report.international > 5)}): they "
                         "need a server that offers SMTPUTF8 (RFC 6531)."))
    click.echo(report.summary())
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@_common
@click.option("--dry-run", is_flag=True, help="Write each letter to the outbox; send nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N letters due.")
@click.option("--outbox", type=_PATH, default=Path("outbox"), show_default=True,
              help="Where --dry-run writes the .eml files.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--to", "redirect_to", metavar="ADDRESS",
              help="Send the first letter(s) to ADDRESS instead (a test; not logged).")
@click.option("--campaign", "campaign_name", metavar="NAME", callback=_text,
              help="Campaign name in the send log [default: the template's file stem].")
@_log_option
@click.option("--retry-failed", is_flag=True,
              help="Also resend letters that failed for good or bounced.")
@click.option("--resend-unknown", is_flag=True,
              help="Also resend letters whose fate is unknown (they may arrive twice).")
@click.option("--rate", help="Letters per time, e.g. 30/min, 2/s; 0 = no limit [MAILER_RATE].")
@click.option("--domain-rate", multiple=True, metavar="DOMAIN=RATE",
              help="A limit for one domain, e.g. europarl.europa.eu=10/min (repeatable).")
@click.option("--concurrency", type=int, help="Parallel SMTP connections [MAILER_CONCURRENCY].")
@click.option("--timeout", type=float, help="Seconds to wait for the server [MAILER_TIMEOUT].")
@click.option("--max-attempts", type=int, help="Tries per letter [MAILER_MAX_ATTEMPTS].")
@click.option("--host", help="SMTP server [MAILER_SMTP_HOST].")
@click.option("--port", type=int, help="SMTP port [MAILER_SMTP_PORT].")
@click.option("--security", type=click.Choice(["starttls", "tls", "none"]),
              help="TLS mode [MAILER_SMTP_SECURITY].")
@click.option("--daily-limit", type=click.IntRange(min=1),
              help="At most N letters from this account in any 24 hours [MAILER_DAILY_LIMIT].")
@click.option("--window", metavar="SPANS",
              help='Send only then, e.g. "Mon-Fri 09:00-17:00" [MAILER_WINDOW].')
@click.option("--window-tz", metavar="ZONE",
              help="The window's time zone for rows with no timezone column, e.g. "
                   "Europe/Paris [MAILER_WINDOW_TZ; default: this machine's].")
@click.option("--wait", is_flag=True,
              help="Wait for the daily limit, a quota or the window instead of stopping.")
@click.option("--save-sent", type=click.Choice(["auto", "yes", "no"]),
              help="A copy of each letter sent into your mailbox's Sent folder; auto: if "
                   "MAILER_IMAP_HOST is set and the provider does not file one itself "
                   "[MAILER_SAVE_SENT].")
def send(recipients: Path, template: Path, env_file: Path | None, allow_duplicates: bool,
         where: tuple[str, ...], dry_run: bool, limit: int | None, outbox: Path, yes: bool,
         redirect_to: str | None, campaign_name: str | None, log_path: str | None,
         retry_failed: bool, resend_unknown: bool, rate: str | None,
         domain_rate: tuple[str, ...], concurrency: int | None, timeout: float | None,
         max_attempts: int | None, host: str | None, port: int | None, security: str | None,
         daily_limit: int | None, window: str | None, window_tz: str | None,
         wait: bool, save_sent: str | None) -> None:
    """Send the campaign (or, with --dry-run, write every letter to the outbox).

    A live send shows what it is about to do and asks first (--yes skips the question).
    Re-running it continues the campaign: letters already sent are never sent again.

    Exit status: 0 all sent; 1 some letters failed, are unknown or were not sent; 2 usage
    or configuration error; 75 stopped for now (the daily limit, a provider's quota, the
    send window or the server's pace): run it again later, or use --wait; 130 stopped by
    Ctrl-C.
    """
    settings = load_settings(
        env_file, rate=rate, domain_rates=list(domain_rate) or None, concurrency=concurrency,
        timeout=timeout, max_attempts=max_attempts, smtp_host=host, smtp_port=port,
        smtp_security=security, log=log_path, daily_limit=daily_limit, window=window,
        window_tz=window_tz, save_sent=save_sent)
    campaign = Campaign(settings, recipients, template, name=campaign_name,
                        allow_duplicates=allow_duplicates, where=_where(where))
    options = SendOptions(limit, retry_failed, resend_unknown, wait)
    if dry_run:
        _dry_run(campaign, settings, outbox, options)
    elif redirect_to:
        _test_send(campaign, normalize_option_address(redirect_to), limit or 1, yes)
    else:
        _live_send(campaign, options, yes)


def normalize_option_address(text: str) -> str:
    """Validate an address given on the command line."""
    try:
        return normalize_address(text)
    except InvalidAddress as error:
        raise click.BadParameter(f"{text!r} is not an address: {error}") from None


def _dry_run(campaign: Campaign, settings: Settings, outbox: Path,
             options: SendOptions) -> None:
    if settings.placeholder_sender:
        click.echo(shown(f"No sender address is configured: letters show the placeholder "
                         f"{settings.shown_name} <{PLACEHOLDER_FROM}>. Set MAILER_FROM and "
                         "MAILER_SENDER_NAME in .env before a live send.\n"))
    for warning in _warnings(campaign):
        click.echo(shown(str(warning)), err=True)
    log = existing_log(settings.log)
    preview = Preview(campaign, log, options)
    written = 0
    shown_versions: set[str] = set()
    try:
        for path, letter in write_outbox(preview.letters(), outbox):
            if letter.version not in shown_versions:  # the first letter of each version
                shown_versions.add(letter.version)
                click.echo(f"--- {path} ---")
                click.echo(readable(letter.data))
            written += 1
    finally:
        if log is not None:
            log.close()
    report, plan = preview.report, preview.plan
    for problem in report.problems:
        click.echo(str(problem), err=True)
    if log is not None:
        click.echo(f"Send log {settings.shown_log}: a live run now has {plan.explain()}.")
        if plan.examples:
            hidden = sum(plan.skipped.values()) - len(plan.examples)
            click.echo("Skipped by a live run:\n"
                       + "\n".join(f"  {email}: {status}" for email, status in plan.examples)
                       + (f"\n  ... and {hidden} more (mailer log lists them)" if hidden else ""))
    click.echo(f"Dry run: {plural(written, 'letter')} written to {outbox}/, "
               f"{plural(report.problem_count, 'problem')}; nothing was sent.")
    if not report.ok:
        raise click.exceptions.Exit(1)


def _describe_server(settings: Settings) -> str:
    login = f" as {settings.smtp_username}" if settings.smtp_username else ""
    return f"{settings.smtp_host}:{settings.smtp_port} ({settings.security}{login})"


def _confirm(question: str, yes: bool, keep_alive: Callable[[], None] | None = None) -> None:
    """Ask, unless `yes`; while the user thinks, `keep_alive` runs every few seconds."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError("not sending: there is no terminal to confirm on; add --yes to send "
                          "without asking")
    if keep_alive is None:
        click.confirm(question, abort=True)
        return
    answered: queue.Queue[BaseException | None] = queue.Queue()

    def ask() -> None:
        try:
            click.confirm(question, abort=True)
        except BaseException as error:  # raised again below, in the command's thread
            answered.put(error)
        else:
            answered.put(None)

    # The question waits on a thread of its own (daemon: Ctrl-C still ends the command here).
    threading.Thread(target=ask, daemon=True).start()
    while True:
        try:
            error = answered.get(timeout=_KEEP_ALIVE)
        except queue.Empty:
            keep_alive()
            continue
        if error is not None:
            raise error
        return


def _test_send(campaign: Campaign, address: str, count: int, yes: bool) -> None:
    settings = campaign.settings
    settings.require_sender()
    sender = Sender(settings)
    click.echo(f"Test: the first {plural(count, 'letter')} go to {address}, not to "
               f"the recipients, via {_describe_server(settings)}. Not recorded in the log.")
    campaign.require_clean()
    _confirm("Send the test?", yes)
    letters = itertools.islice(campaign.letters(redirect_to=address), count)
    _sending(lambda stop: sender.send(letters, stop), lambda o: click.echo(outcome_line(o))
             if isinstance(o, Outcome) else None)
    raise click.exceptions.Exit(_report(sender.summary))


def _live_send(campaign: Campaign, options: SendOptions, yes: bool) -> None:
    settings = campaign.settings
    Sender(settings)  # refusals that depend on the settings alone come first
    copies = saves_sent(settings)
    if copies:
        mailbox_login(settings)
    with open_log(settings.log) as log, Delivery(campaign, log, options) as delivery:
        _say_takeover(delivery)
        plan = delivery.plan
        for warning in _warnings(campaign):
            click.echo(shown(str(warning)), err=True)
        click.echo(shown(f"Campaign {campaign.name!r}: {plan.explain()}."))
        if plan.due == 0:
            click.echo("Nothing to send.")
            return
        if plan.international:
            _say_international(settings, plan.international)
        click.echo(f"From {settings.sender_name} <{settings.from_address}> via "
                   f"{_describe_server(settings)}, "
                   f"{'with no rate limit' if settings.rate.unlimited else f'at {settings.rate}'} "
                   f"with {settings.concurrency} connection(s). Log: {settings.shown_log}")
        if copies:
            click.echo(f"A copy of each letter goes into the Sent folder at "
                       f"{settings.mailbox_host}:{settings.mailbox_port}.")
        _confirm(f"Send {plural(plan.due, 'letter')}?", yes, delivery.keep_alive)
        with Progress(plan.due) as progress:
            _sending(delivery.send, progress.update)
    if delivery.copies is not None:
        _say_copies(delivery.copies.summary)
    if delivery.elsewhere:
        click.echo(f"{plural(delivery.elsewhere, 'letter')} due are held by another worker "
                   "of this campaign, which sends them (mailer log shows the workers).")
    raise click.exceptions.Exit(_report(delivery.summary, delivery.missing,
                                        campaign.recipients_path))


def _say_copies(copies: CopiesSummary) -> None:
    if not copies.saved + copies.unsaved:
        return  # no letter went
    click.echo(shown(f"Sent folder {copies.folder!r}: {plural(copies.saved, 'copy', 'copies')} "
                     "saved.", one_line=True))
    if copies.unsaved:
        click.echo(shown(f"{plural(copies.unsaved, 'copy', 'copies')} could not be saved "
                         f"({copies.error}); the letters went all the same, and are recorded "
                         "sent.", one_line=True))


def _say_international(settings: Settings, count: int) -> None:
    """Before asking, whether the server takes the letters to international addresses."""

    async def probe() -> bool:
        connection = Connection(settings, tls_context(settings))
        try:
            return await connection.offers("smtputf8")
        finally:
            await connection.quit()

    letters = f"{plural(count, 'letter')} to international addresses"
    if asyncio.run(probe()):
        click.echo(f"{letters}: the server offers SMTPUTF8, so they can go.")
    else:
        click.echo(f"{letters}: the server does not offer SMTPUTF8 (RFC 6531), so they will "
                   "be recorded failed; the others go.")


def _say_takeover(delivery: Delivery) -> None:
    run = delivery.run
    assert run is not None
    if run.replaced is not None:
        click.echo(f"The send log's last run, {run.replaced.describe()}, is not running "
                   f"({run.replaced_because}): this run takes the log over.")
    if run.settled:
        click.echo(f"{plural(run.settled, 'letter')} that a stopped run had in flight "
                   "are now unknown: the server may have them (mailer log --status unknown "
                   "lists them, --resend-unknown sends them again).")


def _sending(outcomes: Callable[[asyncio.Event], AsyncIterator[Outcome | Waiting]],
             show: Callable[[Outcome | Waiting], None]) -> None:
    """Run a send, showing each outcome. The first Ctrl-C (or SIGTERM) stops it cleanly:
    no new letter, those in flight finish. A second stops it at once."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            if stop.is_set():
                task.cancel()
                return
            stop.set()
            click.echo("Stopping: the letters in flight finish (Ctrl-C again to stop at "
                       "once).", err=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, interrupt)
        try:
            async for outcome in outcomes(stop):
                show(outcome)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        click.echo("Stopped at once: letters that were in flight are recorded as unknown "
                   "(mailer log --status unknown).", err=True)
        raise click.exceptions.Exit(130) from None


def _when(moment: float) -> str:
    """A time to come back at, on this machine's clock."""
    days = (time.localtime(moment).tm_yday - time.localtime().tm_yday) % 365
    shown = time.strftime("%H:%M", time.localtime(moment))
    return (shown if days == 0 else time.strftime("%a %d %b %H:%M", time.localtime(moment))
            if days < 7 else time.strftime("%Y-%m-%d %H:%M", time.localtime(moment)))


def _report(summary: SendSummary, missing: int = 0, recipients: Path | None = None) -> int:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing sent"
    sent = summary.counts[Status.SENT]
    # A pace only of letters that went: "8 deferred (0.3 letters/s)" reads as 8 sent.
    per_second = sent / summary.elapsed if summary.elapsed > 0 else 0.0
    pace = ("" if not per_second else f" ({per_second:.1f} letters/s)" if per_second >= 0.1
            else f" ({per_second * 60:.1f} letters/min)")  # a run that waited for a window
    click.echo(f"{'Stopped' if summary.interrupted else 'Done'}: {counts} in "
               f"{summary.elapsed:.1f}s{pace}.")
    if summary.copies_refused:
        click.echo(f"{plural(summary.copies_refused, 'letter')} went without a Cc or Bcc copy "
                   "that the server refused; mailer log --status sent shows the replies.")
    if summary.throttled:
        click.echo(f"The server asked this run to slow down ({shown(summary.throttled)}); it "
                   f"went on with {plural(summary.connections, 'connection')}.")
        deferred = summary.counts[Status.DEFERRED]
        if deferred:
            later = time.strftime("%H:%M", time.localtime(time.time() + 15 * 60))
            click.echo(f"Run mailer send again after {later} (in 15 minutes) to send the "
                       f"{plural(deferred, 'deferred letter')}.")
    if missing:
        click.echo(f"Not sent: {plural(missing, 'planned letter')}: {recipients} changed "
                   "during the run, so it stopped taking letters. Run mailer send again: it "
                   "checks the list as it is now and sends what is due.")
    come_back = False
    if summary.paused and summary.resume_at is not None:
        click.echo(shown(f"Stopped for now: {summary.paused}. The next letter may go at "
                         f"{_when(summary.resume_at)}: run mailer send again then (or with "
                         "--wait, to wait for it)."))
        come_back = True
    if summary.outside_window and summary.window_opens is not None:
        click.echo(f"Left for later: {plural(summary.outside_window, 'letter')} outside "
                   f"the send window; it next opens at {_when(summary.window_opens)} "
                   "(run mailer send again then, or with --wait).")
        come_back = True
    if summary.interrupted:
        click.echo("Run mailer send again to continue where it stopped.")
        return 130
    troubled = (summary.counts[Status.FAILED] + summary.counts[Status.UNKNOWN] + missing
                + (0 if come_back or summary.throttled else summary.counts[Status.DEFERRED]))
    if troubled:
        return 1
    return 75 if come_back or summary.counts[Status.DEFERRED] else 0


_ATTENTION = (Status.BOUNCED, Status.FAILED, Status.DEFERRED, Status.UNKNOWN, Status.SENDING,
              Status.PENDING)


@cli.command()
@_log_option
@_env_file_option
@click.option("--campaign", "campaign_name", metavar="NAME", callback=_text,
              help="Only this campaign.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in Status]),
              help="List recipients in this state (repeatable) [default: the table shows "
                   "all that need attention; csv and json, every recipient].")
@click.option("--replied", "answered", flag_value="replied",
              help="Only letters a person answered (mailer inbox reads the answers).")
@click.option("--no-reply", "answered", flag_value="none",
              help="Only letters no person has answered (an automatic reply is no answer).")
@click.option("--format", "output", type=click.Choice(["table", "csv", "json"]),
              default="table", show_default=True, help="Output format.")
def log(log_path: str | None, env_file: Path | None, campaign_name: str | None,
        statuses: tuple[str, ...], answered: str | None, output: str) -> None:
    """Review the send log: who got the letter, who did not, and why.

    Without --status the table lists the letters that need attention and the exports every
    letter; with --replied or --no-reply, the letters that went (sent, unknown or bounced).
    """
    settings = load_settings(env_file, log=log_path)
    send_log = open_log(settings.log, create=False)
    try:
        name = _campaign_in(send_log, campaign_name)
        campaigns = [name] if name else send_log.campaigns()
        wanted = [Status(s) for s in statuses] or (
            [Status.SENT, Status.UNKNOWN, Status.BOUNCED] if answered
            else list(_ATTENTION) if output == "table" else list(Status))
        entries: Iterable[Entry] = itertools.chain.from_iterable(
            send_log.entries(c, wanted) for c in campaigns)
        if answered:
            entries = (e for e in entries if (e.reply == "replied") == (answered == "replied"))
        if output == "json":
            for piece in json_items(entries):
                click.echo(piece, nl=False)
        elif output == "csv":
            write_csv(entries, sys.stdout)
        else:
            answers = paper = False
            for name in campaigns:
                summary = send_log.summary(name)
                answers = answers or bool(summary.replied or summary.auto_replied)
                paper = paper or bool(summary.on_paper)
                counts = ", ".join(f"{summary.counts.get(s, 0)} {s}" for s in Status
                                   if s not in (Status.SENDING, Status.BOUNCED)
                                   or summary.counts.get(s))
                rate = summary.rate_per_minute
                click.echo(shown(f"Campaign {name!r}: {counts}"))
                if summary.first_sent:
                    click.echo(f"  first sent {summary.first_sent}, last {summary.last_sent}"
                               + (f", {rate:.1f} letters/min" if rate else ""))
                if summary.replied or summary.auto_replied:
                    share = summary.reply_rate or 0.0
                    click.echo(f"  {plural(summary.replied, 'reply', 'replies')} from a person "
                               f"({share:.0%} of the letters that went), "
                               f"{summary.auto_replied} automatic")
                if summary.on_paper:
                    click.echo(f"  {plural(summary.on_paper, 'letter')} printed for the post")
                _show_workers(send_log.workers(name))
            title = "Recipients that need attention" if wanted == list(_ATTENTION) else (
                {"replied": "Letters a person answered",
                 "none": "Letters no person has answered"}.get(answered or ""))
            count = print_table(entries, title, several=len(campaigns) > 1, answers=answers,
                                paper=paper)
            if not count and wanted == list(_ATTENTION):
                click.echo("No recipient needs attention: every letter went.")
            elif not count:
                click.echo(f"No recipients are {' or '.join(wanted)}"
                           + {"replied": ", with a reply", "none": ", without a reply"}.get(
                               answered or "", "") + ".")
            elif count > TABLE_ROWS:
                click.echo(f"... and {count - TABLE_ROWS:,} more (--format csv lists them all)")
    finally:
        send_log.close()


@cli.command()
@_log_option
@_env_file_option
@click.option("--campaign", "campaign_name", metavar="NAME", callback=_text,
              help="Only this campaign's letters [default: every campaign in the log].")
@click.option("--folder", "folders", multiple=True, metavar="NAME", callback=_texts,
              help="A folder to read (repeatable) [default: INBOX].")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Read again every message since this day [default: what is new since "
                   "the last read, and nothing from before the first letter went].")
def inbox(log_path: str | None, env_file: Path | None, campaign_name: str | None,
          folders: tuple[str, ...], since: datetime | None) -> None:
    """Read your mailbox for bounces and replies to the letters, and record them.

    It changes nothing in the mailbox (read-only, no message marked read). A bounced
    letter is not sent again unless mailer send --retry-failed.
    """
    settings = load_settings(env_file, log=log_path)
    with open_log(settings.log, create=False) as send_log:
        campaign = _campaign_in(send_log, campaign_name)
        first = send_log.first_sent(campaign)
        if first is None:
            click.echo("No letter has been sent yet: there is nothing to look for.")
            return
        # A day early: INTERNALDATE is in the server's time zone, SINCE takes its date.
        start = since.date() if since else date.fromisoformat(first[:10]) - timedelta(days=1)
        # Here, not at the top: the bounce detectors (flufl.bounce) are start-up that only
        # this command needs.
        from .inbox import read_inbox

        with Mailbox(settings, mailbox_login(settings), mailbox_context(settings)) as mailbox:
            click.echo(shown(f"Reading {mailbox.account}, from {start}.", one_line=True))
            found = read_inbox(mailbox, send_log, folders or ["INBOX"], start, campaign,
                               from_start=since is not None)
    about = f"campaign {campaign!r}" if campaign else "these campaigns"
    click.echo(shown(f"Read {plural(found.read, 'message')} in {', '.join(found.folders)}: "
                     f"{plural(found.replies, 'reply', 'replies')} from a person, "
                     f"{plural(found.auto_replies, 'automatic reply', 'automatic replies')}, "
                     f"{plural(len(found.bounced), 'bounce')}.", one_line=True))
    for bounce in found.bounced:
        click.echo(shown(f"  bounced: {bounce.email} ({bounce.campaign}): {bounce.status} "
                         f"{bounce.diagnostic}".rstrip(), one_line=True))
    notes = [
        (found.delayed, f"{plural(found.delayed, 'delay notice')}: a server is still trying; "
                        "nothing changes"),
        (found.copies_bounced, f"{plural(found.copies_bounced, 'bounce')} of a Cc or Bcc "
                               "copy: the letter itself went"),
        (found.known, f"{plural(found.known, 'message')} recorded by an earlier read"),
        (found.unrelated, f"{plural(found.unrelated, 'message')} not about {about}")]
    for count, note in notes:
        if count:
            click.echo(f"  {note}")
    if found.bounced:
        click.echo("mailer log --status bounced lists the bounced letters; fix their "
                   "addresses in the list (a new address gets its letter), or send them "
                   "again with mailer send --retry-failed.")


def _show_workers(workers: list[Worker]) -> None:
    """The workers of a campaign on a shared log: what each sent, how fast, when last heard."""
    if not workers:
        return
    click.echo(f"  {plural(len(workers), 'worker')}:")
    for worker in workers:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(worker.counts.items())) or "nothing"
        rate = f", {worker.rate_per_minute:.1f}/min" if worker.rate_per_minute else ""
        state = (f"ended {worker.ended[:19]} ({worker.outcome})" if worker.ended
                 else f"running, last heard {(worker.heartbeat or '')[:19]}")
        click.echo(shown(f"    run {worker.run_id} (pid {worker.pid} on {worker.host}, "
                         f"{worker.account}): {counts}{rate}; {state}", one_line=True))


def _campaign_in(send_log: SendLog, name: str | None) -> str | None:
    """`name` if the log has that campaign (ConfigError listing those it has if not)."""
    known = send_log.campaigns()
    if name is not None and name not in known:
        raise ConfigError(f"no campaign {name!r} in {send_log.location}; it has: "
                          f"{', '.join(map(repr, known)) or 'none yet'}")
    return name


@cli.command()
@_log_option
@_env_file_option
@click.option("--campaign", "campaign_name", metavar="NAME", callback=_text,
              help="The campaign [default: the log's only one].")
@click.option("-o", "--output", type=_PATH, default=Path("report.html"), show_default=True,
              help="The HTML file to write.")
def report(log_path: str | None, env_file: Path | None, campaign_name: str | None,
           output: Path) -> None:
    """Write a campaign's report: one HTML file to share, that prints on A4.

    Counts by state and by reply, sends and replies per day, and every recipient's fate.
    It needs no network and runs no script.
    """
    settings = load_settings(env_file, log=log_path)
    with open_log(settings.log, create=False) as send_log:
        name = _campaign_in(send_log, campaign_name)
        if name is None:
            known = send_log.campaigns()
            if len(known) != 1:
                raise ConfigError(f"{send_log.location} has {plural(len(known), 'campaign')}"
                                  + (f" ({', '.join(map(repr, known))}): choose one with "
                                     "--campaign" if known else ": nothing to report yet"))
            name = known[0]
        page = render_report(send_log, name, now=time.time())
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {output}: {error.strerror or error}; choose another "
                          "file with --output") from None
    click.echo(shown(f"Wrote the report of campaign {name!r} to {output}."))


@cli.command("print")
@_common
@click.option("-o", "--output", type=_PATH, default=Path("letters.pdf"), show_default=True,
              help="The PDF to write.")
@click.option("--paper", type=click.Choice(["a4", "letter"]), default="a4", show_default=True,
              help="A4 for a DL or C6/5 window envelope (DIN 5008), or US Letter for a #10.")
@click.option("--require-address", is_flag=True,
              help="A row without an address is an error, not left out.")
@click.option("--campaign", "campaign_name", metavar="NAME", callback=_text,
              help="Campaign name in the send log [default: the template's file stem].")
@_log_option
def print_letters(recipients: Path, template: Path, env_file: Path | None,
                  allow_duplicates: bool, where: tuple[str, ...], output: Path,
                  paper: Literal["a4", "letter"], require_address: bool,
                  campaign_name: str | None, log_path: str | None) -> None:
    """Print the letters as one PDF for the post, each on pages of its own.

    Each row's postal address (its address column) sits in an envelope's window. The send
    log records each paper copy; it changes nothing a send does.
    Exit status: 0 printed, 1 problems found (nothing printed), 2 usage or configuration
    error.
    """
    settings = load_settings(env_file, log=log_path)
    if not settings.sender_name or not settings.postal_address:
        raise ConfigError("printed letters carry your name and postal address: set "
                          "MAILER_SENDER_NAME (or MAILER_FROM as 'Your Name <you@example.org>')"
                          " and MAILER_SENDER_ADDRESS (its lines separated by |)")
    campaign = Campaign(settings, recipients, template, name=campaign_name,
                        allow_duplicates=allow_duplicates, where=_where(where))
    with open_log(settings.log) as log:
        printed = print_campaign(campaign, output, log, paper=paper,
                                 require_address=require_address)
    for line, email in printed.without_address:
        click.echo(shown(f"{recipients}:{line}: warning: {email} has no address; left out of "
                         "the print"), err=True)
    if not printed.letters:
        raise InputError([Problem(str(recipients), None, "no row has an address to print; "
                                  "add an address column (its lines separated by |)")])
    click.echo(f"Printed {plural(printed.letters, 'letter')} ({plural(printed.pages, 'page')}) "
               f"into {output}; each paper copy is recorded in {settings.shown_log}.")


@cli.command()
@click.argument("folder", type=_PATH, default=Path("."), required=False)
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)),
              help="Fill .env.example in for this mail provider.")
def init(folder: Path, provider: str | None) -> None:
    """Write a starter campaign into FOLDER (default: here).

    The sample officials, the letter and .env.example; it never overwrites a file.
    """
    for path in starter.init(folder, provider):
        click.echo(f"wrote {path}")
    there = [f"cd {folder}"] if folder != Path(".") else []
    click.echo("Next:\n" + "\n".join(f"  {step}" for step in [
        *there,
        "mailer send --dry-run              # every letter into outbox/, nothing sent",
        "cp .env.example .env               # then your address, name and password in .env",
        "mailer send --to you@example.org   # a test letter to yourself; then: mailer send"]))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1025, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@click.option("--maildir", type=click.Path(path_type=Path, file_okay=False), show_default=True,
              default=Path("sink-maildir"), help="Maildir folder where received letters are "
              "stored.")
def sink(host: str, port: int, maildir: Path) -> None:
    """Run a local SMTP server that keeps every letter (for a practice send).

    Start it in one terminal, then run `mailer send --yes` in another: with no .env, mailer
    sends to localhost:1025. Stop it with Ctrl-C.
    """

    def show(message: Received) -> None:
        click.echo(shown(f"{time.strftime('%H:%M:%S')} {message.mail_from} -> "
                         f"{', '.join(message.rcpt_tos)}  {message.subject!r} "
                         f"({len(message.data)} bytes)", one_line=True))

    try:
        handler = Sink(maildir, show)
    except OSError as error:
        raise ConfigError(f"--maildir {maildir}: {error.strerror or error}; choose a folder "
                          "you can write to") from None
    try:
        controller = start_sink(handler, host, port, data_size_limit=None)  # any size
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                          "choose another --port") from None
    click.echo(f"mailer sink listening on {host}:{controller.port}, storing letters in "
               f"{maildir}/ (Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("Stopped.")
    finally:
        controller.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn MailerError into its message and exit code, never a traceback."""
    try:
        # Without standalone mode, click returns a command's Exit code instead of exiting.
        code = cli.main(args=argv, prog_name="mailer", standalone_mode=False)
    except MailerError as error:
        text = shown(str(error))
        click.echo(f"error: {text}" if "\n" not in text else text, err=True)
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return code if isinstance(code, int) else 0
