"""`smtpplus-milter users` against the real thing: Postfix SMTP AUTH through Dovecot's passwd-file.

The commands run as an operator runs them (a child process, the lab's config and passwd-file);
the milter is started with --pid-file so that --reload signals it the production way.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.stack import SendResult, Stack, client_tls, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

REPO = Path(__file__).resolve().parents[2]
LOGIN = "wp-site"
SENDER = "info@example.com"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = Stack()
    assert running.milter is not None
    running.milter.extra_args = ("--pid-file", str(running.workdir / "milter.pid"))
    with running:
        yield running


def users(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    action, *rest = args
    command = [sys.executable, "-m", "smtpplus_milter", "users", action, "-c", str(stack.config_path), *rest]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def reloading(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a users command with --reload and wait until the milter has reread the files."""
    assert stack.milter is not None
    before = len(stack.milter.events("config_reloaded"))
    done = users(stack, *args, "--reload", "--pid-file", str(stack.workdir / "milter.pid"))
    assert f"sent SIGHUP to the milter (pid {stack.milter.pid})" in done.stderr
    deadline = time.monotonic() + 10
    while len(stack.milter.events("config_reloaded")) <= before:
        assert time.monotonic() < deadline, stack.milter.log_tail()
        time.sleep(0.05)
    return done


def password_of(done: subprocess.CompletedProcess[str]) -> str:
    match = re.search(r"^  password: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    return match.group(1)


def send(stack: Stack, password: str, subject: str) -> SendResult:
    message = make_message(from_=f"WordPress <{SENDER}>", subject=subject)
    return stack.send(message, login=LOGIN, password=password, mail_from=SENDER)


def eventually(check: Callable[[], SendResult], predicate: Callable[[SendResult], bool]) -> SendResult:
    """Dovecot checks its passwd-file at most once a second: allow it a few seconds."""
    deadline = time.monotonic() + 5
    while True:
        result = check()
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def delivered(stack: Stack, subject: str) -> None:
    deadline = time.monotonic() + 30
    while not any(f"Subject: {subject}".encode() in item.data for item in stack.sink.messages):
        assert time.monotonic() < deadline, f"{subject!r} never arrived"
        time.sleep(0.05)


def refused_login(result: SendResult) -> bool:
    return (result.accepted, result.stage, result.code) == (False, "auth", 535)


def test_user_lifecycle_through_postfix_and_dovecot(stack: Stack) -> None:
    # add: the printed password logs in through the real Postfix + Dovecot, and the user can send.
    # --verified: this test is about users and passwords; verification has its own (test_verify_e2e).
    added = reloading(
        stack, "add", LOGIN, "--authorized-domain", "example.com", "--verified", "--note", "e2e", "--priority", "2"
    )
    first = password_of(added)
    assert first not in stack.passwd_path.read_text() and first not in stack.users_path.read_text()
    result = eventually(lambda: send(stack, first, "added"), lambda r: r.accepted)
    assert result.accepted, result
    delivered(stack, "added")
    assert any(b"X-Priority: 2 (High)" in item.data for item in stack.sink.messages)  # the user's priority applies
    # The milter enforces the new user's restrictions too.
    spoof = stack.send(make_message(from_="x@evil.example"), login=LOGIN, password=first, mail_from="x@evil.example")
    assert (spoof.stage, spoof.code) == ("mail", 550), spoof

    # reset-password: the new password logs in, the old one no longer does.
    second = password_of(users(stack, "reset-password", LOGIN))
    assert second != first
    assert eventually(lambda: send(stack, first, "old password"), refused_login).stage == "auth"
    result = send(stack, second, "new password")
    assert result.accepted, result
    delivered(stack, "new password")

    # disable: a session that logged in before is refused by the milter after the reload ...
    assert stack.postfix is not None
    with smtplib.SMTP("127.0.0.1", stack.postfix.submission_port, local_hostname="client.test", timeout=30) as open_:
        open_.starttls(context=client_tls())
        open_.login(LOGIN, second)
        reloading(stack, "disable", LOGIN)
        code, text = open_.mail(SENDER)
        assert code == 550 and b"disabled" in text, (code, text)
    # ... and Dovecot refuses the login itself.
    assert refused_login(eventually(lambda: send(stack, second, "disabled"), refused_login))
    assert f"#disabled:{LOGIN}:" in stack.passwd_path.read_text()

    # enable: the same password works again.
    reloading(stack, "enable", LOGIN)
    result = eventually(lambda: send(stack, second, "enabled"), lambda r: r.accepted)
    assert result.accepted, result
    delivered(stack, "enabled")

    # delete: neither file knows the user; the login is refused.
    reloading(stack, "delete", LOGIN)
    assert refused_login(eventually(lambda: send(stack, second, "deleted"), refused_login))
    assert LOGIN not in stack.passwd_path.read_text() and LOGIN not in stack.users_path.read_text()
    assert not any(
        b"Subject: deleted" in item.data or b"Subject: disabled" in item.data for item in stack.sink.messages
    )


def test_existing_users_keep_working_and_comments_survive(stack: Stack) -> None:
    before = stack.users_path.read_text()
    users(stack, "edit", "newsletter", "--note", "Bulk, weekly")
    after = stack.users_path.read_text()
    assert after == before.replace('note: "Bulk announcements"', 'note: "Bulk, weekly"')
    result = stack.send(
        make_message(from_="info@yourcompany.com", subject="untouched user"),
        login="shop-frontend",
        mail_from="info@yourcompany.com",
    )
    assert result.accepted, result
