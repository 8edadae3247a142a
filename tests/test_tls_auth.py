"""STARTTLS, implicit TLS and AUTH against real servers with a certificate made in the test."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from conftest import PASSWORD, USER, LoggedSend, Server, make_letters
from servers import RecordingHandler, start_server

from mailer.errors import AuthError, TLSError
from mailer.outcome import Status

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
