"""Real `mailer send` processes killed, interrupted, or given a log they cannot write.

A SIGKILL can land anywhere: while letters are built or registered, before a letter's mark,
between its mark and its DATA, while the server holds it and has not answered, after the
reply and before the outcome's commit. Whatever the moment, the log must know enough that a
resume neither loses a letter nor sends one twice without saying so (`unknown`). The
randomness is seeded; the seed is printed and can be set with MAILER_CRASH_SEED to replay a
failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result, Server
from servers import RecordingHandler

from mailer.outcome import Status
from mailer.sink import Received
from mailer.sqlitelog import SQLiteLog

Run = Callable[..., Result]

SEED = int(os.environ.get("MAILER_CRASH_SEED") or time.time_ns() % 1_000_000_007)
# Enough that no kill comes after its run has sent them all: at RATE, a "start" kill costs
# at most about 85 letters, the others at most 30 each.
LETTERS = 360
RATE = "150/s"
LOG = "mailer-log.sqlite3"
READ_ONLY_HINT = "; the file or its folder is read-only; make it writable, then run again\n"
FULL_HINT = "; the disk is full; free some space, then run again\n"


@pytest.fixture
def campaign(smtp_server: Server, files: CampaignFiles,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """LETTERS recipients; the environment points `mailer` (in-process or not) at the server."""
    rows = [f"person{n}@{('example.org', 'example.net', 'example.com')[n % 3]},"
            f"{('Dr', 'Ms', 'Mr')[n % 3]},Person {n},{('UK', 'FR', 'DE')[n % 3]}"
            for n in range(LETTERS)]
    files.write_csv("email,title,name,country\n" + "\n".join(rows) + "\n")
    for key, value in {**smtp_server.env(), "MAILER_LOG": LOG,
                       "MAILER_CONCURRENCY": "4"}.items():
        monkeypatch.setenv(key, value)
    yield smtp_server
    smtp_server.handler.on_message = None


def _all_addresses(files: CampaignFiles) -> set[str]:
    lines = files.recipients.read_text(encoding="utf-8").splitlines()[1:]
    return {line.split(",")[0] for line in lines}


def _start_send(root: Path, *extra: str, rate: str = RATE,
                connections: str = "4") -> subprocess.Popen[str]:
    env = {**os.environ, "MAILER_RATE": rate, "MAILER_CONCURRENCY": connections}
    return subprocess.Popen([sys.executable, "-m", "mailer", "send", "--yes", *extra],
                            cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _statuses(root: Path) -> dict[str, str]:
    """address -> status, as `mailer log` reads them (none if a kill came before the log's
    tables were made)."""
    if not (root / LOG).exists():
        return {}
    db = sqlite3.connect(root / LOG)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'letters'").fetchone():
            return {}
    finally:
        db.close()
    log = SQLiteLog.open(root / LOG, create=False)
    try:
        return {entry.address: entry.status for campaign in log.campaigns()
                for entry in log.entries(campaign, Status)}
    finally:
        log.close()


def _invariants_after_a_stop(root: Path, counts: Counter[str], note: str) -> dict[str, str]:
    """What any stopped run must leave: every letter the server has is `sent`, `sending`
    (in flight when the process died) or `unknown` (in flight in an earlier one), and every
    letter the log calls `sent` is on the server. Returns the log's statuses."""
    statuses = _statuses(root)
    wrong = {a: statuses.get(a) for a in counts
             if statuses.get(a) not in ("sent", "sending", "unknown")}
    assert wrong == {}, note
    assert {a for a, s in statuses.items() if s == "sent"} <= set(counts), note
    return statuses


# How each kill is timed, and what the letter it hits may be left as. "start": a random time
# after the process started (importing, building, registering, settling the last run,
# connecting). The others act on the run's k-th letter, from inside the server: "mail" on its
# MAIL command (its mark begins then, alongside: on disk or not yet), "data" on its DATA
# command (marked, the letter not yet sent), "held" once the server has the letter and has not
# answered, "replied" 5 ms after the reply (sent one at a time at 5/s, so no other letter's
# mark carries its outcome).
KILLS = ["start", "mail", "data", "held", "replied", "start", "mail", "data", "held",
         "replied"]
LEFT_AS = {"mail": {"pending", "sending"}, "data": {"sending"}, "held": {"sending"},
           "replied": {"sending"}}


def _arm(handler: RecordingHandler, mode: str, at: int, process: subprocess.Popen[str]
         ) -> Callable[[], str | None]:
    """Make the server kill `process` on the run's `at`-th letter, as `mode` says; return
    what tells the letter it hit."""
    hit: list[str] = []

    def kill(address: str) -> None:
        hit.append(address.lower())
        if mode == "replied":  # the reply goes out as this returns
            asyncio.get_running_loop().call_later(0.005, os.kill, process.pid, signal.SIGKILL)
        else:
            os.kill(process.pid, signal.SIGKILL)

    messages = len(handler.messages)
    mails: list[str] = []
    datas: list[str] = []

    def on_mail(address: str) -> None:
        mails.append(address)
        if mode == "mail" and len(mails) == at:
            kill("")  # whose MAIL it was is worked out after (one connection: list order)

    def on_data_command(address: str) -> None:
        datas.append(address)
        if mode == "data" and len(datas) == at:
            kill(address)

    def on_message(message: Received) -> None:
        if mode in ("held", "replied") and len(handler.messages) - messages == at:
            kill(message.rcpt_tos[0])

    handler.on_mail, handler.on_data_command, handler.on_message = \
        on_mail, on_data_command, on_message
    return lambda: hit[0] if hit else None


def _next_due(files: CampaignFiles, before: dict[str, str], arrived: list[Received]) -> str:
    """The letter a one-connection run was at: in list order, the first after the last that
    arrived in the run (from the top if none did) that was due before it."""
    order = [line.split(",")[0] for line in
             files.recipients.read_text(encoding="utf-8").splitlines()[1:]]
    start = order.index(arrived[-1].rcpt_tos[0]) + 1 if arrived else 0
    return next(a for a in order[start:] if before.get(a, "pending") in ("pending", "deferred"))


def _disarm(handler: RecordingHandler) -> None:
    handler.on_mail = handler.on_rcpt = handler.on_data_command = handler.on_message = None


def test_a_send_killed_at_any_point_of_a_letters_life_loses_and_silently_repeats_nothing(
        campaign: Server, files: CampaignFiles, run: Run,
        capsys: pytest.CaptureFixture[str]) -> None:
    handler = campaign.handler
    rng = random.Random(SEED)
    for number, mode in enumerate(KILLS, start=1):
        base = len(handler.messages)
        slow = mode == "replied"
        before = _statuses(files.root)
        process = _start_send(files.root, rate="5/s" if slow else RATE,
                              connections="1" if mode in ("replied", "mail") else "4")
        hit: Callable[[], str | None] = lambda: None  # noqa: E731
        if mode == "start":
            delay = rng.uniform(0.1, 0.9)
            killed_at = f"{delay:.3f}s after start"
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        else:
            at = rng.randint(1, 5 if slow else 30)
            killed_at = f"at letter {at} of the run"
            hit = _arm(handler, mode, at, process)
        try:
            process.communicate(timeout=30)
        finally:
            _disarm(handler)
        note = f"seed {SEED}, kill {number} ({mode}): {killed_at}"
        with capsys.disabled():
            print(f"\n{note}; {len(handler.messages) - base} letters arrived in that run")
        assert process.returncode == -signal.SIGKILL, note
        counts = handler.by_recipient()
        statuses = _invariants_after_a_stop(files.root, counts, note)
        assert len(counts) < LETTERS, note
        assert max(counts.values(), default=1) == 1, note  # nothing unknown was resent
        address = hit()
        if mode == "mail":
            address = _next_due(files, before, handler.messages[base:])
        if mode != "start":
            assert address, note
            assert statuses[address] in LEFT_AS[mode], (note, address)
            assert (address in counts) == (mode in ("held", "replied")), (note, address)

    unknown = _resume_to_the_end(handler, files, run, f"seed {SEED}")
    with capsys.disabled():
        print(f"\nseed {SEED}: {len(unknown)} unknown after the kills, "
              f"{sum(n > 1 for n in handler.by_recipient().values())} of them had arrived "
              "before they were resent")


def _resume_to_the_end(handler: RecordingHandler, files: CampaignFiles, run: Run,
                       note: str) -> set[str]:
    """Resume a stopped campaign in-process, as a user would, checking every step; return the
    addresses the log called unknown."""
    # A plain resume makes what the last kill left `sending` unknown, then sends the rest:
    # it lists, but does not resend, every letter that may have arrived.
    before = _statuses(files.root)
    in_flight = {a for a, s in before.items() if s in ("sending", "unknown")}
    arrived_unrecorded = set(handler.by_recipient()) - {a for a, s in before.items()
                                                         if s == "sent"}
    result = run("send", "--yes")
    assert result.code == 0, (note, result.out, result.err)
    assert max(handler.by_recipient().values()) == 1, note
    listed = run("log", "--status", "unknown", "--format", "json")
    unknown = {entry["address"] for entry in json.loads(listed.out)}
    assert arrived_unrecorded <= unknown <= in_flight, note

    # Resending those: a second copy only ever goes to an address the log called unknown.
    result = run("send", "--yes", "--resend-unknown")
    assert result.code == 0, (note, result.out, result.err)
    counts = handler.by_recipient()
    assert {a for a, n in counts.items() if n > 1} <= unknown, note
    final = _statuses(files.root)
    assert {a: final.get(a) for a in _all_addresses(files) - set(counts)} == {}, note
    assert sum(1 for s in final.values() if s == "sent") == len(counts) == LETTERS, note
    return unknown


@pytest.mark.parametrize(("connections", "rate"),
                         [("4", RATE), ("1", "0")])
def test_ctrl_c_stops_cleanly_and_a_rerun_sends_each_letter_exactly_once(
        connections: str, rate: str, campaign: Server, files: CampaignFiles, run: Run,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_CONCURRENCY", connections)
    handler = campaign.handler
    rng = random.Random(f"{SEED}:ctrl-c:{connections}")
    for number in range(1, 4):
        base = len(handler.messages)
        at = base + rng.randint(1, 40)
        note = (f"seed {SEED}, {connections} connection(s) at rate {rate}, stop {number}: "
                f"SIGINT on receiving letter {at - base} of the run")
        with capsys.disabled():
            print(f"\n{note}")
        process = _start_send(files.root, rate=rate)

        def interrupt(message: Received, at: int = at,
                      process: subprocess.Popen[str] = process) -> None:
            if len(handler.messages) == at:
                os.kill(process.pid, signal.SIGINT)

        handler.on_message = interrupt
        try:
            # A stop lets the letters in flight finish: well under a second here.
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"{note}: still running 10 s after SIGINT\n{out[-300:]}{err}")
        finally:
            handler.on_message = None
        assert process.returncode == 130, (note, out, err)
        assert "Traceback" not in err, note
        stopped = re.findall(r"^Stopped: (\d+) sent in \d+\.\ds \(\d+\.\d letters/s\)\.$",
                             out, re.M)
        assert len(stopped) == 1, (note, out)
        assert out.endswith("Run mailer send again to continue where it stopped.\n"), note
        # The letters in flight finished: summary, server and log agree, and none is unknown.
        statuses = Counter(_invariants_after_a_stop(files.root, handler.by_recipient(),
                                                    note).values())
        assert int(stopped[0]) == len(handler.messages) - base, (note, out)
        assert statuses["sent"] == len(handler.messages) < LETTERS, note
        assert set(statuses) == {"sent", "pending"}, note

    note = f"seed {SEED}"
    result = run("send", "--yes")
    assert result.code == 0, (note, result.out, result.err)
    assert handler.by_recipient() == dict.fromkeys(_all_addresses(files), 1), note
    assert set(_statuses(files.root).values()) == {"sent"}, note


@pytest.mark.parametrize(("stage", "left_as"), [("data", "unknown"), ("mail", "deferred")])
def test_a_second_ctrl_c_stops_at_once_and_the_letter_cut_off_is_unknown_once_it_went(
        stage: str, left_as: str, campaign: Server, files: CampaignFiles,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut off in its DATA, a letter may be with the server; cut off before (its mark on disk
    while MAIL waits for an answer), it is not, and stays due."""
    monkeypatch.setenv("MAILER_TIMEOUT", "30")  # the stop, not a timeout, must end it
    handler, faults = campaign.handler, campaign.handler.faults
    if stage == "data":
        faults.slow_data, faults.slow_data_times = 20.0, 1  # it never answers
    else:
        faults.slow_mail, faults.slow_mail_times = 20.0, 1
    process = _start_send(files.root, connections="1")
    held: list[str] = []

    def interrupt_twice(address: str) -> None:
        held.append(address)
        os.kill(process.pid, signal.SIGINT)
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGINT)

    if stage == "data":
        handler.on_message = lambda message: interrupt_twice(message.rcpt_tos[0])
    else:
        first = files.recipients.read_text(encoding="utf-8").splitlines()[1].split(",")[0]
        handler.on_mail = lambda _sender: interrupt_twice(first)
    try:
        out, err = process.communicate(timeout=10)  # not the 20 s the server would take
    finally:
        handler.on_message = handler.on_mail = None
    assert process.returncode == 130, (out, err)
    assert err.endswith("Stopped at once: letters that were in flight are recorded as "
                        "unknown (mailer log --status unknown).\n"), err
    assert "Traceback" not in err
    statuses = _statuses(files.root)
    assert statuses[held[0]] == left_as
    assert set(statuses.values()) == {left_as, "pending"}
    if stage == "mail":
        assert handler.messages == []


@pytest.mark.parametrize("name", ["symlink", "absolute path", "dot-dot"])
def test_a_second_send_by_another_name_of_the_log_is_refused_while_the_first_runs(
        name: str, campaign: Server, files: CampaignFiles) -> None:
    first = _start_send(files.root, rate="100/s")
    other = {"symlink": "link.sqlite3", "absolute path": str(files.root / LOG),
             "dot-dot": f"templates/../{LOG}"}[name]
    if name == "symlink":
        (files.root / other).symlink_to(files.root / LOG)
    try:
        deadline = time.monotonic() + 20
        while not campaign.handler.messages and time.monotonic() < deadline:
            time.sleep(0.01)
        second = subprocess.run([*SEND, "--log", other], cwd=files.root, capture_output=True,
                                text=True, timeout=30, check=False)
    finally:
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, (out, err)
    assert second.returncode == 2, second
    assert second.stderr.startswith(f"error: another mailer send is using {other}: run 1 "
                                    f"(pid {first.pid} on "), second.stderr
    assert second.stdout == ""
    assert campaign.handler.by_recipient() == dict.fromkeys(_all_addresses(files), 1)


# -- a log that cannot be written ---------------------------------------------------------


def _unshare(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `sh -c script` in a private user and mount namespace (its mounts die with it)."""
    assert shutil.which("unshare"), "these tests need util-linux unshare"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], cwd=cwd,
                          env={**os.environ}, capture_output=True, text=True, timeout=60,
                          check=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def two_letter_log(smtp_server: Server, files: CampaignFiles, run: Run,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """A log in logs/ with one of the two letters sent: the campaign is half done."""
    for key, value in {**smtp_server.env(), "MAILER_LOG": "logs/log.sqlite3"}.items():
        monkeypatch.setenv(key, value)
    assert run("send", "--yes", "--limit", "1").code == 0
    assert len(smtp_server.handler.messages) == 1
    return files.root / "logs" / "log.sqlite3"


SEND = [sys.executable, "-m", "mailer", "send", "--yes"]


def _read_only(paths: list[Path], files: CampaignFiles) -> subprocess.CompletedProcess[str]:
    """`mailer send --yes` with `paths` read-only: by their modes, and (since root writes
    through modes) by read-only bind mounts of them in a private mount namespace."""
    modes = {path: path.stat().st_mode for path in paths}
    try:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        if os.geteuid() != 0:
            return subprocess.run(SEND, cwd=files.root, capture_output=True, text=True,
                                  timeout=60, check=False)
        script = ('for p in "$@"; do mount --bind "$p" "$p" && mount -o remount,ro,bind "$p" '
                  '"$p" || exit 99; done; exec ' + " ".join(SEND))
        return _unshare(script, *(str(p) for p in paths), cwd=files.root)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_a_read_only_log_and_folder_stop_the_send_before_any_letter(
        two_letter_log: Path, smtp_server: Server, files: CampaignFiles, run: Run) -> None:
    before = _digest(two_letter_log)
    result = _read_only([two_letter_log, two_letter_log.parent], files)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: send log logs/log.sqlite3: "), result.stderr
    assert result.stderr.endswith(READ_ONLY_HINT), result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert len(smtp_server.handler.messages) == 1
    assert _digest(two_letter_log) == before
    # Writable again, the same log carries on where it was.
    assert run("send", "--yes").code == 0
    assert smtp_server.handler.by_recipient() == {"ada@example.org": 1, "grace@example.net": 1}


def test_a_read_only_log_file_stops_the_send_before_any_letter(
        two_letter_log: Path, smtp_server: Server, files: CampaignFiles) -> None:
    result = _read_only([two_letter_log], files)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: send log logs/log.sqlite3: "), result.stderr
    assert result.stderr.endswith(READ_ONLY_HINT), result.stderr
    assert len(smtp_server.handler.messages) == 1


def _on_a_full_disk(command: list[str], cwd: Path, *, copy: str = ""
                    ) -> subprocess.CompletedProcess[str]:
    """Mount a 64 KiB tmpfs on ./disk (in a private namespace), copy `copy` onto it, fill it,
    print its `df` line, then run `command`."""
    script = ("mount -t tmpfs -o size=64k tmpfs disk || exit 99; "
              + (f"cp {copy} disk/ || exit 99; " if copy else "")
              + "dd if=/dev/zero of=disk/filler bs=1k 2>/dev/null; df -k disk | tail -1; "
              + "exec " + " ".join(command))
    return _unshare(script, cwd=cwd)


@pytest.fixture
def server_env(smtp_server: Server, files: CampaignFiles,
               monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    (files.root / "disk").mkdir()
    return smtp_server


def test_a_full_disk_stops_the_send_before_any_letter(server_env: Server,
                                                      files: CampaignFiles) -> None:
    result = _on_a_full_disk([*SEND, "--log", "disk/log.sqlite3"], files.root)
    assert result.stdout.split()[3] == "0", result  # df: no space available
    assert result.returncode == 2, result
    assert result.stderr == ("error: send log disk/log.sqlite3: database or disk is full"
                             + FULL_HINT)
    assert server_env.handler.messages == []


def test_a_full_disk_under_an_existing_log_stops_the_send_before_any_letter(
        server_env: Server, two_letter_log: Path, files: CampaignFiles) -> None:
    result = _on_a_full_disk([*SEND, "--log", "disk/log.sqlite3"], files.root,
                             copy="logs/log.sqlite3")
    assert result.stdout.split()[3] == "0", result
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: send log disk/log.sqlite3: "), result.stderr
    assert result.stderr.endswith(FULL_HINT), result.stderr
    assert "Traceback" not in result.stderr
    assert len(server_env.handler.messages) == 1


def test_a_disk_without_room_for_the_run_refuses_it_before_any_letter(
        campaign: Server, files: CampaignFiles) -> None:
    (files.root / "disk").mkdir()
    result = _unshare("mount -t tmpfs -o size=320k tmpfs disk || exit 99; exec "
                      + " ".join(SEND) + " --log disk/log.sqlite3", cwd=files.root)
    assert result.returncode == 2, result
    assert re.fullmatch(r"error: send log disk/log.sqlite3: its disk has 0\.\d MB free, and "
                        r"this run needs about 9 MB to record its letters; free some space, "
                        r"then run mailer send again\n", result.stderr), result.stderr
    assert campaign.handler.messages == []


def test_a_disk_that_fills_during_a_send_stops_it_and_the_log_still_knows(
        campaign: Server, files: CampaignFiles, run: Run) -> None:
    """The log's disk fills after some letters: the run stops with a clear error, and what
    the log holds (copied off the full disk) is enough for an exact resume."""
    (files.root / "disk").mkdir()

    def fill_at_twenty(message: Received) -> None:
        if len(campaign.handler.messages) == 20:
            (files.root / "fill").touch()

    campaign.handler.on_message = fill_at_twenty
    script = ("mount -t tmpfs -o size=16m tmpfs disk || exit 99; "
              "(while [ ! -e fill ]; do sleep 0.005; done; "
              "dd if=/dev/zero of=disk/filler bs=4k 2>/dev/null) & "
              + " ".join(SEND) + " --log disk/log.sqlite3; code=$?; wait; "
              f"cp disk/log.sqlite3 {LOG}; "
              f"if [ -e disk/log.sqlite3-wal ]; then cp disk/log.sqlite3-wal {LOG}-wal; fi; "
              "exit $code")
    result = _unshare(script, cwd=files.root)
    campaign.handler.on_message = None
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: send log disk/log.sqlite3: "), result.stderr
    assert result.stderr.endswith(FULL_HINT), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # no traceback
    counts = campaign.handler.by_recipient()
    assert 20 <= len(counts) < LETTERS
    _invariants_after_a_stop(files.root, counts, "disk full")
    _resume_to_the_end(campaign.handler, files, run, "disk full")


def test_a_full_disk_under_the_outbox_is_a_clear_error(files: CampaignFiles) -> None:
    (files.root / "disk").mkdir()
    result = _on_a_full_disk([sys.executable, "-m", "mailer", "send", "--dry-run", "--outbox",
                              "disk/outbox"], files.root)
    assert result.returncode == 2, result
    assert result.stderr == ("error: outbox disk/outbox: cannot write "
                             "00001-ada@example.org.eml: No space left on device; free some "
                             "space or choose another folder with --outbox (nothing was sent)\n")
