"""The send log on a real PostgreSQL server (tests/pg.py starts one): what test_sendlog.py
checks of SQLite, and the workers that share a campaign: claims, co-workers found dead, the
first run's list and template."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import listed, make_letters, status_of
from pg import PG_PASSWORD, PG_USER, PgServer, query

from mailer.errors import ConfigError, LeaseLost, LogError
from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.pglog import SCHEMA_VERSION, PostgresLog
from mailer.recorder import Recorder
from mailer.sendlog import Holder, Listed, Run, stamp

DUE = (Status.PENDING, Status.DEFERRED)
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
# No process has this pid: it is above any system's pid_max.
GONE = 2**31 - 1


@pytest.fixture
def log(pg_url: str) -> Iterator[PostgresLog]:
    with PostgresLog.open(pg_url) as opened:
        yield opened


def _worker(url: str, letters: list[Letter], list_sha256: str = "list") -> tuple[
        PostgresLog, Run]:
    """A worker of campaign "c": its own connection, its run, the letters registered."""
    log = PostgresLog.open(url)
    run = log.begin_run("c", {}, "hash", "olive@example.org via smtp", list_sha256)
    log.register("c", listed(letters), "hash")
    return log, run


def _emails(letters: list[Letter]) -> list[str]:
    return [letter.email for letter in letters]


def _silence(url: str, run: Run) -> None:
    """Make `run` look as a worker that stopped two minutes ago does."""
    query(url, "UPDATE runs SET heartbeat = heartbeat - interval '2 minutes' WHERE id = %s",
           run.id)


def test_a_new_log_has_sqlites_tables_plus_claims_and_durable_commits(pg_url: str) -> None:
    log = PostgresLog.open(pg_url)
    # Every commit is on the server's disk before it returns.
    assert log._db.execute("SHOW synchronous_commit").fetchone() == ("on",)
    log.close()
    assert query(pg_url, "SELECT version FROM mailer_schema") == [(SCHEMA_VERSION,)]

    def columns(table: str) -> list[object]:
        return [name for (name,) in query(
            pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position", table)]

    assert columns("letters") == [
        "campaign", "email", "address", "line", "status", "attempts", "first_attempt",
        "last_attempt", "message_id", "reply_code", "reply_text", "message_sha256",
        "template_sha256", "run_id", "bounce_status", "bounce_text", "bounced_at", "reply",
        "reply_at", "reply_from", "reply_subject", "paper_at", "paper_pages", "claimed_by",
        "registered"]
    assert columns("runs") == ["id", "campaign", "started", "ended", "settings",
                               "template_sha256", "outcome", "counts", "host", "pid",
                               "heartbeat", "account", "list_sha256"]
    assert columns("mailbox") == ["folder", "uidvalidity", "last_uid", "read_at"]
    PostgresLog.open(pg_url).close()  # opened again, left as it is


def test_a_database_without_a_log_is_not_made_one_unless_asked(pg_url: str) -> None:
    with pytest.raises(LogError) as caught:
        PostgresLog.open(pg_url, create=False)
    assert str(caught.value) == (f"no send log in {pg_url}; nothing has been sent with this "
                                 "log yet")
    assert query(pg_url, "SELECT to_regclass('letters')") == [(None,)]


def test_a_log_written_by_a_newer_mailer_is_refused_untouched(pg_url: str) -> None:
    PostgresLog.open(pg_url).close()
    query(pg_url, "UPDATE mailer_schema SET version = version + 1")
    with pytest.raises(LogError) as caught:
        PostgresLog.open(pg_url)
    assert str(caught.value) == (f"{pg_url} was written by a newer mailer (schema "
                                 f"{SCHEMA_VERSION + 1}); upgrade mailer to read it")


def test_a_database_holding_another_programs_tables_is_refused(pg_url: str) -> None:
    query(pg_url, "CREATE TABLE letters (id integer)")
    with pytest.raises(LogError, match=r"holds tables of another program \(.*\); give the "
                                       r"send log a database of its own"):
        PostgresLog.open(pg_url)


def test_a_recipient_has_one_row_per_campaign_whatever_the_case(log: PostgresLog,
                                                                 pg_url: str) -> None:
    letters = make_letters(3)
    shouting = listed(letters)[0]._replace(email=letters[0].email.upper(), line=9)
    assert log.register("one", listed(letters), "hash") == 3
    assert log.register("one", [*listed(letters), shouting], "hash") == 0
    assert log.register("two", [shouting, *listed(letters)], "hash") == 3
    assert log.register("two", [], "hash") == 0
    assert query(pg_url, "SELECT campaign, count(*) FROM letters GROUP BY campaign "
                  "ORDER BY campaign") == [("one", 3), ("two", 3)]
    # The first spelling in the list is the one kept.
    assert query(pg_url, "SELECT campaign, address, line FROM letters WHERE email = %s "
                  "ORDER BY campaign", "person0@example.org") == \
        [("one", "person0@example.org", 2), ("two", "PERSON0@EXAMPLE.ORG", 9)]


def test_a_long_list_is_registered_at_once(log: PostgresLog) -> None:
    letters = [Listed(f"p{n}@example.org", n + 2, f"<{n}@x>") for n in range(20_000)]
    assert log.register("c", letters, "hash") == 20_000
    assert log.register("c", letters[::-1], "hash") == 0
    assert log.summary("c").counts == {Status.PENDING: 20_000}


def test_a_mark_is_committed_before_commit_returns(pg_url: str) -> None:
    letters = make_letters(2)
    log, run = _worker(pg_url, letters)
    assert log.claim(run, _emails(letters), DUE) == set(_emails(letters))
    log.commit(run, [letters[0].email], [], T0)
    assert query(pg_url, "SELECT email, status, run_id, claimed_by, first_attempt FROM letters "
                  "ORDER BY line") == [
        ("person0@example.org", "sending", run.id, run.id, "2027-01-15T08:00:00.000+00:00"),
        ("person1@example.org", "pending", None, run.id, None)]
    log.close()


def test_an_outcome_records_tries_times_reply_and_hash(pg_url: str) -> None:
    letters = make_letters(1)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters), DUE)
    log.commit(run, [letters[0].email], [], T0)
    log.commit(run, [], [Outcome.of(letters[0], Status.SENT, 1, code=250,
                                    reply="2.0.0 OK: queued", first_try=T0 - 1,
                                    last_try=T0 + 2)], T0 + 3)
    [entry] = log.entries("c", [Status.SENT])
    assert (entry.status, entry.attempts, entry.first_attempt, entry.last_attempt,
            entry.message_id, entry.reply_code, entry.reply_text) == \
        (Status.SENT, 1, stamp(T0 - 1), stamp(T0 + 2), "<0@example.org>", 250,
         "2.0.0 OK: queued")
    assert query(pg_url, "SELECT message_sha256, template_sha256, run_id FROM letters") == \
        [(hashlib.sha256(letters[0].data).hexdigest(), "hash", run.id)]
    log.close()


# -- workers sharing a campaign -----------------------------------------------------------


def test_workers_of_one_campaign_run_together(pg_url: str) -> None:
    first, one = _worker(pg_url, make_letters(2))
    second, two = _worker(pg_url, make_letters(2))
    assert (two.replaced, one.id != two.id) == (None, True)
    assert query(pg_url, "SELECT id, account, list_sha256, template_sha256, host, pid, "
                  "ended FROM runs ORDER BY id") == [
        (run.id, "olive@example.org via smtp", "list", "hash", socket.gethostname(),
         os.getpid(), None) for run in (one, two)]
    first.close()
    second.close()


def test_two_workers_claiming_at_once_never_share_a_letter_and_take_them_all(
        pg_url: str) -> None:
    letters = make_letters(600)
    emails = _emails(letters)
    workers = [_worker(pg_url, letters) for _ in range(2)]
    together = threading.Barrier(2)
    taken: list[set[str]] = [set(), set()]

    def work(number: int) -> None:
        log, run = workers[number]
        for start in range(0, len(emails), 30):
            together.wait()  # both ask for the same letters at the same moment
            taken[number] |= log.claim(run, emails[start:start + 30], DUE)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken[0].isdisjoint(taken[1])
    assert taken[0] | taken[1] == set(emails)
    held = query(pg_url, "SELECT claimed_by, count(*) FROM letters GROUP BY claimed_by "
                  "ORDER BY claimed_by")
    assert held == [(run.id, len(mine)) for (_, run), mine in zip(workers, taken, strict=True)
                    if mine]
    for log, _ in workers:
        log.close()


def test_a_claim_skips_the_letters_another_worker_is_claiming_instead_of_waiting(
        pg_url: str) -> None:
    letters = make_letters(10)
    emails = _emails(letters)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    second._db.execute("SET lock_timeout = '5s'")  # a wait would fail the claim
    with first.atomic():  # the first claim's transaction is still open
        assert first.claim(one, emails[:5], DUE) == set(emails[:5])
        started = time.monotonic()
        assert second.claim(two, emails, DUE) == set(emails[5:])
        assert time.monotonic() - started < 1
    first.close()
    second.close()


def test_a_claim_takes_due_letters_no_other_live_run_holds(pg_url: str) -> None:
    letters = make_letters(4)
    emails = _emails(letters)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    query(pg_url, "UPDATE letters SET status = 'sent' WHERE email = %s", emails[3])
    assert first.claim(one, emails[:2], DUE) == set(emails[:2])
    assert first.claim(one, [e.upper() for e in emails[:1]], DUE) == {emails[0]}  # still its
    assert second.claim(two, emails, DUE) == {emails[2]}  # the sent one is not due
    assert second.claim(two, emails, [Status.SENT]) == {emails[3]}
    first.end_run(one, "completed", {})
    assert second.claim(two, emails, DUE) == set(emails[:3])  # an ended run holds nothing
    first.close()
    second.close()


def test_a_letter_that_may_have_gone_is_due_again_only_as_it_was_before_the_run(
        pg_url: str) -> None:
    # --resend-unknown: the unknown letter of a run that ended before this one began is this
    # run's to resend; one a co-worker made unknown since is not (it may have just arrived).
    letters = make_letters(2)
    old, before = _worker(pg_url, letters)
    old.claim(before, [letters[0].email], DUE)
    old.commit(before, [letters[0].email], [Outcome.of(letters[0], Status.UNKNOWN, 1)], T0)
    old.end_run(before, "completed", {})
    (mine, run), (other, co_worker) = _worker(pg_url, letters), _worker(pg_url, letters)
    other.claim(co_worker, [letters[1].email], DUE)
    other.commit(co_worker, [letters[1].email], [Outcome.of(letters[1], Status.UNKNOWN, 1)], T0)
    other.end_run(co_worker, "completed", {})
    assert mine.claim(run, _emails(letters), [*DUE, Status.UNKNOWN]) == {letters[0].email}
    for log in (old, mine, other):
        log.close()


def test_a_mark_of_a_letter_the_run_does_not_hold_is_refused_and_marks_nothing(
        pg_url: str) -> None:
    letters = make_letters(2)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    first.claim(one, [letters[0].email], DUE)
    second.claim(two, [letters[1].email], DUE)
    with pytest.raises(LeaseLost) as caught:
        first.commit(one, [letters[0].email, letters[1].email], [], T0)
    assert str(caught.value) == (
        f"send log {pg_url}: run {one.id} was about to send a letter it had not claimed, "
        "and stopped (a fault in mailer: please report it)")
    assert first.statuses("c", _emails(letters)) == {e: Status.PENDING for e in _emails(letters)}
    first.commit(one, [letters[0].email], [], T0)  # the connection is fine
    assert status_of(first, "c", letters[0].email) == Status.SENDING
    first.close()
    second.close()


def test_a_silent_worker_is_ended_by_a_co_workers_commit_and_can_write_nothing_more(
        pg_url: str) -> None:
    letters = make_letters(6)
    emails = _emails(letters)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    first.claim(one, emails[:3], DUE)
    second.claim(two, emails[3:], DUE)
    first.commit(one, emails[:2], [], T0)
    first.commit(one, [], [Outcome(letters[1], Status.SENT, 1, 250, "OK")], T0 + 1)
    second.commit(two, [emails[3]], [], T0 + 1)
    _silence(pg_url, one)  # killed, or asleep: in flight letter 0, and 2 not yet sent

    second.commit(two, [], [Outcome(letters[3], Status.SENT, 1, 250, "OK")], T0 + 70)
    assert first.statuses("c", emails) == dict(zip(emails, [
        Status.UNKNOWN, Status.SENT, Status.PENDING, Status.SENT, Status.PENDING,
        Status.PENDING], strict=True))
    assert query(pg_url, "SELECT email, attempts, claimed_by FROM letters WHERE email = ANY(%s) "
                  "ORDER BY line", emails[:3]) == [(emails[0], 1, None), (emails[1], 1, None),
                                                   (emails[2], 0, None)]
    assert query(pg_url, "SELECT id, outcome, ended IS NOT NULL FROM runs ORDER BY id") == \
        [(one.id, "died", True), (two.id, None, False)]
    assert second.claim(two, emails, DUE) == {emails[2], *emails[4:]}  # given back

    for write in (lambda: first.commit(one, [emails[2]], [], T0 + 71),
                  lambda: first.commit(one, [], [Outcome(letters[0], Status.SENT, 1)], T0 + 71),
                  lambda: first.claim(one, emails, DUE)):
        with pytest.raises(LeaseLost) as caught:
            write()
        assert str(caught.value) == (
            f"send log {pg_url}: this run (run {one.id}) was found silent for over a minute "
            "and ended by another (was the computer asleep, or the network down?); it "
            "stopped sending. Its letters in flight are recorded as unknown, and the others "
            "are left to the other workers")
    assert status_of(second, "c", emails[0]) == Status.UNKNOWN  # its outcome came too late
    first.close()
    second.close()


def test_a_co_worker_heard_of_within_a_minute_is_left_alone(pg_url: str) -> None:
    letters = make_letters(2)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    # Elsewhere: its process cannot be looked at, only its heartbeat.
    query(pg_url, "UPDATE runs SET host = 'elsewhere', pid = 1, heartbeat = heartbeat - "
           "interval '50 seconds' WHERE id = %s", one.id)
    first.claim(one, [letters[0].email], DUE)
    first.commit(one, [letters[0].email], [], T0)
    second.commit(two, [], [], T0)
    with PostgresLog.open(pg_url) as third:
        assert third.begin_run("c", {}, "hash", "", "list").replaced is None
    assert status_of(second, "c", letters[0].email) == Status.SENDING
    first.close()
    second.close()


def test_a_run_whose_process_is_gone_is_replaced_and_its_letters_settled(pg_url: str) -> None:
    letters = make_letters(4)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters), DUE)
    log.commit(run, _emails(letters[:2]),
               [Outcome(letters[1], Status.SENT, 1, 250, "2.0.0 OK")], T0)
    log.commit(run, [letters[2].email], [], T0 + 1)
    log.close()
    query(pg_url, "UPDATE runs SET pid = %s", GONE)  # killed

    log = PostgresLog.open(pg_url)
    second = log.begin_run("c", {}, "hash", "", "list")
    assert second.replaced is not None
    assert (second.replaced.run_id, second.replaced.pid, second.replaced_because,
            second.settled) == (run.id, GONE, "its process is gone", 2)
    assert [status_of(log, "c", letter.email) for letter in letters] == \
        [Status.UNKNOWN, Status.SENT, Status.UNKNOWN, Status.PENDING]
    assert query(pg_url, "SELECT attempts, claimed_by FROM letters ORDER BY line") == \
        [(1, None), (1, None), (1, None), (0, None)]
    assert query(pg_url, "SELECT id, outcome, ended IS NOT NULL FROM runs ORDER BY id") == \
        [(run.id, "died", True), (second.id, None, False)]
    log.close()


def test_a_run_silent_for_a_minute_on_another_machine_is_replaced(pg_url: str) -> None:
    log, run = _worker(pg_url, make_letters(1))
    query(pg_url, "UPDATE runs SET host = 'elsewhere', pid = 1")
    _silence(pg_url, run)
    second = log.begin_run("c", {}, "hash", "", "other list")  # the dead one rules nothing
    assert second.replaced is not None
    assert second.replaced.describe().startswith(f"run {run.id} (pid 1 on elsewhere, started ")
    assert second.replaced_because == "it has not been heard of for 2 minute(s)"
    log.close()


@pytest.mark.parametrize(("list_sha256", "template", "differ", "same"), [
    ("another list", "hash", "the recipient list differs from the one", "recipient list"),
    ("list", "another template", "the template differs from the one", "template"),
    ("another list", "another template",
     "the recipient list and the template differ from the ones", "recipient list and template")])
def test_a_worker_with_another_list_or_template_is_refused_naming_the_run(
        list_sha256: str, template: str, differ: str, same: str, pg_url: str) -> None:
    log, run = _worker(pg_url, make_letters(1))
    with pytest.raises(ConfigError) as caught:
        log.begin_run("c", {}, template, "", list_sha256)
    [(started, heartbeat)] = query(pg_url, "SELECT extract(epoch FROM started)::float, "
                                    "extract(epoch FROM heartbeat)::float FROM runs")
    assert isinstance(started, float)
    assert isinstance(heartbeat, float)
    holder = Holder(run.id, socket.gethostname(), os.getpid(), stamp(started), stamp(heartbeat))
    assert str(caught.value) == (f"{differ} {holder.describe()} is sending for campaign 'c': "
                                 f"give every worker the same {same}")
    assert log.begin_run("d", {}, template, "", list_sha256).replaced is None  # another campaign
    log.end_run(run, "completed", {})
    log.begin_run("c", {}, template, "", list_sha256)  # none live: the new one rules
    with pytest.raises(ConfigError):
        log.begin_run("c", {}, "hash", "", "list")
    log.close()


def test_end_run_gives_back_what_it_holds_and_leaves_nothing_in_flight(pg_url: str) -> None:
    letters = make_letters(3)
    emails = _emails(letters)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    first.claim(one, emails, DUE)
    first.commit(one, [emails[0]], [], T0)  # its outcome could not be recorded
    first.end_run(one, "failed: the log", {"sent": 0})
    assert first.statuses("c", emails) == {emails[0]: Status.UNKNOWN,
                                           emails[1]: Status.PENDING, emails[2]: Status.PENDING}
    assert query(pg_url, "SELECT outcome, counts FROM runs WHERE id = %s", one.id) == \
        [("failed: the log", {"sent": 0})]
    assert second.claim(two, emails, DUE) == set(emails[1:])
    first.end_run(one, "again", {})  # ended once
    assert query(pg_url, "SELECT outcome FROM runs WHERE id = %s", one.id) == \
        [("failed: the log",)]
    first.close()
    second.close()


def test_workers_lists_each_runs_letters_and_pace(pg_url: str) -> None:
    letters = make_letters(6)
    (first, one), (second, two) = _worker(pg_url, letters), _worker(pg_url, letters)
    first.claim(one, _emails(letters[:3]), DUE)
    second.claim(two, _emails(letters[3:]), DUE)
    for n, letter in enumerate(letters[:3]):  # one every 30 s: 2 a minute
        first.commit(one, [letter.email], [], T0 + 30 * n)
        first.commit(one, [], [Outcome(letter, Status.SENT, 1, 250, "OK",
                                       last_try=T0 + 30 * n)], T0 + 30 * n)
    second.commit(two, _emails(letters[3:5]), [
        Outcome(letters[3], Status.SENT, 1, 250, "OK"),
        Outcome(letters[4], Status.FAILED, 1, 550, "no such user")], T0)
    second.end_run(two, "completed", {})
    found = first.workers("c")
    assert [(w.run_id, w.host, w.pid, w.account, w.ended is None, w.outcome, w.counts,
             w.rate_per_minute) for w in found] == [
        (one.id, socket.gethostname(), os.getpid(), "olive@example.org via smtp", True, None,
         {Status.SENT: 3}, 2.0),
        (two.id, socket.gethostname(), os.getpid(), "olive@example.org via smtp", False,
         "completed", {Status.SENT: 1, Status.FAILED: 1}, None)]
    heartbeat, ended = found[0].heartbeat, found[1].ended
    assert heartbeat is not None
    assert ended is not None
    assert found[0].started <= heartbeat
    assert found[1].started <= ended
    assert first.workers("nobody") == []
    first.close()
    second.close()


# -- the Protocol's other methods ---------------------------------------------------------


def test_a_transaction_that_raises_registers_nobody(log: PostgresLog) -> None:
    def register_then_fail(start: int) -> None:
        with log.atomic():
            log.register("c", listed(make_letters(2, start=start)), "hash")
            with log.atomic():
                log.register("c", listed(make_letters(2, start=start + 2)), "hash")
            raise ValueError("a problem")

    with pytest.raises(ValueError, match="a problem"):
        register_then_fail(0)
    assert log.campaigns() == []
    with log.atomic():
        log.register("c", listed(make_letters(1, start=10)), "hash")
        with pytest.raises(ValueError, match="a problem"):
            register_then_fail(0)  # inside another: a savepoint, undone alone
    assert log.summary("c").counts == {Status.PENDING: 1}


def test_the_review_reads_what_the_runs_recorded(pg_url: str) -> None:
    letters = make_letters(4)
    log, run = _worker(pg_url, letters)
    log.register("b", listed(letters[:1]), "hash")
    log.claim(run, _emails(letters), DUE)
    log.commit(run, _emails(letters[:3]), [], T0)
    log.commit(run, [], [Outcome(letters[0], Status.SENT, 1, 250, "OK", last_try=T0 + 60),
                         Outcome(letters[1], Status.SENT, 1, 250, "OK", last_try=T0 + 120),
                         Outcome(letters[2], Status.DEFERRED, 1, 451, "later")], T0 + 130)
    assert log.campaigns() == ["c", "b"]  # in the order they were registered
    summary = log.summary("c")
    assert (summary.counts, summary.first_sent, summary.last_sent, summary.rate_per_minute) == (
        {Status.SENT: 2, Status.DEFERRED: 1, Status.PENDING: 1}, stamp(T0 + 60),
        stamp(T0 + 120), 1.0)
    assert [(e.address, e.status, e.line, e.reply_code, e.first_attempt, e.last_attempt)
            for e in log.entries("c", [Status.DEFERRED, Status.PENDING])] == [
        ("person2@example.org", Status.DEFERRED, 4, 451, stamp(T0), stamp(T0 + 130)),
        ("person3@example.org", Status.PENDING, 5, None, None, None)]
    assert log.first_sent() == log.first_sent("c") == stamp(T0)
    assert log.first_sent("b") is None
    assert log.sent_since("olive@example.org via smtp", T0 + 100) == [T0 + 120]
    assert log.sent_since("someone else", 0) == []
    assert log.statuses("c", ["PERSON0@example.org", "nobody@example.org"]) == \
        {"person0@example.org": Status.SENT}
    log.ensure_room(1_000_000)
    log.close()


def test_what_came_back_to_the_mailbox_is_recorded(pg_url: str) -> None:
    letters = make_letters(3)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters), DUE)
    log.commit(run, _emails(letters[:2]), [Outcome(letters[0], Status.SENT, 1, 250, "OK"),
                                          Outcome(letters[1], Status.SENT, 1, 250, "OK")], T0)
    assert log.find(["<0@example.org>", "<2@example.org>", "<x@y>"]) == \
        {"<0@example.org>": ("c", "person0@example.org")}  # 2 never went
    assert log.sent_to("Person0@example.org", T0 + 1) == ["c"]
    assert log.sent_to("person0@example.org", T0 - 1) == []
    assert log.record_bounce("c", "person0@example.org", "5.1.1", "no such user", T0 + 5)
    assert not log.record_bounce("c", "person0@example.org", "5.1.1", "again", T0 + 6)
    assert not log.record_bounce("c", "person2@example.org", "5.1.1", "never went", T0 + 6)
    assert log.record_reply("c", "person1@example.org", True, "2027-01-15T09:00:00+00:00",
                            "robot@example.org", "Out of office")
    assert log.record_reply("c", "person1@example.org", False, "2027-01-15T10:00:00+00:00",
                            "person1@example.org", "Re: letter")
    assert not log.record_reply("c", "person1@example.org", True, "2027-01-16T09:00:00+00:00",
                                "robot@example.org", "Out of office")
    log.record_paper("c", [(listed(letters)[2], 2), (Listed("new@example.org", 9, "<n@x>"), 1)],
                     T0 + 7)
    by_address = {e.address: e for e in log.entries("c", list(Status))}
    bounced, replied, paper = (by_address[f"person{n}@example.org"] for n in range(3))
    assert (bounced.status, bounced.bounce_status, bounced.bounce_text, bounced.bounced_at) == \
        (Status.BOUNCED, "5.1.1", "no such user", stamp(T0 + 5))
    assert (replied.reply, replied.reply_at, replied.reply_from, replied.reply_subject) == \
        ("replied", "2027-01-15T10:00:00+00:00", "person1@example.org", "Re: letter")
    assert (paper.paper_at, paper.paper_pages, by_address["new@example.org"].paper_pages) == \
        (stamp(T0 + 7), 2, 1)
    summary = log.summary("c")
    assert (summary.on_paper, summary.replied, summary.auto_replied) == (2, 1, 0)
    assert log.mailbox_mark("INBOX") is None
    log.set_mailbox_mark("INBOX", 3_000_000_000, 17, T0)
    log.set_mailbox_mark("INBOX", 3_000_000_000, 42, T0 + 1)
    assert log.mailbox_mark("INBOX") == (3_000_000_000, 42)
    log.close()


def test_a_run_records_through_the_recorder(pg_url: str) -> None:
    letters = make_letters(3)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters[:2]), DUE)

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            for letter in letters[:2]:
                await recorder.sending(letter)
                recorder.record(Outcome(letter, Status.SENT, 1, 250, "OK"))
            with pytest.raises(LeaseLost, match="had not claimed"):
                await recorder.sending(letters[2])

    asyncio.run(main())
    assert [status_of(log, "c", letter.email) for letter in letters] == \
        [Status.SENT, Status.SENT, Status.PENDING]
    log.close()


def test_a_commit_that_fails_in_an_unforeseen_way_fails_the_marks_instead_of_hanging(
        pg_url: str) -> None:
    letters = make_letters(2)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters), DUE)
    unwritable = Outcome(letters[0], Status.SENT, 1, 250, "Gr\udcfc\udcdfe")  # lone surrogates

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            recorder.record(unwritable)
            await asyncio.sleep(Recorder.LINGER * 2)
            with pytest.raises(LogError, match="cannot record: 'utf-8' codec"):
                await asyncio.wait_for(recorder.sending(letters[1]), 5)

    asyncio.run(main())
    log.commit(run, [letters[1].email], [], T0)  # the connection was left usable
    assert status_of(log, "c", letters[1].email) == Status.SENDING
    log.close()


def test_a_letter_whose_outcome_could_not_be_written_ends_unknown(pg_url: str) -> None:
    letters = make_letters(2)
    log, run = _worker(pg_url, letters)
    log.claim(run, _emails(letters), DUE)
    query(pg_url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
           "$$BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END$$")
    query(pg_url, "CREATE TRIGGER no_outcome BEFORE UPDATE ON letters FOR EACH ROW "
           "WHEN (NEW.status = 'sent') EXECUTE FUNCTION refuse()")

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            await recorder.sending(letters[0])
            recorder.record(Outcome(letters[0], Status.SENT, 1, 250, "2.0.0 OK: queued"))
            await asyncio.sleep(Recorder.LINGER * 2)
            with pytest.raises(LogError, match="No space left on device"):
                await recorder.sending(letters[1])  # nothing more may go

    asyncio.run(main())
    log.end_run(run, "failed", {})
    # The server has it, the log could not say so: in doubt, not due again.
    assert query(pg_url, "SELECT status, attempts FROM letters ORDER BY line") == \
        [("unknown", 1), ("pending", 0)]
    log.close()


# -- what the user reads when the server says no ------------------------------------------


def test_a_wrong_password_is_refused_without_showing_it(pg_server: PgServer,
                                                        pg_url: str) -> None:
    url = pg_server.url(pg_url.rpartition("/")[2], PG_USER, "wrong horse")
    with pytest.raises(LogError) as caught:
        PostgresLog.open(url)
    shown = pg_server.url(pg_url.rpartition("/")[2], PG_USER)
    assert str(caught.value) == (
        f"the PostgreSQL server of the send log {shown} refused its user (password "
        f'authentication failed for user "{PG_USER}"); check the user name and password in the '
        "log's URL")


def test_a_missing_database_is_named_without_the_password(pg_server: PgServer) -> None:
    with pytest.raises(LogError) as caught:
        PostgresLog.open(pg_server.url("campaigns", PG_USER, PG_PASSWORD))
    assert str(caught.value) == (
        f"the PostgreSQL server of the send log {pg_server.url('campaigns', PG_USER)} has no "
        "database 'campaigns'; create it (createdb campaigns), or correct the log's URL")


def test_a_server_that_is_not_there_is_named_without_the_password() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(LogError) as caught:
            PostgresLog.open(f"postgresql://olive:s3cret@127.0.0.1:{port}/log")
    assert str(caught.value) == (
        f"cannot reach the PostgreSQL server of the send log postgresql://olive@127.0.0.1:{port}"
        "/log (Connection refused); check that it is running and that the host and port in "
        "the log's URL are right")


@pytest.mark.parametrize("url", ["postgresql://olive:my secret@127.0.0.1/log",
                                 "postgresql://olive:my%20secret@[::1/log",
                                 "postgresql://olive@127.0.0.1/log?password=my secret",
                                 "postgresql://olive@127.0.0.1/log?sslpassword=my%20secret&x=1",
                                 "mysql://olive:my secret@127.0.0.1/log"])
def test_a_url_that_psycopg_cannot_read_is_a_setting_to_fix_without_the_password(
        url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresLog.open(url)
    assert "secret" not in str(caught.value)
    assert "is not a PostgreSQL URL: write it as postgresql://user:password@host:port/" \
        "database" in str(caught.value)


def test_a_user_who_may_not_make_the_tables_is_told_what_to_ask_for(pg_server: PgServer,
                                                                     pg_url: str) -> None:
    url = pg_server.url(pg_url.rpartition("/")[2], PG_USER, PG_PASSWORD)
    with pytest.raises(LogError) as caught:
        PostgresLog.open(url)
    message = str(caught.value)
    assert PG_PASSWORD not in message
    assert message == (f"send log {pg_server.url(pg_url.rpartition('/')[2], PG_USER)}: the user "
                       f"'{PG_USER}' lacks a permission there (permission denied for schema "
                       "public); ask the database's owner to grant it (a new log needs GRANT "
                       f"CREATE ON SCHEMA public TO {PG_USER})")


def test_a_lost_connection_is_a_log_error(pg_url: str) -> None:
    log = PostgresLog.open(pg_url)
    query(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(LogError) as caught:
        log.statuses("c", ["ada@example.org"])
    assert str(caught.value).startswith(f"lost the connection to the send log at {pg_url} (")
    assert str(caught.value).endswith("); check that the server is up and reachable, then run "
                                      "mailer send again: it carries on where this run stopped")
    with pytest.raises(LogError, match="lost the connection"):
        log.campaigns()
    log.close()
