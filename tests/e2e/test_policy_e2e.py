"""The policy daemon through a real Postfix (check_policy_service at RCPT and end of data, as
postfix-config prints it), with the milter, real Dovecot SASL and, for several relay hosts, one
real redis-server shared by two Postfix instances and two policy daemons."""

from __future__ import annotations

import os
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.redis import RedisServer
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


# --- Postfix retries a policy request: the message counts once --------------------------------


class DroppingProxy:
    """Between Postfix and the daemon: forwards everything, but for the first END-OF-MESSAGE
    request of each queue id it forwards the request, reads the daemon's answer and hangs up
    instead of passing it on, as if the daemon had died after counting. Postfix then asks again
    on a new connection (smtpd_policy_service_try_limit = 2)."""

    def __init__(self, path: Path, target: Path) -> None:
        import socket
        import threading

        self.path, self.target = path, target
        self.dropped: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        os.chmod(path, 0o777)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.target))
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _serve(self, client: object, upstream: object) -> None:
        import socket

        assert isinstance(client, socket.socket) and isinstance(upstream, socket.socket)
        buffer = b""
        with client, upstream:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\n\n" in buffer:
                    request, _, buffer = buffer.partition(b"\n\n")
                    upstream.sendall(request + b"\n\n")
                    reply = b""
                    while not reply.endswith(b"\n\n"):
                        reply += upstream.recv(4096)
                    queue_id = re.search(rb"^queue_id=(\S+)$", request, re.M)
                    if b"protocol_state=END-OF-MESSAGE" in request and queue_id:
                        if queue_id.group(1).decode() not in self.dropped:
                            self.dropped.append(queue_id.group(1).decode())
                            return  # counted by the daemon, answer lost
                    client.sendall(reply)

    def close(self) -> None:
        self.listener.close()


def test_a_retried_end_of_data_request_counts_once() -> None:
    import yaml

    from lab.stack import DEPLOY

    users = yaml.safe_load((DEPLOY / "users.yaml").read_text(encoding="utf-8"))
    users["shop-frontend"]["sending_limits"] = {"messages_per_hour": 2}
    stack = Stack(settings={"lists": LISTS}, users=users, policy={})
    proxy_path = stack.workdir / "policy" / "proxy.sock"
    assert stack.policy_spec is not None
    proxy = DroppingProxy(proxy_path, Path(stack.policy_spec.removeprefix("unix:")))
    stack.postfix_main_cf["smtpd_end_of_data_restrictions"] = f"check_policy_service unix:{proxy_path}"
    try:
        stack.start()
        session = Session(stack)
        try:
            answers = [session.send(f"retried {n}")[0] for n in range(3)]
        finally:
            session.close()
        # Each of the first two was asked twice (the first answer lost), yet counted once: the
        # second goes through and only the third is over the limit of 2.
        assert len(proxy.dropped) == 3
        assert answers == [250, 250, 450]
    finally:
        proxy.close()
        stack.stop()


def test_without_the_milter_the_daemon_refuses_an_unauthorized_sender_at_rcpt() -> None:
    with Stack(settings={"lists": LISTS}, milter=None, policy={}) as alone:
        result = alone.send(make_message(from_="ceo@bank.example"), login="shop-frontend", mail_from="ceo@bank.example")
        assert not result.accepted and result.stage == "rcpt" and result.code == 550, result
        assert "ceo@bank.example" in result.text
        fine = alone.send(make_message(from_=GOOD_FROM), login="shop-frontend", mail_from=GOOD_FROM)
        assert fine.accepted, fine
        assert metric(alone, "smtpplus_policy_requests_total", stage="rcpt", result="refused") == 1


# --- Two relay hosts, one Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hosts(redis: RedisServer) -> Iterator[tuple[Stack, Stack]]:
    settings = {"lists": LISTS, "sending_limits": {"messages_per_hour": 10, "store": redis.url}}
    first = Stack(settings=settings, policy={}, node="relay-1")
    second = Stack(settings=settings, policy={}, node="relay-2")
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        for stack in (second, first):
            stack.stop()


def test_two_hosts_share_one_limit_exactly(hosts: tuple[Stack, Stack]) -> None:
    sessions = [Session(stack) for stack in hosts]
    try:
        answers = [sessions[n % 2].send(f"shared {n}") for n in range(15)]
    finally:
        for session in sessions:
            session.close()
    codes = [code for code, _ in answers]
    assert codes.count(250) == 10 and codes.count(450) == 5, answers
    assert codes[:10] == [250] * 10
    limited = sum(
        metric(stack, "smtpplus_limited_total", user="shop-frontend", limit="messages_per_hour") for stack in hosts
    )
    assert limited == 5


def test_a_message_the_milter_refuses_after_end_of_data_is_not_counted(hosts: tuple[Stack, Stack]) -> None:
    stack = hosts[0]
    session = Session(stack, login="ceo-outlook")
    ceo = "ceo@yourcompany.com"
    try:
        assert [session.send(f"ceo {n}", from_=ceo)[0] for n in range(9)] == [250] * 9
        # From: not authorized: the milter refuses at the end of the headers, after the policy
        # daemon counted the message at end of data; the milter gives the count back.
        message = make_message(from_="boss@bank.example", subject="spoof")
        try:
            session.client.sendmail(ceo, ["someone@example.org"], message)
            raise AssertionError("the milter accepted a From: the user may not use")
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 550
            session.client.rset()
        deadline = time.monotonic() + 10
        while metric(stack, "smtpplus_limit_refunds_total", result="refunded") < 1:
            assert time.monotonic() < deadline, "the refund never arrived"
            time.sleep(0.05)
        assert session.send("ceo 10", from_=ceo)[0] == 250  # the 10th place was given back
        assert session.send("ceo 11", from_=ceo)[0] == 450
    finally:
        session.close()


def test_redis_down_tempfails_then_recovers(hosts: tuple[Stack, Stack], redis: RedisServer) -> None:
    stack = hosts[1]
    session = Session(stack, login="newsletter")
    sender = "a@news.yourcompany.com"
    try:
        assert session.send("before", from_=sender)[0] == 250
        redis.stop()
        try:
            code, text = session.send("while down", from_=sender)
            assert code == 451 and "SMTP+ sending limits cannot be checked" in text, (code, text)
        finally:
            redis.start()
        assert session.send("after", from_=sender)[0] == 250
    finally:
        session.close()
    assert metric(stack, "smtpplus_limit_store_errors_total", action="tempfail") == 1
