"""The lab harness itself: a real Postfix with real Dovecot SASL delivering to the sink (no milter).

Everything else end-to-end builds on these guarantees: submission needs STARTTLS + a valid login,
port 25 takes unauthenticated mail only for example.net, bodies arrive byte for byte (long lines
too), failures stop what was started, and nothing outlives the fixtures.
"""

from __future__ import annotations

import os
import secrets
import signal
import smtplib
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness import (
    Dovecot,
    LabError,
    Postfix,
    ReceivedMessage,
    Sink,
    make_workdir,
    remove_workdir,
    stop_orphans,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = make_workdir("harness-test")
    yield path
    remove_workdir(path)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture(scope="module")
def dovecot(workdir: Path) -> Iterator[Dovecot]:
    passwd = workdir / "etc" / "smtpplus.passwd"
    Dovecot.write_passwd_file(passwd, {"alice": PASSWORD})
    with Dovecot(workdir / "dovecot", passwd) as running:
        yield running
    assert running.pids() == [], "Dovecot processes survived stop()"


@pytest.fixture(scope="module")
def postfix(workdir: Path, sink: Sink, dovecot: Dovecot) -> Iterator[Postfix]:
    with Postfix(workdir / "postfix", relayhost_port=sink.port, sasl_socket=dovecot.auth_socket) as running:
        yield running
    assert running.pids() == [], "Postfix processes survived stop()"


@pytest.fixture(autouse=True)
def _empty_sink(sink: Sink) -> None:
    sink.clear()


def _client_tls() -> ssl.SSLContext:
    # The lab certificate is self-signed for relay.test: encrypt without verifying.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _message(subject: str, body: bytes) -> bytes:
    headers = (
        f"From: Alice <alice@example.com>\r\n"
        f"To: Bob <bob@example.org>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@client.test>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
    ).encode()
    return headers + b"\r\n" + body


def _submit(postfix: Postfix, message: bytes, *, rcpt: str | list[str] = "bob@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, local_hostname="client.test", timeout=30) as client:
        client.starttls(context=_client_tls())
        client.login("alice", PASSWORD)
        client.sendmail(
            "alice@example.com", rcpt if isinstance(rcpt, list) else [rcpt], message, mail_options=["BODY=8BITMIME"]
        )


def _only_delivery(sink: Sink, postfix: Postfix) -> ReceivedMessage:
    [delivered] = sink.wait_for(1, timeout=20)
    postfix.wait_for_empty_queue(timeout=10)
    return delivered


def test_authenticated_submission_arrives_byte_for_byte(postfix: Postfix, sink: Sink) -> None:
    # Dot-stuffing, trailing blanks, a tab, 8-bit UTF-8, no final newline quirks: all must survive.
    body = (
        b"Hello Bob,\r\n"
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b"trailing blanks   \r\n"
        b"\tindented with a tab\r\n"
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
        b"\r\n"
        b"-- \r\n"
        b"Alice\r\n"
    )
    original = _message("byte for byte", body)
    _submit(postfix, original)

    delivered = _only_delivery(sink, postfix)
    assert delivered.mail_from == "alice@example.com"
    assert delivered.rcpt_tos == ["bob@example.org"]
    assert delivered.data.split(b"\r\n\r\n", 1)[1] == body
    # Postfix only prepends its Received: header, which records the authenticated submission.
    assert delivered.data.endswith(original)
    received = delivered.data[: len(delivered.data) - len(original)]
    assert received.startswith(b"Received: ") and b"with ESMTPSA" in received


def test_wrong_password_is_refused_with_535(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, local_hostname="client.test", timeout=30) as client:
        client.starttls(context=_client_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "not-" + PASSWORD)
    assert refused.value.smtp_code == 535


def test_submission_refuses_unauthenticated_relay(postfix: Postfix, sink: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        # smtpd_tls_auth_only: no AUTH offered before STARTTLS, and nothing accepted without it.
        assert not client.has_extn("auth")
        code, _ = client.mail("alice@example.com")
        assert code == 530
        client.rset()
        client.starttls(context=_client_tls())
        client.ehlo()
        assert client.has_extn("auth")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("alice@example.com", ["bob@example.org"], _message("relay attempt", b"no\r\n"))
    code, text = refused.value.recipients["bob@example.org"]
    assert 500 <= code < 600, (code, text)
    assert b"5.7.1" in text and b"Access denied" in text
    with pytest.raises(TimeoutError, match="0 arrived"):
        sink.wait_for(1, timeout=0.5)
    assert postfix.queue_ids() == []


def test_port_25_role_accepts_unauthenticated_mail_for_relay_domain(postfix: Postfix, sink: Sink) -> None:
    original = _message("inbound", b"From another server.\r\n")
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, local_hostname="mx.sender.test", timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # only after STARTTLS
        client.sendmail("someone@sender.test", ["someone@example.net"], original)

    delivered = _only_delivery(sink, postfix)
    assert (delivered.mail_from, delivered.rcpt_tos) == ("someone@sender.test", ["someone@example.net"])
    assert delivered.data.endswith(original)


def test_port_25_role_refuses_unauthenticated_relay_elsewhere(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, local_hostname="mx.sender.test", timeout=30) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("someone@sender.test", ["bob@example.org"], _message("open relay?", b"no\r\n"))
    code, _ = refused.value.recipients["bob@example.org"]
    assert 500 <= code < 600


def test_line_longer_than_998_octets_arrives_intact(postfix: Postfix, sink: Sink) -> None:
    long_line = b"".join(b"%04d:" % i + b"x" * 5 for i in range(200))
    assert len(long_line) == 2000
    original = _message("long line", b"before\r\n" + long_line + b"\r\nafter\r\n")
    _submit(postfix, original)

    delivered = _only_delivery(sink, postfix)
    assert b"\r\n" + long_line + b"\r\n" in delivered.data
    assert delivered.data.endswith(original)


def test_too_deep_a_directory_is_refused_before_anything_starts(workdir: Path) -> None:
    deep = workdir / ("d" * 60)
    with pytest.raises(LabError, match="too long for the unix sockets Dovecot creates"):
        Dovecot(deep, workdir / "passwd")
    with pytest.raises(LabError, match="too long for the unix sockets Postfix creates"):
        Postfix(deep / "p", relayhost_port=25025, sasl_socket=None)
    assert not deep.exists()


def test_failed_start_stops_everything_and_shows_the_log(workdir: Path, sink: Sink) -> None:
    # An empty smtpd_sasl_path makes every smtpd die at startup: the master keeps running and
    # retrying, so only the harness can notice, report and clean up.
    broken = Postfix(
        workdir / "postfix-broken",
        relayhost_port=sink.port,
        sasl_socket=None,
        main_cf={"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_path": ""},
    )
    with pytest.raises(LabError, match="bad string length") as failure:
        with broken:
            pytest.fail("start() should have raised")
    assert str(broken.log_file) in str(failure.value)
    assert broken.pids() == []
    broken.stop()  # stopping again is harmless


def _processes_under(root: Path) -> list[str]:
    """Processes whose command line or MAIL_CONFIG points into *root* (Dovecot, Postfix)."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmdline or b"MAIL_CONFIG=" + needle in environ):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


def test_stop_orphans_stops_instances_whose_owner_was_killed() -> None:
    # Its own root, so that only orphans made here can be found and stopped.
    root = make_workdir("orphans")
    # A separate process starts Dovecot and Postfix and dies by SIGKILL: no context manager runs.
    child = textwrap.dedent(
        """
        import os, signal, sys
        from lab.harness import Dovecot, Postfix, free_port, make_workdir
        lab = make_workdir("orphan")
        Dovecot.write_passwd_file(lab / "passwd", {"alice": "x"})
        dovecot = Dovecot(lab / "dovecot", lab / "passwd")
        dovecot.start()
        Postfix(lab / "postfix", relayhost_port=free_port(), sasl_socket=dovecot.auth_socket).start()
        print(lab, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        env={**os.environ, "SMTPPLUS_LAB_ROOT": str(root)},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode(errors="replace")
    lab = Path(result.stdout.decode().strip())
    try:
        assert _processes_under(root), "the killed owner should have left Dovecot and Postfix running"

        stopped = stop_orphans(root)

        assert sorted(stopped) == [lab / "dovecot", lab / "postfix"]
        assert _processes_under(root) == []
        assert stop_orphans(root) == []
    finally:
        stop_orphans(root)  # never leave them running, even if an assertion failed
        remove_workdir(root)


def test_stop_orphans_leaves_live_owners_alone(workdir: Path, postfix: Postfix, dovecot: Dovecot) -> None:
    # This process owns the module's instances, so they are not orphans. Only this module's lab is
    # searched: orphans of other sessions are not this test's to stop.
    assert (postfix.workdir / "lab-owner.json").exists() and (dovecot.workdir / "lab-owner.json").exists()
    assert stop_orphans(workdir) == []
    assert postfix.pids() and dovecot.pids()


def test_sink_answers_each_recipient_by_its_local_part(postfix: Postfix, sink: Sink) -> None:
    # The tracking tests rely on it: one message meets delivery, a deferral and two kinds of bounce.
    recipients = ["bob@example.org", "unknown-1@example.org", "blocked-1@example.org", "busy-1@example.org"]
    _submit(postfix, _message("four outcomes", b"Hello\r\n"), rcpt=recipients)
    try:
        delivered, notice = sink.wait_for(2, timeout=30)
        assert delivered.rcpt_tos == ["bob@example.org"]
        # Postfix returns the two refusals to the sender at once; the deferral stays queued.
        assert notice.mail_from == "<>" and notice.rcpt_tos == ["alice@example.com"]
        for pattern in (
            r"to=<bob@example\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*dsn=2\.0\.0, status=sent",
            r"to=<unknown-1@example\.org>, .*dsn=5\.1\.1, status=bounced \(.*550 5\.1\.1 ",
            r"to=<blocked-1@example\.org>, .*dsn=5\.7\.1, status=bounced \(.*550 5\.7\.1 ",
            r"to=<busy-1@example\.org>, .*dsn=4\.2\.0, status=deferred \(.*450 4\.2\.0 ",
        ):
            postfix.wait_for_log(pattern, timeout=20)
    finally:
        postfix.delete_queue()
        sink.clear()
