"""doctor's Postfix and port checks against the lab's real Postfix (admin/doctor_postfix.py).

One stack for the whole module: Postfix wired as ``postfix-config`` prints it (priority transports,
the policy daemon's lines), with a real OpenDKIM. It starts with OpenDKIM BEFORE our milter, the
mistake doctor must flag; each test then changes main.cf or master.cf the way an operator might
(``postconf -e``, ``postconf -MX``) and puts the files back afterwards. The ports are probed with a
real STARTTLS handshake; the submission listener has the lab's self-signed certificate for
relay.test (valid 3650 days)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.harness import Postfix, free_port
from lab.stack import Stack
from smtpplus_milter.admin.doctor_postfix import port_checks, postfix_checks
from smtpplus_milter.config import Config, load_config
from smtpplus_milter.core.doctor import Check, Status

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(policy={}, dkim_domain="yourcompany.com", dkim_before_milter=True, dkim_bits=1024) as running:
        yield running


@pytest.fixture
def postfix(stack: Stack) -> Iterator[Postfix]:
    """The stack's Postfix; main.cf and master.cf as they were after the test (reloaded if changed)."""
    assert stack.postfix is not None
    saved = {name: (stack.postfix.config_dir / name).read_text() for name in ("main.cf", "master.cf")}
    yield stack.postfix
    changed = any((stack.postfix.config_dir / name).read_text() != text for name, text in saved.items())
    for name, text in saved.items():
        stack.postfix.write_config_file(name, text)
    if changed:
        stack.postfix.reload()


def _checks(stack: Stack, postfix: Postfix) -> dict[tuple[str, str], Check]:
    config: Config = load_config(stack.config_path)
    return {(check.check, check.subject): check for check in postfix_checks(config, postfix.config_dir)}


def _statuses(checks: dict[tuple[str, str], Check]) -> dict[tuple[str, str], Status]:
    return {key: check.status for key, check in checks.items()}


def test_dkim_before_our_milter_fails_and_the_fix_passes(stack: Stack, postfix: Postfix) -> None:
    assert stack.dkim is not None
    checks = _checks(stack, postfix)
    order = checks["postfix_milter_order", "smtpd_milters"]
    assert order.status is Status.FAIL and stack.dkim.milter in order.found
    # Everything else is as postfix-config prints it.
    assert {key: status for key, status in _statuses(checks).items() if key[0] != "postfix_milter_order"} == {
        ("postfix_milter_default_action", "milter_default_action"): Status.OK,
        ("postfix_long_queue_ids", "enable_long_queue_ids"): Status.OK,
        ("postfix_transports", "smtpplus-high"): Status.OK,
        ("postfix_transports", "smtpplus-low"): Status.OK,
        ("postfix_policy", "smtpd_recipient_restrictions"): Status.OK,
        ("postfix_policy", "smtpd_end_of_data_restrictions"): Status.OK,
    }
    # The suggested line is what Postfix then runs, and it passes.
    name, _, value = order.fix.partition(" = ")
    postfix.set_main_cf({name: value})
    postfix.reload()
    assert _checks(stack, postfix)["postfix_milter_order", "smtpd_milters"].status is Status.OK


def _postconf(postfix: Postfix, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(postfix.config_dir), *args], check=True, capture_output=True, timeout=10)


CHANGES: list[tuple[str, Callable[[Postfix], None], tuple[str, str], Status]] = [
    (
        "accept",
        lambda p: p.set_main_cf({"milter_default_action": "accept"}),
        ("postfix_milter_default_action", "milter_default_action"),
        Status.FAIL,
    ),
    (
        "reject",
        lambda p: p.set_main_cf({"milter_default_action": "reject"}),
        ("postfix_milter_default_action", "milter_default_action"),
        Status.WARN,
    ),
    (
        "short-ids",
        lambda p: _postconf(p, "-X", "enable_long_queue_ids"),  # Postfix's default: no
        ("postfix_long_queue_ids", "enable_long_queue_ids"),
        Status.FAIL,
    ),
    (
        "missing-transport",
        lambda p: _postconf(p, "-MX", "smtpplus-low/unix"),
        ("postfix_transports", "smtpplus-low"),
        Status.FAIL,
    ),
    (
        "no-policy-at-end-of-data",
        lambda p: p.set_main_cf({"smtpd_end_of_data_restrictions": ""}),
        ("postfix_policy", "smtpd_end_of_data_restrictions"),
        Status.FAIL,
    ),
    (
        "permit-before-policy",
        lambda p: _postconf(
            p,
            "-e",
            "smtpd_recipient_restrictions = permit_sasl_authenticated, " + _value(p, "smtpd_recipient_restrictions"),
        ),
        ("postfix_policy", "smtpd_recipient_restrictions"),
        Status.WARN,
    ),
]


def _value(postfix: Postfix, name: str) -> str:
    done = subprocess.run(
        ["postconf", "-c", str(postfix.config_dir), "-h", name], check=True, capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


@pytest.mark.parametrize(("change", "key", "status"), [pytest.param(*c[1:], id=c[0]) for c in CHANGES])
def test_a_setting_changed_is_flagged(
    stack: Stack, postfix: Postfix, change: Callable[[Postfix], None], key: tuple[str, str], status: Status
) -> None:
    assert _checks(stack, postfix)[key].status is Status.OK
    change(postfix)
    check = _checks(stack, postfix)[key]
    assert check.status is status, check
    assert check.fix


def test_postconf_failing_is_a_warning(stack: Stack) -> None:
    [check] = postfix_checks(load_config(stack.config_path), "/nonexistent/postfix")
    assert (check.check, check.status) == ("postfix", Status.WARN)
    assert "could not check" in check.found


def _ports(host_port: int, hostname: str = "relay.test", warn_days: int = 21) -> dict[str, Check]:
    return {check.check: check for check in port_checks("127.0.0.1", [host_port], hostname, warn_days, time.time())}


def test_submission_port_and_its_certificate(postfix: Postfix) -> None:
    good = _ports(postfix.submission_port)
    assert good["port"].status is Status.OK and "AUTH PLAIN" in good["port"].found, good["port"]
    assert good["tls"].status is Status.OK and "relay.test" in good["tls"].found, good["tls"]
    other = _ports(postfix.submission_port, hostname="mail.other.example")["tls"]
    assert other.status is Status.FAIL and "mail.other.example" in other.fix
    soon = _ports(postfix.submission_port, warn_days=4000)["tls"]  # the lab certificate is valid 3650 days
    assert soon.status is Status.WARN and "expires in" in soon.found
    # An empty hostname means Postfix's myhostname (relay.test in the lab).
    [_, named] = port_checks(
        "127.0.0.1", [postfix.submission_port], "", 21, time.time(), postfix_dir=postfix.config_dir
    )
    assert named.status is Status.OK


def test_nothing_listening(postfix: Postfix) -> None:
    port = free_port()
    checks = port_checks("127.0.0.1", [port], "relay.test", 21, time.time())
    assert [(check.check, check.status) for check in checks] == [("port", Status.FAIL)]
    assert "nothing listens" in checks[0].found and checks[0].fix


@pytest.mark.parametrize(
    ("main_cf", "words"),
    [
        pytest.param({"smtpd_tls_auth_only": "no"}, "before STARTTLS", id="auth-in-clear"),
        pytest.param({"smtpd_tls_security_level": "none"}, "STARTTLS is not offered", id="no-starttls"),
    ],
)
def test_port_25_mistakes(postfix: Postfix, main_cf: dict[str, str], words: str) -> None:
    assert _ports(postfix.smtp_port)["port"].status is Status.OK
    postfix.set_main_cf(main_cf)
    postfix.reload()
    check = _ports(postfix.smtp_port)["port"]
    assert check.status is Status.FAIL and words in check.found, check


# --- the whole command, as an operator runs it ------------------------------------------------------


def test_the_doctor_command_end_to_end(stack: Stack, tmp_path: Path) -> None:
    """``smtpplus-milter doctor`` as its own process on the lab: DNS from a private dnsmasq (all good
    for good.test), this stack's Postfix (OpenDKIM before our milter: the one FAIL) and its submission
    port; JSON out, exit 1, and the failure sent as an alert to a real webhook."""
    import base64
    import json
    import sys

    import yaml
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from lab.harness import DnsServer
    from tests.support.webhook import WebhookReceiver

    assert stack.postfix is not None
    doctor = (sys.executable, "-m", "smtpplus_milter", "doctor")
    relay = "192.0.2.10"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p = base64.b64encode(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()
    txt = [
        ("good.test", f"v=spf1 ip4:{relay} -all"),
        ("mail._domainkey.good.test", f"v=DKIM1; k=rsa; p={p}"),
        ("_dmarc.good.test", "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"),
    ]
    with (
        DnsServer(
            tmp_path / "dns", txt=txt, hosts=[("relay.test", relay)], local=("test", "2.0.192.in-addr.arpa")
        ) as dns,
        WebhookReceiver() as receiver,
    ):
        settings = yaml.safe_load(stack.config_path.read_text(encoding="utf-8"))
        settings["verification"] = {**settings.get("verification", {}), "resolver": dns.address}
        settings["alerts"] = {"webhook": {"url": receiver.url}}
        settings["doctor"] = {
            "relay_ips": [relay],
            "dkim_selectors": ["mail"],
            "postfix_config_dir": str(stack.postfix.config_dir),
            "host": "127.0.0.1",
            "ports": [stack.postfix.submission_port],
            "hostname": "relay.test",
        }
        config = stack.etc / "doctor.yaml"
        config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        done = subprocess.run(
            [*doctor, "-c", str(config), "--domain", "good.test", "--format", "json", "--alert"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        status = {(item["check"], item["subject"]): item["status"] for item in report["checks"]}
        port = f"127.0.0.1:{stack.postfix.submission_port}"
        assert {
            key: status.get(key)
            for key in [
                ("spf", "good.test"),
                ("dkim", "mail._domainkey.good.test"),
                ("dmarc", "good.test"),
                ("ptr", relay),
                ("postfix_milter_order", "smtpd_milters"),
                ("port", port),
                ("tls", port),
            ]
        } == {
            ("spf", "good.test"): "OK",
            ("dkim", "mail._domainkey.good.test"): "OK",
            ("dmarc", "good.test"): "OK",
            ("ptr", relay): "OK",
            ("postfix_milter_order", "smtpd_milters"): "FAIL",
            ("port", port): "OK",
            ("tls", port): "OK",
        }
        assert report["summary"]["fail"] == sum(1 for value in status.values() if value == "FAIL")
        bodies = receiver.wait_for(report["summary"]["fail"])
        assert {body["alertname"] for body in bodies} == {"SMTPPlusDoctorFail"}
        assert "postfix_milter_order smtpd_milters" in {body["sender"] for body in bodies}
