"""The installer against a private Postfix + Dovecot, then mail through it as the guide's §10 does.

`smtpplus-milter setup` changes a private Postfix's main.cf and master.cf (postconf -c DIR) that
starts out with none of our settings and with Postfix's default message_size_limit; everything
the test then sees working is what the installer put there: the submission service, the milter,
the priority transport, the milter-less alert/verification listener and the size limits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lab.harness import Dovecot, Postfix, Sink, _smtp_banner, free_port, make_workdir, remove_workdir
from lab.milter_process import MilterProcess
from lab.stack import DEPLOY, deep_merge, make_message, submit

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]

USER = "shop-frontend"
SENDER = "info@yourcompany.com"
VERIFY_FROM = "verify@relay.example"


@dataclass
class Installed:
    workdir: Path
    postfix: Postfix
    milter: MilterProcess
    sink: Sink
    high_sink: Sink
    password: str
    submission_port: int
    listener_port: int
    setup_command: list[str]
    setup_output: str

    def send(self, message: bytes, mail_from: str, *, login: str | None = USER, port: int | None = None) -> object:
        return submit(
            port or self.submission_port,
            message,
            login=login,
            password=self.password if login else None,
            mail_from=mail_from,
            rcpt_to=["someone@example.org"],
            timeout=120,
        )


def _write_config(etc: Path, socket_dir: Path, passwd: Path, listener_port: int) -> Path:
    etc.mkdir(mode=0o750)
    base = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
    settings = deep_merge(
        base,
        {
            "milter": {"socket": f"unix:{socket_dir}/milter.sock"},
            "metrics": {"listen": None},
            "sasl": {"passwd_file": str(passwd)},
            "users_file": "users.yaml",
            # Verification code mail goes to the loopback listener the installer must add.
            "verification": {"smtp": f"127.0.0.1:{listener_port}", "from": VERIFY_FROM},
            "lists": {"shop": {"header": None, "footer": None}},
        },
    )
    path = etc / "smtpplus.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    shutil.copyfile(DEPLOY / "users.yaml", etc / "users.yaml")
    return path


def _wait_for_banner(port: int, postfix: Postfix, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while _smtp_banner(port, timeout=1.0) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SMTP banner on 127.0.0.1:{port}:\n{postfix.log_tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    workdir = make_workdir("install")
    sink, high_sink = Sink(), Sink()
    dovecot_etc = workdir / "dovecot-etc"
    passwd = dovecot_etc / "smtpplus.passwd"
    password = "install-test-password"
    Dovecot.write_passwd_file(passwd, {USER: password})
    dovecot = Dovecot(workdir / "dovecot", passwd)
    socket_dir = workdir / "socket"
    listener_port = free_port()
    config_path = _write_config(workdir / "etc", socket_dir, passwd, listener_port)
    milter = MilterProcess(config_path, f"unix:{socket_dir}/milter.sock", workdir / "milter.log")
    postfix: Postfix | None = None
    failed = False
    try:
        sink.start()
        high_sink.start()
        dovecot.start()
        # A Postfix with none of our settings: no milter, no submission service of ours, and
        # Postfix's default message_size_limit (the lab's own larger one removed).
        postfix = Postfix(workdir / "postfix", relayhost_port=sink.port, sasl_socket=dovecot.auth_socket)
        subprocess.run(
            ["postconf", "-c", str(postfix.config_dir), "-X", "message_size_limit", "mailbox_size_limit"], check=True
        )
        submission_port = free_port()
        args = [
            "setup",
            "--postfix-dir",
            str(postfix.config_dir),
            "--dovecot-dir",
            str(dovecot_etc),
            "--etc",
            str(workdir / "etc"),
            "--socket-dir",
            str(socket_dir),
            "--milter-socket",
            f"unix:{socket_dir}/milter.sock",
            "--sasl-path",
            str(dovecot.auth_socket),
            "--submission-service",
            f"127.0.0.1:{submission_port}",
            "--nexthop",
            f"high=[127.0.0.1]:{high_sink.port}",
            "--no-chroot",
            "--no-user",
            "--no-systemd",
        ]
        command = [sys.executable, "-m", "smtpplus_milter", *args]
        output = subprocess.run(command, capture_output=True, text=True, check=False)
        assert output.returncode == 0, output.stdout + output.stderr
        milter.start()
        postfix.start()
        _wait_for_banner(submission_port, postfix)
        _wait_for_banner(listener_port, postfix)
        yield Installed(
            workdir, postfix, milter, sink, high_sink, password, submission_port, listener_port, command, output.stdout
        )
    except BaseException:
        failed = True
        raise
    finally:
        for stop in (postfix.stop if postfix else None, milter.stop, dovecot.stop, sink.stop, high_sink.stop):
            if stop is not None:
                try:
                    stop()
                except Exception:  # keep stopping the others
                    failed = True
        if not failed:
            remove_workdir(workdir)


@pytest.fixture(autouse=True)
def _clean(installed: Installed) -> None:
    installed.sink.clear()
    installed.high_sink.clear()


def _messages(installed: Installed) -> list[dict[str, object]]:
    return installed.milter.events("message")


def test_installer_said_what_it_changed(installed: Installed) -> None:
    out = installed.setup_output
    assert f"127.0.0.1:{installed.listener_port}/inet runs no milter" in out
    assert "changed: main.cf: message_size_limit = 22020096 (was: (not set))" in out
    # The same run again, against the running instance, changes nothing.
    again = subprocess.run(installed.setup_command, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[-1] == "nothing to change"
    assert all(line.startswith(("unchanged: ", "checked: ")) for line in lines[:-1]), again.stdout


def test_authorized_sender_is_delivered(installed: Installed) -> None:
    result = installed.send(make_message(from_=SENDER, subject="order 1"), SENDER)
    assert getattr(result, "accepted", False), result
    [received] = installed.sink.wait_for(1, timeout=30)
    assert b"Subject: order 1" in received.data
    assert b"X-SMTPPlus-Queue" not in received.data
    installed.milter.wait_for_event("message", lambda e: e.get("user") == USER and e.get("decision") == "accepted")


def test_unauthorized_from_is_refused(installed: Installed) -> None:
    sender = "someone@not-yours.example"
    result = installed.send(make_message(from_=sender), sender)
    assert (getattr(result, "code", None), getattr(result, "stage", None)) == (550, "mail"), result
    assert "sender not authorized" in str(result)


def test_x_priority_1_goes_to_the_high_transport(installed: Installed) -> None:
    result = installed.send(make_message(from_=SENDER, subject="urgent", extra=[("X-Priority", "1")]), SENDER)
    assert getattr(result, "accepted", False), result
    [received] = installed.high_sink.wait_for(1, timeout=30)
    assert b"Subject: urgent" in received.data
    installed.postfix.wait_for_empty_queue(timeout=30)
    assert not installed.sink.messages


def test_the_alert_listener_does_not_run_the_milter(installed: Installed) -> None:
    message = make_message(from_=VERIFY_FROM, subject="your code")
    result = installed.send(message, VERIFY_FROM, login=None, port=installed.listener_port)
    assert getattr(result, "accepted", False), result
    [received] = installed.sink.wait_for(1, timeout=30)
    assert b"Subject: your code" in received.data
    installed.postfix.wait_for_empty_queue(timeout=30)
    # The milter writes one message event for every message it sees, logged in or not, within
    # its log writer's interval (50 ms): none may be about this message.
    time.sleep(0.5)
    seen = [event for event in _messages(installed) if VERIFY_FROM in json.dumps(event.get("senders"))]
    assert not seen, "the milter saw mail sent to the alert/verification listener"
    # Only the configured sender: the listener is no open relay for local processes.
    other = installed.send(make_message(from_=SENDER), SENDER, login=None, port=installed.listener_port)
    assert not getattr(other, "accepted", True) and getattr(other, "code", None) == 554, other


def _big_message(size: int) -> bytes:
    head = make_message(from_=SENDER, subject=f"big {size}", body="")
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


def test_15_mb_passes(installed: Installed) -> None:
    # Postfix's default message_size_limit (10240000) would refuse this: the installer raised it.
    result = installed.send(_big_message(15_000_000), SENDER)
    assert getattr(result, "accepted", False), result
    [received] = installed.sink.wait_for(1, timeout=120)
    assert len(received.data) > 15_000_000


def test_21_mb_gets_the_milters_552(installed: Installed) -> None:
    result = installed.send(_big_message(21_000_000), SENDER)
    text = str(result)
    assert getattr(result, "code", None) == 552, text
    # Ours names the setting; Postfix's own would say "message size exceeds fixed limit".
    assert re.search(r"5\.3\.4 .*limits\.max_message_bytes", text), text
