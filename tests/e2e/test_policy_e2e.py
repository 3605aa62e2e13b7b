"""The policy daemon through a real Postfix (check_policy_service at RCPT and end of data, as
postfix-config prints it), with the milter, real Dovecot SASL and, for several relay hosts, one
real redis-server shared by two Postfix instances and two policy daemons."""

from __future__ import annotations

import os
import re
import smtplib
import time
from collections.abc import Iterator

import pytest

from lab.stack import Stack, client_tls, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

GOOD_FROM = "info@yourcompany.com"
# No banner/footer: these tests count messages, not their looks.
LISTS = {"shop": {"header": None, "footer": None}}


class Session:
    """One authenticated SMTP session that sends many messages (as an application does)."""

    def __init__(self, stack: Stack, login: str = "shop-frontend") -> None:
        assert stack.postfix is not None
        self.client = smtplib.SMTP("127.0.0.1", stack.postfix.submission_port, local_hostname="client.test", timeout=60)
        self.client.starttls(context=client_tls())
        self.client.login(login, stack.passwords[login])

    def send(self, subject: str, rcpt_to: list[str] | None = None, from_: str = GOOD_FROM) -> tuple[int, str]:
        """(250, text) when queued; else the refusal's code and text (at whatever stage)."""
        message = make_message(from_=from_, subject=subject)
        try:
            refused = self.client.sendmail(from_, rcpt_to or ["someone@example.org"], message)
        except smtplib.SMTPRecipientsRefused as exc:
            self.client.rset()
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
            self.client.rset()
            return exc.smtp_code, exc.smtp_error.decode()
        if refused:
            return 250, "partly: " + ";".join(f"{a}={c} {t.decode()}" for a, (c, t) in refused.items())
        return 250, "queued"

    def close(self) -> None:
        try:
            self.client.quit()
        except smtplib.SMTPException:
            pass


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The value of one sample of the policy daemon's /metrics (0 when it has not been counted yet)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.policy_metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        found = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or "")) == labels:
            return float(found.group(2))
    return 0.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    settings = {"lists": LISTS, "sending_limits": {"messages_per_hour": 360, "recipients_per_message": 100}}
    with Stack(settings=settings, policy={}) as running:
        yield running


def test_the_101st_recipient_gets_452_and_the_100_are_delivered(stack: Stack) -> None:
    stack.sink.clear()
    session = Session(stack)
    try:
        recipients = [f"r{n}@example.org" for n in range(101)]
        code, text = session.send("hundred and one", recipients)
    finally:
        session.close()
    assert code == 250
    # Postfix puts its usual "<address>: Recipient address rejected:" before the daemon's text.
    assert (
        text == "partly: r100@example.org=452 4.5.3 <r100@example.org>: Recipient address rejected: Too many recipients"
    )
    deadline = time.monotonic() + 30
    while sum(len(item.rcpt_tos) for item in stack.sink.messages) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)  # Postfix delivers them in transactions of up to 50 recipients
    time.sleep(0.5)
    assert sorted(r for item in stack.sink.messages for r in item.rcpt_tos) == sorted(recipients[:100])
    assert metric(stack, "smtpplus_limited_total", user="shop-frontend", limit="recipients_per_message") == 1


def test_an_unauthorized_sender_is_refused_before_data_with_the_milters_reply(stack: Stack) -> None:
    # The milter answers at MAIL FROM (it runs first); the policy daemon gives the same answer at
    # RCPT (see the test without a milter below).
    result = stack.send(make_message(from_="ceo@bank.example"), login="shop-frontend", mail_from="ceo@bank.example")
    assert not result.accepted and result.stage in ("mail", "rcpt") and result.code == 550, result


def test_messages_per_hour_450_then_through_after_the_interval(stack: Stack) -> None:
    session = Session(stack, login="newsletter")
    try:
        answers = [session.send(f"burst {n}", from_="a@news.yourcompany.com") for n in range(361)]
    finally:
        session.close()
    assert [code for code, _ in answers[:360]] == [250] * 360
    code, text = answers[360]
    assert code == 450, answers[360]
    # Postfix puts "<END-OF-MESSAGE>: End-of-data rejected:" before the daemon's text.
    wait = re.fullmatch(
        r"4\.7\.1 <END-OF-MESSAGE>: End-of-data rejected: "
        r"sending limit messages_per_hour reached for SMTP\+ user newsletter, retry after (\d+) s",
        text,
    )
    assert wait is not None, text
    assert 1 <= int(wait.group(1)) <= 10  # one message every 10 s at 360 an hour
    time.sleep(int(wait.group(1)) + 0.5)
    later = Session(stack, login="newsletter")
    try:
        assert later.send("after the interval", from_="a@news.yourcompany.com")[0] == 250
    finally:
        later.close()
    assert metric(stack, "smtpplus_limited_total", user="newsletter", limit="messages_per_hour") == 1
