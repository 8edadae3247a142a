"""`mailer report`: one campaign as a single HTML file that an organiser can share.

What it guarantees: the file stands alone and does nothing. It loads nothing (no link, image,
font, stylesheet or URL of any kind) and runs nothing (no script, no event attribute; its
Content-Security-Policy forbids both should anything ever slip in). Every value from the log
is text, never markup: addresses, names, subjects and server replies were written by
strangers, so each is HTML-escaped after its control and reordering characters are written as
escapes, as `mailer log` shows them. It prints on A4, the table's header on every page, no
row or chart split across two.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from .campaign import plural
from .display import shown
from .outcome import Status
from .sendlog import CampaignSummary, Entry, SendLog, Worker

# The states as an organiser reads them: what went, what came back, what is left to do.
_STATES = (Status.SENT, Status.BOUNCED, Status.UNKNOWN, Status.DEFERRED, Status.FAILED,
           Status.PENDING, Status.SENDING)
# The letters that went (the server has them, or may have): the reply rate's denominator.
_WENT = (Status.SENT, Status.BOUNCED, Status.UNKNOWN)
# The log's words for a person's reply and an automatic one.
_REPLY_KINDS = ("replied", "auto-replied")
# Past a month, a day-by-day axis is mostly empty days: only the days with any are drawn.
_DAYS_IN_FULL = 31
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Chart geometry in SVG units, CSS pixels at full size: a bar chart fits half a screen, a
# chart per day the text width of A4.
_BARS_WIDTH = 460
_LABEL = 150
_BAR = 220
_ROW = 24
_WIDTH = 700
_PLOT = 110

_CSS = """
@page { size: A4; margin: 14mm 12mm 16mm;
  @bottom-right { content: "page " counter(page) " of " counter(pages);
    font: 8pt system-ui, "DejaVu Sans", sans-serif; color: #555; } }
* { box-sizing: border-box; }
html { color-scheme: light; }
body { margin: 0 auto; padding: 24px; max-width: 1120px; color: #1a1a1a; background: #fff;
  font: 14px/1.45 system-ui, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
h1 { font-size: 1.6em; margin: 0 0 .2em; overflow-wrap: anywhere; }
h2 { font-size: 1.15em; margin: 1.6em 0 .5em; padding-bottom: .2em;
  border-bottom: 1px solid #ccc; }
.made, .note { color: #555; margin: .2em 0; }
.note { font-size: .9em; }
.lead { font-size: 1.1em; }
nav { margin: .8em 0; }
nav a { color: #0b57a4; margin-right: 1em; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr));
  gap: 0 32px; }
figure { margin: 0 0 1.2em; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: 600; margin-bottom: .3em; }
svg.chart { display: block; max-width: 100%; height: auto; font-size: 12px; }
svg text { fill: #1a1a1a; }
svg .label { text-anchor: end; }
svg .day, svg .count { text-anchor: middle; }
svg .axis { stroke: #888; }
svg rect { stroke: #0006; stroke-width: .5; }
.key { display: inline-block; width: .8em; height: .8em; margin-right: .35em;
  border: 1px solid #0006; vertical-align: -.05em; }
.state-sent { fill: #009e73; background: #009e73; }
.state-bounced { fill: #cc79a7; background: #cc79a7; }
.state-unknown { fill: #56b4e9; background: #56b4e9; }
.state-deferred { fill: #e69f00; background: #e69f00; }
.state-failed { fill: #d55e00; background: #d55e00; }
.state-pending { fill: #c8c8c8; background: #c8c8c8; }
.state-sending { fill: #0072b2; background: #0072b2; }
.reply-replied, svg .replied { fill: #0072b2; background: #0072b2; }
.reply-auto-replied, svg .auto-replied { fill: #a6cee3; background: #a6cee3; border-style: dashed; }
svg .reply-auto-replied, svg .auto-replied { stroke: #000; stroke-width: 1; stroke-dasharray: 3 2; }
.reply-none { fill: #e4e4e4; background: #e4e4e4; }
.went { fill: #009e73; }
table.list { width: 100%; border-collapse: collapse; table-layout: fixed; font-size: 12.5px; }
.list th, .list td { text-align: left; vertical-align: top; padding: 3px 6px;
  border-bottom: 1px solid #e3e3e3; overflow-wrap: anywhere; }
.list thead th { position: sticky; top: 0; background: #f0f0f0; border-bottom: 2px solid #999; }
.list tbody tr:nth-child(even) { background: #f8f8f8; }
.list col:nth-child(1) { width: 4.5%; }
.list col:nth-child(2) { width: 21%; }
.list col:nth-child(3) { width: 11%; }
.list col:nth-child(4) { width: 14%; }
.list col:nth-child(5) { width: 23.5%; }
.list col:nth-child(6) { width: 26%; }
.list .state, .list td:nth-child(4) { white-space: nowrap; }
.list td:nth-child(1) { text-align: right; color: #666; }
.list td:nth-child(1), .list td:nth-child(4) { font-variant-numeric: tabular-nums; }
.list td:nth-child(6) { color: #444; font-size: .92em; }
.list small { color: #555; }
footer { margin-top: 2em; padding-top: .5em; border-top: 1px solid #ccc; font-size: .92em; }
footer dt { font-weight: 600; float: left; clear: left; width: 8.5em; }
footer dd { margin: 0 0 .3em 9em; }
@media print {
  body { padding: 0; max-width: none; font-size: 10pt; }
  nav { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table.list { font-size: 7.5pt; }
  .list th, .list td { padding: 2px 4px; }
  .list thead { display: table-header-group; }
  .list thead th { position: static; }
  .list tr { break-inside: avoid; page-break-inside: avoid; }
  footer { break-inside: avoid; page-break-inside: avoid; }
}
"""

# Belt and braces: were anything from the log ever to become markup, the browser would still
# load nothing, run nothing and send no form.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_FOOTER = """<footer id="meaning"><h2>What the numbers mean</h2><dl>
<dt>sent</dt><dd>The recipient's mail server accepted the letter.</dd>
<dt>bounced</dt><dd>A delivery failure notice came back to the sender's mailbox after the
server had accepted the letter (read by <code>mailer inbox</code>); its status and
diagnostic are in the table.</dd>
<dt>unknown</dt><dd>The connection broke while the letter was being handed over: the server
may have it. It is not sent again unless asked.</dd>
<dt>deferred</dt><dd>The server said to try later; the next <code>mailer send</code> tries
again.</dd>
<dt>failed</dt><dd>The server refused the letter for good; its answer is in the table.</dd>
<dt>pending</dt><dd>Not sent yet.</dd>
<dt>sending</dt><dd>Being handed over when this report was made.</dd>
<dt>went</dt><dd>Sent, bounced or unknown: the letters a server has, or may have.</dd>
<dt>replies</dt><dd>Read from the sender's mailbox by <code>mailer inbox</code>.
<em>Replied</em> is a person's answer, <em>auto-replied</em> an automatic one (an
out-of-office note, a ticket number). The reply rate is people's replies over the letters
that went.</dd>
<dt>on paper</dt><dd>Letters printed for the post with <code>mailer print</code>.</dd>
<dt>times</dt><dd>All times and days are UTC.</dd>
</dl></footer>"""


def render_report(log: SendLog, campaign: str, *, now: float) -> str:
    """The whole HTML document reporting `campaign` at Unix time `now`, in one pass over its
    rows (in list order)."""
    summary = log.summary(campaign)
    tally = _Tally()
    for entry in log.entries(campaign, list(Status)):
        tally.add(entry)
    name = _e(campaign)
    made = f"{datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M}"
    if tally.first is not None and tally.last is not None:
        span = f"letters went from {tally.first:%Y-%m-%d %H:%M} to {tally.last:%Y-%m-%d %H:%M}"
    else:
        span = "no letter has gone yet"
    listed = sum(summary.counts.values())
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{name}: campaign report {made[:10]}</title>\n<style>{_CSS}</style>\n",
        f'</head><body>\n<header><h1>Campaign report: {name}</h1>\n',
        f'<p class="made">Made {made} UTC; {span} (UTC).</p>\n',
        f'<p class="lead">{_lead(summary, listed)}</p>\n',
        '<nav><a href="#states">States</a><a href="#replies">Replies</a>'
        '<a href="#per-day">Per day</a><a href="#recipients">Recipients</a>'
        '<a href="#meaning">What the numbers mean</a></nav></header>\n',
        '<section class="charts">\n', _states(summary, listed), _replies(summary, tally),
        '</section>\n', _per_day(tally), _workers(log.workers(campaign)),
        _recipients(tally, listed), _FOOTER,
        "\n</body></html>\n",
    ])


@dataclass
class _Tally:
    """One pass over the entries: the table's rows, the span of sending, counts per day."""

    rows: list[str] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    went: Counter[date] = field(default_factory=Counter)
    replies: dict[str, Counter[date]] = field(
        default_factory=lambda: {kind: Counter() for kind in _REPLY_KINDS})
    # A letter's or reply's time that does not read as one (a stranger's Date header).
    undated: int = 0
    no_reply: int = 0

    def add(self, entry: Entry) -> None:
        self.rows.append(_row(entry))
        if entry.status in _WENT:
            if entry.reply is None:
                self.no_reply += 1
            went = _moment(entry.last_attempt)
            if went is None:
                self.undated += 1
            else:
                self.went[went.date()] += 1
                self.first = min(self.first or went, went)
                self.last = max(self.last or went, went)
        per_day = self.replies.get(entry.reply or "")
        if per_day is not None:
            replied = _moment(entry.reply_at)
            if replied is None:
                self.undated += 1
            else:
                per_day[replied.date()] += 1


def _e(value: object) -> str:
    """A value from the log as HTML text: escaped, on one line, its controls made visible."""
    return html.escape(shown(str(value), one_line=True), quote=True)


def _moment(stored: str | None) -> datetime | None:
    """A stored time in UTC (a time without a zone is UTC); None if it does not read as one."""
    if not stored:
        return None
    try:
        when = datetime.fromisoformat(stored)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _when(stored: str | None, *, day: bool = False) -> str:
    """A stored time as `2026-03-02 14:05` (or its day), or as stored if it is not a time."""
    moment = _moment(stored)
    if moment is None:
        return _e(stored or "")
    return f"{moment:%Y-%m-%d}" if day else f"{moment:%Y-%m-%d %H:%M}"


def _date(day: date, *, year: bool = True) -> str:
    """`2 Mar 2026`, in English whatever the locale, as the rest of the report."""
    return f"{day.day} {_MONTHS[day.month - 1]}" + (f" {day.year}" if year else "")


def _share(part: int, whole: int) -> str:
    if not whole:
        return "–"
    return "<1%" if 0 < part < whole / 200 else f"{part / whole:.0%}"


def _lead(summary: CampaignSummary, listed: int) -> str:
    went = sum(summary.counts.get(s, 0) for s in _WENT)
    text = (f"{listed:,} on the list, {went:,} went; {summary.replied:,} replied "
            f"and {summary.auto_replied:,} auto-replied; "
            f"{summary.counts.get(Status.BOUNCED, 0):,} bounced.")
    if summary.on_paper:
        text += f" {summary.on_paper:,} printed for the post."
    return _e(text)


def _bars(kind: str, rows: Sequence[tuple[str, str, int]], whole: int) -> str:
    """A horizontal bar per (key, label, count), each labelled with its count and share of
    `whole`: readable without its colours."""
    height = len(rows) * _ROW + 8
    said = ", ".join(f"{label} {count:,}" for _, label, count in rows)
    parts = [f'<svg class="chart" viewBox="0 0 {_BARS_WIDTH} {height}" '
             f'width="{_BARS_WIDTH}" height="{height}" role="img" aria-label="{_e(said)}">']
    for number, (key, label, count) in enumerate(rows):
        top = 4 + number * _ROW
        # A reply can come to a letter retried since and failed: no bar outgrows its whole.
        length = _BAR * min(count / whole, 1.0) if whole else 0.0
        words = f"{count:,} ({_share(count, whole)})"
        parts.append(
            f'<g data-{kind}="{_e(key)}" data-count="{count}"><title>{_e(label)}: '
            f'{_e(words)}</title><text class="label" x="{_LABEL - 8}" y="{top + 13}">'
            f'{_e(label)}</text><rect class="{kind}-{_e(key)}" x="{_LABEL}" y="{top}" '
            f'width="{length:.1f}" height="17"/><text x="{_LABEL + length + 6:.1f}" '
            f'y="{top + 13}">{_e(words)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _states(summary: CampaignSummary, listed: int) -> str:
    # A letter is `sending` only while a run hands it over: a row for it only then.
    rows = [(str(s), str(s), summary.counts.get(s, 0)) for s in _STATES
            if s != Status.SENDING or summary.counts.get(s)]
    paper = (f'<p class="note" id="paper">{summary.on_paper:,} of them printed for the post.'
             "</p>" if summary.on_paper else "")
    return (f'<figure id="states"><figcaption>Letters by state (of {listed:,} on the list)'
            f"</figcaption>{_bars('state', rows, listed)}{paper}</figure>\n")


def _replies(summary: CampaignSummary, tally: _Tally) -> str:
    went = sum(summary.counts.get(s, 0) for s in _WENT)
    rows = [("replied", "replied (a person)", summary.replied),
            ("auto-replied", "auto-replied", summary.auto_replied),
            ("none", "no reply yet", tally.no_reply)]
    rate = summary.reply_rate
    shown_rate = "–" if rate is None else f"{rate:.0%}"
    return (f'<figure id="replies"><figcaption>Replies (to the {went:,} letters that went)'
            f"</figcaption>{_bars('reply', rows, went)}"
            f'<p id="reply-rate">Reply rate: <strong>{shown_rate}</strong> '
            f"({summary.replied:,} of the {went:,} letters that went answered by a person)"
            "</p></figure>\n")


def _days(tally: _Tally) -> tuple[list[date], bool]:
    """The days the charts show, and whether days with nothing were left out."""
    active = sorted(set(tally.went).union(*tally.replies.values()))
    if not active or (active[-1] - active[0]).days < _DAYS_IN_FULL:
        count = (active[-1] - active[0]).days + 1 if active else 0
        return [active[0] + timedelta(days=n) for n in range(count)], False
    return active, True


def _columns(days: Sequence[date], series: Sequence[tuple[str, Counter[date]]],
             label: str) -> str:
    """Bars per day, one above the other for several series, each day labelled with its
    counts (joined by +) wherever they fit, and with its date every few bars."""
    totals = [sum(counter[d] for _, counter in series) for d in days]
    scale = _PLOT / max(max(totals, default=0), 1)
    slot = (_WIDTH - 16) / max(len(days), 1)
    width = min(slot * 0.72, 40.0)
    # Dates at least 46 units apart; "12 Mar" is about 40 wide.
    every = math.ceil(46 / slot)
    height = 20 + _PLOT + 32
    parts = [f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
             f'height="{height}" role="img" aria-label="{_e(label)}">',
             f'<line class="axis" x1="8" x2="{_WIDTH - 8}" y1="{20 + _PLOT}" '
             f'y2="{20 + _PLOT}"/>']
    for number, (day, total) in enumerate(zip(days, totals, strict=True)):
        middle = 8 + slot * (number + 0.5)
        counts = [counter[day] for _, counter in series]
        while len(counts) > 1 and not counts[-1]:
            counts.pop()
        words = "+".join(f"{n:,}" for n in counts)
        data = "".join(f' data-{key}="{counter[day]}"' for key, counter in series)
        parts.append(f'<g data-day="{day.isoformat()}"{data}><title>{day.isoformat()}: '
                     f"{_e(words)}</title>")
        bottom = 20.0 + _PLOT
        for key, counter in series:
            if counter[day]:
                tall = counter[day] * scale
                bottom -= tall
                parts.append(f'<rect class="{key}" x="{middle - width / 2:.1f}" '
                             f'y="{bottom:.1f}" width="{width:.1f}" height="{tall:.1f}"/>')
        if total and len(words) * 7 <= slot:
            parts.append(f'<text class="count" x="{middle:.1f}" y="{bottom - 4:.1f}">'
                         f"{words}</text>")
        if number % every == 0:
            parts.append(f'<text class="day" x="{middle:.1f}" y="{20 + _PLOT + 16}">'
                         f"{_date(day, year=False)}</text>")
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _per_day(tally: _Tally) -> str:
    days, gaps = _days(tally)
    if not days:
        return ('<section id="per-day"><h2>Per day</h2><p class="note">Nothing has gone and '
                "no reply has come yet.</p></section>\n")
    notes = [f"{_date(days[0])} to {_date(days[-1])}, UTC days"]
    if gaps:
        notes.append("days with no letter and no reply are left out")
    if tally.undated:
        notes.append(f"{plural(tally.undated, 'letter or reply', 'letters or replies')} "
                     "with no readable time not counted")
    went = _columns(days, [("went", tally.went)], "letters that went per day")
    replies = _columns(days, list(tally.replies.items()), "replies per day, a person's + "
                       "automatic")
    people, automatic = (sum(tally.replies[kind].values()) for kind in _REPLY_KINDS)
    return (
        '<section id="per-day"><h2>Per day</h2>'
        f'<p class="note">{_e("; ".join(notes))}.</p>\n'
        f'<figure id="sent-per-day"><figcaption>Letters that went per day '
        f"({sum(tally.went.values()):,})</figcaption>{went}</figure>\n"
        f'<figure id="replies-per-day"><figcaption>Replies per day: {people:,} '
        f'<span class="key reply-replied"></span>by a person + {automatic:,} '
        f'<span class="key reply-auto-replied"></span>automatic</figcaption>{replies}'
        "</figure>\n</section>\n")


def _row(entry: Entry) -> str:
    """A recipient's row of the table: every value from the log escaped."""
    state = (f'<span class="state"><span class="key state-{_e(entry.status)}"></span>'
             f"{_e(entry.status)}</span>")
    if entry.attempts > 1:
        state += f"<br><small>{entry.attempts} tries</small>"
    if entry.paper_at:
        pages = f", {entry.paper_pages} p." if entry.paper_pages else ""
        state += f"<br><small>printed {_when(entry.paper_at, day=True)}{pages}</small>"
    reply = ""
    if entry.reply:
        reply = f"<b>{_e(entry.reply)}</b> {_when(entry.reply_at)}"
        if entry.reply_from:
            reply += f" from {_e(entry.reply_from)}"
        if entry.reply_subject:
            reply += f"<br>“{_e(entry.reply_subject)}”"
    if entry.bounced_at:
        status, text = entry.bounce_status or "", entry.bounce_text or ""
        # A notice's diagnostic mostly repeats its status: "550 5.1.1 user unknown".
        words = text if status in text else f"{status} {text}"
        server = f"<b>bounced</b> {_when(entry.bounced_at)}: {_e(words.strip())}"
    else:
        server = _e(f"{entry.reply_code or ''} {entry.reply_text or ''}".strip())
    return (f"<tr><td>{entry.line or ''}</td><td>{_e(entry.address)}</td><td>{state}</td>"
            f"<td>{_when(entry.last_attempt)}</td><td>{reply}</td><td>{server}</td></tr>\n")


def _workers(workers: list[Worker]) -> str:
    """The runs that shared the campaign (a shared log only): who sent how many, how fast."""
    if not workers:
        return ""
    rows = "".join(
        f"<tr><td>{w.run_id}</td><td>{_e(w.account)}</td><td>{_e(w.host)} ({w.pid})</td>"
        f"<td>{', '.join(f'{n:,} {_e(s)}' for s, n in sorted(w.counts.items())) or '-'}</td>"
        f"<td>{f'{w.rate_per_minute:,.1f}' if w.rate_per_minute else '-'}</td>"
        f"<td>{_when(w.started)}</td><td>{_when(w.ended) if w.ended else 'running'}"
        f"{f' ({_e(w.outcome)})' if w.outcome else ''}</td></tr>\n" for w in workers)
    return ('<section id="workers"><h2>Workers</h2>\n<table class="list">\n<thead><tr>'
            "<th>Run</th><th>Account</th><th>Machine (pid)</th><th>Letters</th>"
            "<th>Letters/min</th><th>Started (UTC)</th><th>Ended</th></tr></thead>\n<tbody>\n"
            + rows + "</tbody></table></section>\n")


def _recipients(tally: _Tally, listed: int) -> str:
    return (f'<section id="recipients"><h2>Recipients ({listed:,}, in list order)</h2>\n'
            '<table class="list"><colgroup><col><col><col><col><col><col></colgroup>\n'
            "<thead><tr><th>#</th><th>Address</th>"
            "<th>State</th><th>Last try (UTC)</th><th>Reply</th>"
            "<th>Server's answer or bounce</th></tr></thead>\n<tbody>\n"
            + "".join(tally.rows) + "</tbody></table></section>\n")
