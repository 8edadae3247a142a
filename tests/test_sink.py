"""`mailer sink`: the capture server a new user practises against."""

from __future__ import annotations

import asyncio
import mailbox
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from mailer.sink import Received, Sink, start_sink


def test_the_sink_stores_each_message_in_a_maildir(tmp_path: Path) -> None:
    seen: list[Received] = []
    controller = start_sink(Sink(tmp_path / "maildir", seen.append))
    try:
        asyncio.run(aiosmtplib.send(b"Subject: hi\r\n\r\nbody\r\n", sender="a@example.org",
                                    recipients=["b@example.org"], hostname="127.0.0.1",
                                    port=controller.port, start_tls=False))
    finally:
        controller.stop()
    stored = list(mailbox.Maildir(tmp_path / "maildir"))
    assert [m["Subject"] for m in stored] == ["hi"]
    assert [m.rcpt_tos for m in seen] == [("b@example.org",)]


def test_mailer_sink_prints_a_line_per_letter_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", "sink", "--port", str(port), "--maildir",
         str(tmp_path / "md")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first == (f"mailer sink listening on 127.0.0.1:{port}, storing letters in "
                         f"{tmp_path / 'md'}/ (Ctrl-C to stop)\n")
        asyncio.run(aiosmtplib.send(b"Subject: Dear PM\r\n\r\nbody\r\n", sender="a@example.org",
                                    recipients=["pm@example.net"], hostname="127.0.0.1",
                                    port=port, start_tls=False))
        line = process.stdout.readline()
        assert line.endswith(" a@example.org -> pm@example.net  'Dear PM' (26 bytes)\n")
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out == "Stopped.\n"
    assert "Traceback" not in err


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    controller = start_sink(Sink(tmp_path / "other", print))
    try:
        result = subprocess.run([sys.executable, "-m", "mailer", "sink", "--port",
                                 str(controller.port), "--maildir", str(tmp_path / "md")],
                                capture_output=True, text=True, timeout=20, check=False)
    finally:
        controller.stop()
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{controller.port}: ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



def test_a_port_out_of_range_or_a_maildir_that_is_a_file_is_a_clear_error(
        tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    for args, message in ((["--port", "99999"], "Invalid value for '--port': 99999 is not in "
                                                "the range 0<=x<=65535."),
                          (["--maildir", str(tmp_path / "afile")], "is a file")):
        result = subprocess.run([sys.executable, "-m", "mailer", "sink", *args],
                                capture_output=True, text=True, timeout=20, check=False)
        assert result.returncode == 2, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr
