"""STARTTLS, implicit TLS and AUTH against real servers with a certificate made in the test."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from conftest import PASSWORD, USER, LoggedSend, Server, make_letters, scripted_settings
from servers import RecordingHandler, ScriptedServer, start_server

from mailer.errors import AuthError, SendError, TLSError
from mailer.outcome import Status
from mailer.settings import Settings

Send = Callable[..., LoggedSend]


def test_starttls_with_the_right_password_delivers(tls_server: Server, ca_file: Path,
                                                   send_logged: Send) -> None:
    settings = tls_server.settings(smtp_security="starttls", smtp_ca_file=ca_file,
                                   smtp_username=USER, smtp_password=PASSWORD)
    result = send_logged(settings, make_letters(3))
    assert result.summary.counts == {Status.SENT: 3}
    assert len(tls_server.handler.messages) == 3


def test_a_wrong_password_stops_the_run_before_any_letter(tls_server: Server, ca_file: Path,
                                                          send_logged: Send) -> None:
    settings = tls_server.settings(smtp_security="starttls", smtp_ca_file=ca_file,
                                   smtp_username=USER, smtp_password="wrong")
    with pytest.raises(AuthError, match=r"rejected the login for organiser: 535"):
        send_logged(settings, make_letters(3))
    assert tls_server.handler.commands["MAIL"] == 0


def test_an_untrusted_certificate_is_refused(tls_server: Server, send_logged: Send) -> None:
    settings = tls_server.settings(smtp_security="starttls", smtp_username=USER,
                                   smtp_password=PASSWORD)
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED"):
        send_logged(settings, make_letters(1))
    assert tls_server.handler.commands["MAIL"] == 0


def test_a_certificate_for_another_host_is_refused(ca: trustme.CA, ca_file: Path,
                                                   send_logged: Send) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.example.org").configure_cert(context)
    handler = RecordingHandler()
    controller = start_server(handler, tls_context=context, require_starttls=True)
    try:
        settings = Server(handler, controller.port).settings(smtp_security="starttls",
                                                             smtp_ca_file=ca_file)
        with pytest.raises(TLSError, match="IP address mismatch"):
            send_logged(settings, make_letters(1))
    finally:
        controller.stop()
    assert handler.commands["MAIL"] == 0


def test_starttls_required_but_not_offered_is_an_error(smtp_server: Server,
                                                       send_logged: Send) -> None:
    with pytest.raises(TLSError, match="offers no STARTTLS"):
        send_logged(smtp_server.settings(smtp_security="starttls"), make_letters(1))
    assert smtp_server.handler.commands["MAIL"] == 0


def test_the_password_never_shows_in_settings_repr(tls_server: Server) -> None:
    settings = tls_server.settings(smtp_username=USER, smtp_password=PASSWORD)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.public())


def test_implicit_tls_delivers(ca: trustme.CA, ca_file: Path, send_logged: Send) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    handler = RecordingHandler()
    controller = start_server(handler, ssl_context=context)
    try:
        settings = Server(handler, controller.port).settings(smtp_security="tls",
                                                             smtp_ca_file=ca_file)
        result = send_logged(settings, make_letters(2))
    finally:
        controller.stop()
    assert result.summary.counts == {Status.SENT: 2}


def _fails_with(send_logged: Send, settings: Settings) -> str:
    with pytest.raises(SendError) as caught:
        send_logged(settings, make_letters(1))
    return str(caught.value)


def test_an_untrusted_certificate_on_implicit_tls_is_a_tls_error(
        implicit_tls_server: Server, send_logged: Send) -> None:
    text = _fails_with(send_logged, implicit_tls_server.settings(smtp_security="tls"))
    assert text.startswith(f"TLS with 127.0.0.1:{implicit_tls_server.port} failed: "
                           "CERTIFICATE_VERIFY_FAILED: "), text
    assert "is the server running" not in text


def test_tls_on_a_starttls_port_says_which_security_fits_which_port(
        tls_server: Server, send_logged: Send) -> None:
    text = _fails_with(send_logged, tls_server.settings(smtp_security="tls"))
    assert text == (f"TLS with 127.0.0.1:{tls_server.port} failed: the server did not answer "
                    "in TLS, so MAILER_SMTP_SECURITY=tls does not fit this port; port 587 "
                    "usually wants starttls, 465 tls")


def test_starttls_on_an_implicit_tls_port_says_which_security_fits(
        implicit_tls_server: Server, send_logged: Send) -> None:
    text = _fails_with(send_logged, implicit_tls_server.settings(smtp_security="starttls",
                                                                 timeout=0.5))
    assert text == (f"127.0.0.1:{implicit_tls_server.port} took the connection but sent no "
                    "greeting; a port that wants TLS from the start (465 usually) needs "
                    "MAILER_SMTP_SECURITY=tls")


def test_no_tls_with_a_server_that_requires_starttls_names_the_setting(
        tls_server: Server, send_logged: Send) -> None:
    text = _fails_with(send_logged, tls_server.settings(smtp_security="none"))
    assert text.startswith(f"127.0.0.1:{tls_server.port} refused to take mail without TLS "
                           "(530 "), text
    assert text.endswith("it offers STARTTLS, so set MAILER_SMTP_SECURITY=starttls")
    text = _fails_with(send_logged, tls_server.settings(
        smtp_security="none", smtp_username=USER, smtp_password=PASSWORD))
    assert text == (f"127.0.0.1:{tls_server.port} logs in only after STARTTLS: it offers "
                    "STARTTLS, so set MAILER_SMTP_SECURITY=starttls")


def test_a_421_greeting_is_a_refusal_not_a_server_that_is_down(send_logged: Send) -> None:
    server = ScriptedServer(max_connections=0).start()
    try:
        text = _fails_with(send_logged, scripted_settings(server))
    finally:
        server.stop()
    assert text == (f"127.0.0.1:{server.port} refused the connection: 421 4.7.0 scripted: too "
                    "many connections from 127.0.0.1; it may be busy, or allow fewer "
                    "connections at once (MAILER_CONCURRENCY): try again later")
