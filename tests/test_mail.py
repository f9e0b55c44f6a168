"""send_mail over plain SMTP, STARTTLS and SSL against a real server (aiosmtpd), and its errors."""
import ssl
import subprocess

import pytest

from monitor.redis_server import free_port
from tasks.settings import Settings
from tasks.mail import MailError, send_mail
from tests.conftest import SmtpSink
from tests.services import need_program


@pytest.fixture
def certificate(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1, trusted by ssl.create_default_context() in this test."""
    openssl = need_program("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


TlsSink = SmtpSink  # with tls_context= (STARTTLS) or ssl_context= (implicit SSL)


def settings(port, security="none", **kw):
    return Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_security=security, **kw)


def test_plain_text_with_html_alternative(smtp_server):
    msg_id = send_mail(settings(smtp_server.port), ["a@example.com", "b@example.com"], "Subject", "text body",
                       "<p>html body</p>")
    (got,) = smtp_server.messages
    assert got["to"] == ["a@example.com", "b@example.com"] and got["message"]["Message-ID"] == msg_id
    assert got["message"].get_body(("plain",)).get_content().strip() == "text body"
    assert got["message"].get_body(("html",)).get_content().strip() == "<p>html body</p>"


def test_starttls(certificate):
    sink = TlsSink(tls_context=certificate, require_starttls=True).start()
    try:
        send_mail(settings(sink.port, "starttls"), "a@example.com", "secure", "over STARTTLS")
    finally:
        sink.stop()
    assert sink.messages[0]["message"]["Subject"] == "secure"


def test_implicit_ssl(certificate):
    sink = TlsSink(ssl_context=certificate).start()
    try:
        send_mail(settings(sink.port, "ssl"), "a@example.com", "secure", "over SSL")
    finally:
        sink.stop()
    assert sink.messages[0]["message"]["Subject"] == "secure"


def test_starttls_against_a_server_without_it_is_a_clear_error(smtp_server):
    with pytest.raises(MailError, match=r"cannot send mail via 127.0.0.1:\d+ \(starttls\): STARTTLS extension not supported"):
        send_mail(settings(smtp_server.port, "starttls"), "a@example.com", "x", "y")


def test_unreachable_server_is_one_line():
    with pytest.raises(MailError) as err:
        send_mail(settings(free_port()), "a@example.com", "x", "y", timeout=5)
    assert "\n" not in str(err.value) and "cannot send mail via 127.0.0.1" in str(err.value)
