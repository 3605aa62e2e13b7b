"""Sender verification against the real thing.

Addresses: the code mail arrives in a real SMTP sink (``verification.smtp``, never through Postfix
or the milter), and the sender is refused by the real Postfix + milter until the code is confirmed.
Domains: ``verify check`` asks a real DNS server (dnsmasq on a loopback port) for the TXT token,
the DMARC policy and SPF. The commands run as an operator runs them: child processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
import yaml

from lab.harness import DnsServer, Sink, make_workdir, remove_workdir
from lab.stack import SendResult, Stack, make_message
from smtpplus_milter.config import load_config

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
LOGIN = "wp-verify"
SENDER = "info@example.com"
RELAY_IP = "192.0.2.10"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root")
needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq (Debian dnsmasq-base)")


def cli(config: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    group, action, *rest = args
    command = [sys.executable, "-m", "smtpplus_milter", group, action, "-c", str(config), *rest]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False
    )
    assert done.returncode == status, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


# --- addresses: code by e-mail, then through the real Postfix --------------------------------------


@pytest.fixture(scope="module")
def code_sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def stack(code_sink: Sink) -> Iterator[Stack]:
    running = Stack(
        settings={"verification": {"smtp": f"127.0.0.1:{code_sink.port}", "from": "verify@relay.test"}},
    )
    assert running.milter is not None
    running.milter.extra_args = ("--pid-file", str(running.workdir / "milter.pid"))
    with running:
        yield running


def reloading(stack: Stack, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    assert stack.milter is not None
    before = len(stack.milter.events("config_reloaded"))
    done = cli(stack.config_path, *args, "--reload", "--pid-file", str(stack.workdir / "milter.pid"), status=status)
    deadline = time.monotonic() + 10
    while status == 0 and len(stack.milter.events("config_reloaded")) <= before:
        assert time.monotonic() < deadline, stack.milter.log_tail()
        time.sleep(0.05)
    return done


def send(stack: Stack, password: str, subject: str) -> SendResult:
    return stack.send(make_message(from_=SENDER, subject=subject), login=LOGIN, password=password, mail_from=SENDER)


@needs_root
def test_address_is_refused_until_the_emailed_code_is_confirmed(stack: Stack, code_sink: Sink) -> None:
    assert load_config(stack.config_path).settings.verification.required  # the shipped example's default
    added = reloading(stack, "users", "add", LOGIN, "--authorized-sender", SENDER)
    password = re.search(r"^  password: (\S+)$", added.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert f"A verification code was e-mailed to {SENDER}" in added.stdout
    assert f'pending_senders: "{SENDER}"' in stack.users_path.read_text()

    # The code mail: straight into the sink named by verification.smtp, not through Postfix/milter.
    (mail,) = code_sink.wait_for(1)
    assert (mail.mail_from, mail.rcpt_tos) == ("verify@relay.test", [SENDER])
    message = message_from_bytes(mail.data, policy=default)
    assert "X-SMTPPlus-Queue" not in message and "24 hours" in message.get_content()
    code = re.search(r"^    (\d{4} \d{4})\r?$", message.get_content(), re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert code.replace(" ", "") not in (stack.workdir / "etc" / "verification.json").read_text()

    # Pending: the real Postfix refuses the sender with the milter's reply (Dovecot may take a
    # second to see the new passwd-file line).
    deadline = time.monotonic() + 5
    while (result := send(stack, password, "pending")).stage == "auth" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (result.stage, result.code) == ("mail", 550), result
    assert result.text.startswith("5.7.1 <info@example.com>: sender not authorized") and "awaiting verification" in (
        result.text
    ), result
    listed = cli(stack.config_path, "verify", "list")
    assert re.search(rf"^{LOGIN}\s+sender\s+{SENDER}\s+\d+m\s+code sent, valid", listed.stdout, re.MULTILINE), listed

    # A wrong code is refused (exit 1) and counted; the right one moves the address.
    wrong = f"{(int(code.replace(' ', '')) + 1) % 10**8:08d}"
    refused = cli(stack.config_path, "verify", "confirm", LOGIN, SENDER, wrong, status=1)
    assert "wrong code" in refused.stderr and "4 more tries" in refused.stderr
    reloading(stack, "verify", "confirm", LOGIN, SENDER, code)
    users = yaml.safe_load(stack.users_path.read_text())[LOGIN]
    assert users["authorized_senders"] == SENDER and "pending_senders" not in users

    result = send(stack, password, "verified")
    assert result.accepted, result
    deadline = time.monotonic() + 30
    while not any(b"Subject: verified" in item.data for item in stack.sink.messages):
        assert time.monotonic() < deadline, "the verified sender's message never arrived"
        time.sleep(0.05)
    assert not any(b"Subject: pending" in item.data for item in stack.sink.messages)

    # The code is single use.
    again = cli(stack.config_path, "verify", "confirm", LOGIN, SENDER, code, status=1)
    assert "already verified" in again.stderr


# --- domains: a real DNS server --------------------------------------------------------------------


@pytest.fixture
def dns_conf() -> Iterator[Path]:
    """A config (no Postfix needed) whose resolver is the dnsmasq a test starts on its port."""
    workdir = make_workdir("verify-dns")
    try:
        base = yaml.safe_load((REPO / "deploy" / "smtpplus.yaml").read_text())
        base["verification"].update(resolver=None, relay_ips=[RELAY_IP])
        base["sasl"]["passwd_file"] = str(workdir / "smtpplus.passwd")
        (workdir / "smtpplus.yaml").write_text(yaml.safe_dump(base))
        (workdir / "users.yaml").write_text(
            "shop:\n  authorized_senders: info@shop.test\n"
            "  pending_domains: [good.test, missing.test, wrong.test, strict.test]\n"
        )
        yield workdir / "smtpplus.yaml"
    finally:
        remove_workdir(workdir)


def use_resolver(conf: Path, dns: DnsServer) -> None:
    settings = yaml.safe_load(conf.read_text())
    settings["verification"]["resolver"] = dns.address
    conf.write_text(yaml.safe_dump(settings))


def token_of(conf: Path, domain: str) -> str:
    done = cli(conf, "verify", "start", "shop", domain)
    match = re.search(
        rf'^  _smtpplus-verify\.{re.escape(domain)} TXT "smtpplus-verify=([A-Za-z0-9_-]+)"$', done.stdout, re.M
    )
    assert match, done.stdout
    return match.group(1)


def pending_domains(conf: Path) -> set[str]:
    user = load_config(conf).directory.lookup("shop")
    assert user is not None
    return set(user.pending_domains)


@needs_dnsmasq
def test_domain_txt_found_missing_and_wrong(dns_conf: Path) -> None:
    good, wrong = token_of(dns_conf, "good.test"), token_of(dns_conf, "wrong.test")
    assert token_of(dns_conf, "good.test") == good  # shown again, not replaced
    records = [
        ("_smtpplus-verify.good.test", f"smtpplus-verify={good}"),
        ("good.test", f"v=spf1 ip4:{RELAY_IP} -all"),
        ("_smtpplus-verify.wrong.test", f"smtpplus-verify={good}"),  # another domain's token
        ("wrong.test", f"v=spf1 ip4:{RELAY_IP} -all"),
    ]
    token_of(dns_conf, "missing.test")
    with DnsServer(dns_conf.parent / "dns", txt=records) as dns:
        use_resolver(dns_conf, dns)

        missing = cli(dns_conf, "verify", "check", "shop", "missing.test", status=1)
        assert "no TXT record _smtpplus-verify.missing.test found" in missing.stderr
        assert f"asked {dns.address}" in missing.stderr

        wrong_token = cli(dns_conf, "verify", "check", "shop", "wrong.test", status=1)
        assert "not the token for shop" in wrong_token.stderr and wrong not in wrong_token.stderr.split("read:")[0]
        assert f'smtpplus-verify={wrong}"' in wrong_token.stderr  # says what it must read

        verified = cli(dns_conf, "verify", "check", "shop", "good.test")
        assert "good.test is verified" in verified.stdout and "warning:" not in verified.stderr
        assert "_smtpplus-verify.good.test" in dns.log_tail(200)  # really asked the DNS server

    assert pending_domains(dns_conf) == {"missing.test", "wrong.test", "strict.test"}
    user = load_config(dns_conf).directory.lookup("shop")
    assert user is not None and user.authorized_domains == {"good.test"}
    # The token is used up with the verification.
    cli(dns_conf, "verify", "check", "shop", "good.test", status=1)


@needs_dnsmasq
def test_domain_dmarc_reject_and_spf_fail_are_warned(dns_conf: Path) -> None:
    token = token_of(dns_conf, "strict.test")
    records = [
        ("_smtpplus-verify.strict.test", f"smtpplus-verify={token}"),
        ("strict.test", "v=spf1 include:_spf.provider.test -all"),
        ("_spf.provider.test", "v=spf1 ip4:198.51.100.0/24 ~all"),
        ("_dmarc.strict.test", "v=DMARC1; p=reject; rua=mailto:dmarc@strict.test"),
        ("good.test", "v=spf1 mx -all"),
        ("_dmarc.good.test", "v=DMARC1; p=reject"),
    ]
    token_good = token_of(dns_conf, "good.test")
    records.append(("_smtpplus-verify.good.test", f"smtpplus-verify={token_good}"))
    with DnsServer(
        dns_conf.parent / "dns", txt=records, hosts=[("mx1.good.test", RELAY_IP)], mx=[("good.test", "mx1.good.test")]
    ) as dns:
        use_resolver(dns_conf, dns)
        strict = cli(dns_conf, "verify", "check", "shop", "strict.test")
        assert "strict.test is verified" in strict.stdout
        (warning,) = [line for line in strict.stderr.splitlines() if line.startswith("warning:")]
        assert "DMARC p=reject" in warning and f"gives fail for this relay's address {RELAY_IP}" in warning
        assert f"ip4:{RELAY_IP}" in warning and "rejected" in warning

        # SPF passes through mx: the same DMARC policy is no problem.
        good = cli(dns_conf, "verify", "check", "shop", "good.test")
        assert "good.test is verified" in good.stdout and "warning:" not in good.stderr
    assert pending_domains(dns_conf) == {"missing.test", "wrong.test"}


@needs_dnsmasq
def test_dns_server_stops_and_unreachable_resolver_is_refused(dns_conf: Path) -> None:
    token_of(dns_conf, "good.test")
    dns = DnsServer(dns_conf.parent / "dns")
    with dns:
        assert dns.alive()
        use_resolver(dns_conf, dns)
    assert not dns.alive()
    down = cli(dns_conf, "verify", "check", "shop", "good.test", status=1)
    assert "could not look up _smtpplus-verify.good.test" in down.stderr
    assert pending_domains(dns_conf) >= {"good.test"}
