"""`mailer report`: the HTML file read back with html.parser, from a real send log."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import listed, make_letters

from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.report import render_report
from mailer.sendlog import SendLog, stamp
from mailer.sqlitelog import SQLiteLog

DAY = 86_400.0
MONDAY = 1_772_442_000.0  # 2026-03-02 09:00 UTC
NOW = MONDAY + 7 * DAY
# Every element the report is made of: anything else came from somewhere it should not.
ELEMENTS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "nav",
            "a", "section", "figure", "figcaption", "svg", "g", "text", "rect",
            "line", "span", "strong", "b", "small", "br", "table", "colgroup", "col", "thead",
            "tbody", "tr", "th", "td", "footer", "dl", "dt", "dd", "code", "em"}
_VOID = {"meta", "br", "col"}


@dataclass
class Node:
    """An element of the parsed document."""

    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find(self, test: Callable[[Node], bool]) -> list[Node]:
        return [node for node in self.walk() if test(node)]

    def by_id(self, name: str) -> Node:
        [node] = self.find(lambda n: n.attrs.get("id") == name)
        return node


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack = [Node("#document", {})]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        # The report is well formed: no value from the log closed or opened an element.
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(document: str) -> Node:
    builder = _Builder()
    builder.feed(document)
    builder.close()
    assert [n.tag for n in builder.stack] == ["#document"]
    return builder.stack[0]


def outcome(letter: Letter, status: Status, when: float, code: int | None = 250,
            reply: str = "2.0.0 Ok: queued") -> Outcome:
    return Outcome.of(letter, status, 1, code=code, reply=reply, first_try=when, last_try=when)


def send(log: SendLog, campaign: str, outcomes: list[Outcome], when: float) -> None:
    """One run that records these outcomes, as `mailer send` does."""
    run = log.begin_run(campaign, {}, "hash")
    log.commit(run, [o.letter.email.casefold() for o in outcomes], outcomes, when)
    log.end_run(run, "completed", {})


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SQLiteLog]:
    with SQLiteLog.open(tmp_path / "log.sqlite3") as opened:
        yield opened


@pytest.fixture
def mixed(log: SQLiteLog) -> SQLiteLog:
    """Campaign "c", twelve letters: five went on Monday, three on Tuesday (one unknown),
    one failed, one deferred, two pending and printed; a bounce, three people's replies and
    an automatic one over the days after."""
    letters = make_letters(12)
    log.register("c", listed(letters), "hash")
    send(log, "c", [outcome(letters[n], Status.SENT, MONDAY + n * 60) for n in range(5)],
         MONDAY)
    tuesday = MONDAY + DAY
    send(log, "c", [outcome(letters[5], Status.SENT, tuesday),
                    outcome(letters[6], Status.SENT, tuesday + 60),
                    outcome(letters[7], Status.UNKNOWN, tuesday + 120, None, "timed out"),
                    outcome(letters[8], Status.FAILED, tuesday + 180, 550, "5.1.1 no such user"),
                    outcome(letters[9], Status.DEFERRED, tuesday + 240, 451, "4.7.1 later")],
         tuesday)
    log.record_bounce("c", letters[3].email, "5.1.1", "550 5.1.1 user unknown", tuesday)
    log.record_reply("c", letters[0].email, False, stamp(tuesday + 3600), "Ann <a@example.org>",
                     "Re: letter 0")
    log.record_reply("c", letters[1].email, True, stamp(tuesday + 60), "robot@example.org",
                     "Out of office")
    log.record_reply("c", letters[5].email, False, stamp(MONDAY + 3 * DAY), "Bo", "Re: 5")
    log.record_reply("c", letters[7].email, False, stamp(MONDAY + 3 * DAY + 60), "Cy", "Thanks")
    log.record_paper("c", [(copy, 2) for copy in listed(letters[10:])], MONDAY)
    return log


def counts(tree: Node, attribute: str) -> dict[str, int]:
    """A chart's bars: what each is of, and the count it carries and shows."""
    found = {}
    for bar in tree.find(lambda n: attribute in n.attrs):
        count = bar.attrs["data-count"]
        assert count is not None
        assert f"{int(count):,}" in bar.text()
        found[str(bar.attrs[attribute])] = int(count)
    return found


def per_day(tree: Node, chart: str, series: str) -> dict[str, int]:
    return {str(bar.attrs["data-day"]): int(bar.attrs[series] or "")
            for bar in tree.by_id(chart).find(lambda n: "data-day" in n.attrs)}


def table_rows(tree: Node) -> list[list[str]]:
    [body] = tree.by_id("recipients").find(lambda n: n.tag == "tbody")
    return [[cell.text() for cell in row.find(lambda n: n.tag == "td")]
            for row in body.find(lambda n: n.tag == "tr")]


def test_the_counts_by_state_and_by_reply_are_the_logs(mixed: SQLiteLog) -> None:
    tree = parse(render_report(mixed, "c", now=NOW))
    summary = mixed.summary("c")
    assert counts(tree, "data-state") == {
        "sent": 6, "bounced": 1, "unknown": 1, "deferred": 1, "failed": 1, "pending": 2}
    assert counts(tree, "data-state") == {str(s): n for s, n in summary.counts.items()}
    assert counts(tree, "data-reply") == {"replied": summary.replied,
                                          "auto-replied": summary.auto_replied, "none": 4}
    assert (summary.replied, summary.auto_replied) == (3, 1)
    assert summary.reply_rate is not None
    assert tree.by_id("reply-rate").text() == \
        f"Reply rate: {summary.reply_rate:.0%} (3 of the 8 letters that went answered by a person)"
    assert "12 on the list, 8 went; 3 replied and 1 auto-replied; 1 bounced." in tree.text()


def test_the_title_names_the_campaign_when_the_report_was_made_and_the_span_of_sending(
        mixed: SQLiteLog) -> None:
    tree = parse(render_report(mixed, "c", now=NOW))
    [title] = tree.find(lambda n: n.tag == "title" and n.attrs == {} and "report" in n.text())
    assert title.text() == "c: campaign report 2026-03-09"
    [heading] = tree.find(lambda n: n.tag == "h1")
    assert heading.text() == "Campaign report: c"
    assert ("Made 2026-03-09 09:00 UTC; letters went from 2026-03-02 09:00 to "
            "2026-03-03 09:02 (UTC).") in tree.text()


def test_the_table_has_a_row_per_recipient_in_list_order(mixed: SQLiteLog) -> None:
    rows = table_rows(parse(render_report(mixed, "c", now=NOW)))
    assert [(row[0], row[1]) for row in rows] == \
        [(str(n + 2), f"person{n}@example.org") for n in range(12)]
    printed = "printed 2026-03-02, 2 p."
    assert [row[2] for row in rows] == [
        "sent", "sent", "sent", "bounced", "sent", "sent", "sent", "unknown", "failed",
        "deferred", f"pending{printed}", f"pending{printed}"]
    assert rows[0][3:] == ["2026-03-02 09:00",
                           "replied 2026-03-03 10:00 from Ann <a@example.org>“Re: letter 0”",
                           "250 2.0.0 Ok: queued"]
    assert rows[1][4] == "auto-replied 2026-03-03 09:01 from robot@example.org“Out of office”"
    assert rows[3][5] == "bounced 2026-03-03 09:00: 550 5.1.1 user unknown"
    assert rows[8][5] == "550 5.1.1 no such user"


def test_the_bars_per_day_add_up_to_the_letters_that_went_and_the_replies(
        mixed: SQLiteLog) -> None:
    tree = parse(render_report(mixed, "c", now=NOW))
    went = per_day(tree, "sent-per-day", "data-went")
    # Every day from the first letter to the last reply, the empty ones too.
    assert went == {"2026-03-02": 5, "2026-03-03": 3, "2026-03-04": 0, "2026-03-05": 0}
    summary = mixed.summary("c")
    assert sum(went.values()) == sum(summary.counts[s] for s in
                                     (Status.SENT, Status.BOUNCED, Status.UNKNOWN))
    people = per_day(tree, "replies-per-day", "data-replied")
    automatic = per_day(tree, "replies-per-day", "data-auto-replied")
    assert people == {"2026-03-02": 0, "2026-03-03": 1, "2026-03-04": 0, "2026-03-05": 2}
    assert sum(people.values()) == summary.replied
    assert sum(automatic.values()) == summary.auto_replied == automatic["2026-03-03"]
    # Each bar says its numbers; a day with a person's and an automatic reply says both.
    [tuesday] = tree.by_id("replies-per-day").find(
        lambda n: n.attrs.get("data-day") == "2026-03-03")
    assert "1+1" in tuesday.text()


def test_a_long_campaign_leaves_out_the_days_with_nothing(log: SQLiteLog) -> None:
    letters = make_letters(3)
    log.register("c", listed(letters), "hash")
    send(log, "c", [outcome(letter, Status.SENT, MONDAY + n * 40 * DAY)
                    for n, letter in enumerate(letters)], MONDAY)
    tree = parse(render_report(log, "c", now=MONDAY + 90 * DAY))
    assert per_day(tree, "sent-per-day", "data-went") == \
        {"2026-03-02": 1, "2026-04-11": 1, "2026-05-21": 1}
    assert "days with no letter and no reply are left out" in tree.by_id("per-day").text()


def test_the_report_loads_nothing_and_runs_nothing(mixed: SQLiteLog) -> None:
    document = render_report(mixed, "c", now=NOW)
    for needle in ("<script", "http://", "https://", "url(", "@import", "javascript:"):
        assert needle not in document.lower()
    tree = parse(document)
    elements = tree.find(lambda n: n.tag != "#document")
    assert {n.tag for n in elements} <= ELEMENTS
    assert not [n for n in elements if any(a.startswith("on") for a in n.attrs)]
    assert not [n for n in elements if "style" in n.attrs]
    ids = {n.attrs["id"] for n in elements if "id" in n.attrs}
    links = [n.attrs.get("href") for n in elements if n.tag == "a"]
    assert links
    assert all(link and link.startswith("#") and link[1:] in ids for link in links)
    [policy] = tree.find(lambda n: n.attrs.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in str(policy.attrs["content"])


def test_it_prints_on_a4_with_the_table_header_on_every_page_and_nothing_split(
        mixed: SQLiteLog) -> None:
    tree = parse(render_report(mixed, "c", now=NOW))
    [style] = tree.find(lambda n: n.tag == "style")
    css = " ".join(style.text().split())
    assert re.search(r"@page \{ size: A4; margin: [^;]+;", css)
    printed = css[css.index("@media print"):]
    assert ".list thead { display: table-header-group; }" in printed
    assert ".list tr { break-inside: avoid; page-break-inside: avoid; }" in printed
    assert "figure { margin: 0 0 1.2em; break-inside: avoid; page-break-inside: avoid; }" in css
    assert len(tree.find(lambda n: n.tag == "figure")) == 4


HOSTILE_NAME = '</title></style><script>alert(1)</script>'
HOSTILE_ADDRESS = '"><img src=x onerror=alert(1)>@evil.example'
HOSTILE_SUBJECT = "Re: hi\r\nBcc: all@example.org \u202egnp.exe\x1b]8;;x\x07"
HOSTILE_FROM = "<script>alert(2)</script> <a@evil.example>"
HOSTILE_SERVER = "</style><style>body{background:red}</style>"
HOSTILE_BOUNCE = "<a href=\"javascript:alert(3)\">550</a>"


def test_hostile_values_are_shown_as_text_and_never_become_markup(log: SQLiteLog) -> None:
    letters = [Letter(2, HOSTILE_ADDRESS, "o@example.org", (HOSTILE_ADDRESS,), "<h@x>", b"x"),
               *make_letters(1, start=1)]
    log.register(HOSTILE_NAME, listed(letters), "hash")
    send(log, HOSTILE_NAME, [outcome(letters[0], Status.SENT, MONDAY, 250, HOSTILE_SERVER),
                             outcome(letters[1], Status.SENT, MONDAY)], MONDAY)
    log.record_reply(HOSTILE_NAME, HOSTILE_ADDRESS, False, stamp(MONDAY + DAY), HOSTILE_FROM,
                     HOSTILE_SUBJECT)
    log.record_bounce(HOSTILE_NAME, letters[1].email, "5.1.1", HOSTILE_BOUNCE, MONDAY + DAY)
    document = render_report(log, HOSTILE_NAME, now=NOW)

    # No terminal or reordering control reaches the file; a line break in a value shows.
    for control in ("\r", "\x1b", "\x07", "\u202e"):
        assert control not in document
    assert "<script" not in document
    tree = parse(document)
    elements = tree.find(lambda n: n.tag != "#document")
    assert {n.tag for n in elements} <= ELEMENTS
    assert not [n for n in elements if any(a.startswith("on") for a in n.attrs)]
    assert not [n for n in elements if "javascript:" in str(n.attrs)]
    assert len(tree.find(lambda n: n.tag == "style")) == 1
    assert [n.attrs["href"] for n in elements if n.tag == "a"] == \
        ["#states", "#replies", "#per-day", "#recipients", "#meaning"]
    # Each value reads back as the same text, its controls written out.
    assert tree.find(lambda n: n.tag == "h1")[0].text() == f"Campaign report: {HOSTILE_NAME}"
    rows = table_rows(tree)
    assert rows[0][1] == HOSTILE_ADDRESS
    assert rows[0][4] == (f"replied 2026-03-03 09:00 from {HOSTILE_FROM}“Re: hi\\r\\nBcc: "
                          "all@example.org \\u202egnp.exe\\x1b]8;;x\\x07”")
    assert rows[0][5] == f"250 {HOSTILE_SERVER}"
    assert rows[1][5] == f"bounced 2026-03-03 09:00: 5.1.1 {HOSTILE_BOUNCE}"


def test_a_campaign_with_nothing_sent_yet_renders(log: SQLiteLog) -> None:
    log.register("c", listed(make_letters(3)), "hash")
    tree = parse(render_report(log, "c", now=NOW))
    assert counts(tree, "data-state") == {"sent": 0, "bounced": 0, "unknown": 0, "deferred": 0,
                                          "failed": 0, "pending": 3}
    assert counts(tree, "data-reply") == {"replied": 0, "auto-replied": 0, "none": 0}
    assert tree.by_id("reply-rate").text().startswith("Reply rate: –")
    assert "no letter has gone yet" in tree.text()
    assert "Nothing has gone and no reply has come yet." in tree.by_id("per-day").text()
    assert [row[2] for row in table_rows(tree)] == ["pending"] * 3


def test_a_campaign_the_log_does_not_know_renders_empty(log: SQLiteLog) -> None:
    tree = parse(render_report(log, "nobody", now=NOW))
    assert set(counts(tree, "data-state").values()) == {0}
    assert table_rows(tree) == []


def test_letters_printed_for_the_post_are_counted_only_if_there_are_any(
        mixed: SQLiteLog, log: SQLiteLog) -> None:
    tree = parse(render_report(mixed, "c", now=NOW))
    assert tree.by_id("paper").text() == "2 of them printed for the post."
    assert "2 printed for the post." in tree.text()
    log.register("other", listed(make_letters(1)), "hash")
    assert not parse(render_report(log, "other", now=NOW)).find(
        lambda n: n.attrs.get("id") == "paper")


def test_a_reply_whose_time_does_not_read_as_one_is_shown_and_left_out_of_the_days(
        log: SQLiteLog) -> None:
    letters = make_letters(2)
    log.register("c", listed(letters), "hash")
    send(log, "c", [outcome(letter, Status.SENT, MONDAY) for letter in letters], MONDAY)
    log.record_reply("c", letters[0].email, False, "Tuesday <b>noon</b>", "a@example.org", "Re")
    log.record_reply("c", letters[1].email, False, "2026-03-03T10:00:00+02:00", "b@example.org",
                     "Re")
    tree = parse(render_report(log, "c", now=NOW))
    rows = table_rows(tree)
    assert rows[0][4] == "replied Tuesday <b>noon</b> from a@example.org“Re”"
    # A time with a zone is given in UTC.
    assert rows[1][4] == "replied 2026-03-03 08:00 from b@example.org“Re”"
    assert per_day(tree, "replies-per-day", "data-replied") == {"2026-03-02": 0,
                                                                "2026-03-03": 1}
    assert "1 letter or reply with no readable time not counted" in \
        tree.by_id("per-day").text()


def test_ten_thousand_recipients_stay_one_plain_table_of_a_few_megabytes(
        log: SQLiteLog) -> None:
    letters = make_letters(10_000)
    log.register("c", listed(letters), "hash")
    send(log, "c", [outcome(letter, Status.SENT, MONDAY + n) for n, letter in
                    enumerate(letters)], MONDAY)
    document = render_report(log, "c", now=NOW)
    assert len(document.encode()) < 3_000_000
    tree = parse(document)
    assert len(tree.find(lambda n: n.tag == "table")) == 1
    assert len(table_rows(tree)) == 10_000
