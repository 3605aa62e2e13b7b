"""doctor's Postfix and port rules (admin/doctor_postfix.py), without Postfix: what postconf said
and what a probe saw, as values; certificates made here with ``cryptography``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpplus_milter.admin.doctor_postfix import (
    PostfixView,
    certificate_check,
    evaluate_postfix,
    milter_names,
    parse_main_cf,
    parse_master_cf,
    policy_checks,
    port_check,
    split_milters,
    transport_checks,
)
from smtpplus_milter.config import SocketSpec
from smtpplus_milter.core.doctor import Status
from smtpplus_milter.infra.tls_probe import Failure, Probe
from tests.support.builders import config_with

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
QUEUE = "/var/spool/postfix"
OURS = "unix:/var/spool/postfix/smtpplus/milter.sock"
DKIM = "inet:127.0.0.1:8891"
PRIORITY = {"queues": {1: "high", 2: "high", 3: "normal", 4: "normal", 5: "normal"}}


def _config(tmp_path: Path, **settings: Any) -> Any:
    return config_with(tmp_path, settings={"milter": {"socket": OURS}, **settings})


def _view(**main_cf: str) -> PostfixView:
    base = {
        "smtpd_milters": OURS,
        "milter_default_action": "tempfail",
        "enable_long_queue_ids": "yes",
        "queue_directory": QUEUE,
        "smtpd_recipient_restrictions": "",
        "smtpd_end_of_data_restrictions": "",
    }
    return PostfixView({**base, **main_cf}, frozenset({("smtpplus-high", "unix"), ("smtp", "inet")}))


def _by_check(checks: list[Any]) -> dict[str, Any]:
    return {check.check: check for check in checks}


def test_postconf_output_is_parsed() -> None:
    text = "smtpd_milters = unix:a, { inet:b:1, connect_timeout=10s }\nenable_long_queue_ids = no\n"
    assert parse_main_cf(text) == {
        "smtpd_milters": "unix:a, { inet:b:1, connect_timeout=10s }",
        "enable_long_queue_ids": "no",
    }
    master = "smtp       inet  n       -       y       -       -       smtpd\n    -o a=b\nsmtpplus-high unix - - y - 10 smtp\n"
    assert parse_master_cf(master) == {("smtp", "inet"), ("smtpplus-high", "unix")}


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        pytest.param("unix:a, inet:127.0.0.1:8891", ["unix:a", DKIM], id="commas"),
        pytest.param("unix:a inet:127.0.0.1:8891", ["unix:a", DKIM], id="spaces"),
        pytest.param("{ inet:127.0.0.1:8891, connect_timeout=10s }, unix:a", [DKIM, "unix:a"], id="braced-group"),
        pytest.param("", [], id="empty"),
    ],
)
def test_split_milters(value: str, addresses: list[str]) -> None:
    assert [address for address, _ in split_milters(value)] == addresses


@pytest.mark.parametrize(
    ("smtpd_milters", "status", "fix"),
    [
        pytest.param(OURS, Status.OK, "", id="only-ours"),
        pytest.param(f"{OURS}, {DKIM}", Status.OK, "", id="ours-then-dkim"),
        pytest.param("unix:smtpplus/milter.sock, " + DKIM, Status.OK, "", id="chroot-relative-form"),
        pytest.param(
            f"{DKIM}, {OURS}", Status.FAIL, f"smtpd_milters = unix:smtpplus/milter.sock, {DKIM}", id="dkim-first"
        ),
        pytest.param(DKIM, Status.FAIL, f"smtpd_milters = unix:smtpplus/milter.sock, {DKIM}", id="missing"),
        pytest.param("", Status.FAIL, "smtpd_milters = unix:smtpplus/milter.sock", id="no-milters"),
        pytest.param("unix:/elsewhere/milter.sock", Status.FAIL, None, id="another-socket"),
    ],
)
def test_milter_order(tmp_path: Path, smtpd_milters: str, status: Status, fix: str | None) -> None:
    check = _by_check(evaluate_postfix(_config(tmp_path), _view(smtpd_milters=smtpd_milters)))["postfix_milter_order"]
    assert check.status is status, check
    if fix is not None:
        assert check.fix == fix


def test_milter_order_with_inet_socket(tmp_path: Path) -> None:
    config = _config(tmp_path, milter={"socket": "inet:8899@127.0.0.1"})
    checks = _by_check(evaluate_postfix(config, _view(smtpd_milters=f"{DKIM}, inet:127.0.0.1:8899")))
    assert checks["postfix_milter_order"].status is Status.FAIL
    assert checks["postfix_milter_order"].fix == f"smtpd_milters = inet:127.0.0.1:8899, {DKIM}"


@pytest.mark.parametrize(
    ("name", "value", "check", "status"),
    [
        pytest.param("milter_default_action", "tempfail", "postfix_milter_default_action", Status.OK, id="tempfail"),
        pytest.param("milter_default_action", "accept", "postfix_milter_default_action", Status.FAIL, id="accept"),
        pytest.param("milter_default_action", "reject", "postfix_milter_default_action", Status.WARN, id="reject"),
        pytest.param("enable_long_queue_ids", "yes", "postfix_long_queue_ids", Status.OK, id="long-ids"),
        pytest.param("enable_long_queue_ids", "no", "postfix_long_queue_ids", Status.FAIL, id="short-ids"),
    ],
)
def test_settings(tmp_path: Path, name: str, value: str, check: str, status: Status) -> None:
    found = _by_check(evaluate_postfix(_config(tmp_path), _view(**{name: value})))[check]
    assert found.status is status
    assert (found.fix == "") is (status is Status.OK)


def test_transports(tmp_path: Path) -> None:
    services = {("smtpplus-high", "unix"), ("smtpplus-fanout", "inet")}
    checks = transport_checks(["smtpplus-high", "smtpplus-low", "smtpplus-fanout"], services)
    assert [(check.subject, check.status) for check in checks] == [
        ("smtpplus-high", Status.OK),
        ("smtpplus-low", Status.FAIL),
        ("smtpplus-fanout", Status.FAIL),  # an inet listener of that name is not the transport
    ]
    assert "postfix-config" in checks[1].fix
    assert [check.status for check in transport_checks([], services)] == [Status.OK]
    routed = _by_check(evaluate_postfix(_config(tmp_path, priority=PRIORITY), _view()))["postfix_transports"]
    assert (routed.subject, routed.status) == ("smtpplus-high", Status.OK)


POLICY = "unix:private/smtpplus-policy"


@pytest.mark.parametrize(
    ("recipient", "end_of_data", "statuses"),
    [
        pytest.param(f"check_policy_service {POLICY}", f"check_policy_service {POLICY}", ["OK", "OK"], id="both"),
        pytest.param(
            f"check_policy_service {{ {POLICY}, timeout=10s }}, permit_sasl_authenticated",
            f"check_policy_service unix:{QUEUE}/private/smtpplus-policy",
            ["OK", "OK"],
            id="braced-and-absolute",
        ),
        pytest.param(
            f"permit_sasl_authenticated, check_policy_service {POLICY}", "", ["WARN", "FAIL"], id="after-permit"
        ),
        pytest.param("check_policy_service unix:private/other", "", ["FAIL", "FAIL"], id="another-service"),
    ],
)
def test_policy(recipient: str, end_of_data: str, statuses: list[str]) -> None:
    main_cf = {"smtpd_recipient_restrictions": recipient, "smtpd_end_of_data_restrictions": end_of_data}
    addresses = {POLICY, f"unix:{QUEUE}/private/smtpplus-policy"}
    assert [check.status.value for check in policy_checks(main_cf, addresses, POLICY)] == statuses


def test_policy_only_when_enabled(tmp_path: Path) -> None:
    assert "postfix_policy" not in _by_check(evaluate_postfix(_config(tmp_path), _view()))
    checks = [c for c in evaluate_postfix(_config(tmp_path, policy={}), _view()) if c.check == "postfix_policy"]
    assert [(c.subject, c.status) for c in checks] == [
        ("smtpd_recipient_restrictions", Status.FAIL),
        ("smtpd_end_of_data_restrictions", Status.FAIL),
    ]
    assert checks[0].fix == f"smtpd_recipient_restrictions = check_policy_service {POLICY}"


# --- ports ---------------------------------------------------------------------------------------

TLS = {"starttls": True, "tls_version": "TLSv1.3", "certificate": b"x"}


@pytest.mark.parametrize(
    ("port", "seen", "status", "words"),
    [
        pytest.param(
            587, {**TLS, "auth_after_tls": ("PLAIN", "LOGIN")}, Status.OK, "AUTH PLAIN LOGIN only after", id="good-587"
        ),
        pytest.param(2525, {**TLS, "auth_after_tls": ("PLAIN",)}, Status.OK, "only after", id="good-2525"),
        pytest.param(25, TLS, Status.WARN, "no AUTH", id="25-without-auth"),
        pytest.param(587, TLS, Status.FAIL, "no AUTH after it", id="587-without-auth"),
        pytest.param(3000, TLS, Status.FAIL, "no AUTH after it", id="client-port-without-auth"),
        pytest.param(587, {"auth_before_tls": ("PLAIN",)}, Status.FAIL, "STARTTLS is not offered", id="no-starttls"),
        pytest.param(
            25,
            {**TLS, "auth_before_tls": ("PLAIN",), "auth_after_tls": ("PLAIN",)},
            Status.FAIL,
            "before STARTTLS",
            id="auth-in-clear",
        ),
        pytest.param(
            587, {"failure": Failure.REFUSED, "error": "refused"}, Status.FAIL, "nothing listens", id="refused"
        ),
        pytest.param(
            587, {"failure": Failure.TIMEOUT, "error": "timed out"}, Status.FAIL, "no SMTP server", id="timeout"
        ),
        pytest.param(
            587, {"starttls": True, "failure": Failure.TLS, "error": "bad"}, Status.FAIL, "then: bad", id="handshake"
        ),
    ],
)
def test_port_check(port: int, seen: dict[str, Any], status: Status, words: str) -> None:
    check = port_check(Probe("127.0.0.1", port, **seen))
    assert (check.subject, check.status) == (f"127.0.0.1:{port}", status)
    assert words in check.found
    assert (check.fix == "") is (status is Status.OK)


def test_refused_client_port_names_the_redirect() -> None:
    assert "deploy/nftables" in port_check(Probe("127.0.0.1", 2525, failure=Failure.REFUSED)).fix
    assert "deploy/nftables" not in port_check(Probe("127.0.0.1", 25, failure=Failure.REFUSED)).fix


def _certificate(names: list[str] | None, cn: str, start: dt.datetime, end: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


YEAR_AGO, IN_A_YEAR = NOW - dt.timedelta(days=365), NOW + dt.timedelta(days=365)


@pytest.mark.parametrize(
    ("names", "cn", "start", "end", "hostname", "status", "words"),
    [
        pytest.param(["relay.example"], "x", YEAR_AGO, IN_A_YEAR, "relay.example", Status.OK, "365 days", id="ok"),
        pytest.param(["relay.example"], "x", YEAR_AGO, IN_A_YEAR, "RELAY.example.", Status.OK, "", id="case-and-dot"),
        pytest.param(["*.example"], "x", YEAR_AGO, IN_A_YEAR, "relay.example", Status.OK, "", id="wildcard"),
        pytest.param(
            ["*.example"],
            "x",
            YEAR_AGO,
            IN_A_YEAR,
            "a.relay.example",
            Status.FAIL,
            "not among",
            id="wildcard-one-label",
        ),
        pytest.param(
            ["*.relay.example"], "x", YEAR_AGO, IN_A_YEAR, "relay.example", Status.FAIL, "", id="wildcard-not-bare"
        ),
        pytest.param(
            ["other.example"],
            "relay.example",
            YEAR_AGO,
            IN_A_YEAR,
            "relay.example",
            Status.FAIL,
            "",
            id="cn-ignored-with-san",
        ),
        pytest.param(None, "relay.example", YEAR_AGO, IN_A_YEAR, "relay.example", Status.OK, "", id="cn-without-san"),
        pytest.param(["xn--bcher-kva.example"], "x", YEAR_AGO, IN_A_YEAR, "bücher.example", Status.OK, "", id="idna"),
        pytest.param(
            ["relay.example"],
            "x",
            YEAR_AGO,
            NOW + dt.timedelta(days=10),
            "relay.example",
            Status.WARN,
            "expires in 10 days",
            id="soon",
        ),
        pytest.param(
            ["relay.example"],
            "x",
            YEAR_AGO,
            NOW - dt.timedelta(days=1),
            "relay.example",
            Status.FAIL,
            "expired on 2026-11-30",
            id="expired",
        ),
        pytest.param(
            ["relay.example"],
            "x",
            NOW + dt.timedelta(days=1),
            IN_A_YEAR,
            "relay.example",
            Status.FAIL,
            "not valid before",
            id="future",
        ),
        pytest.param(["relay.example"], "x", YEAR_AGO, IN_A_YEAR, "", Status.WARN, "no host name", id="no-hostname"),
    ],
)
def test_certificate(
    names: list[str] | None, cn: str, start: dt.datetime, end: dt.datetime, hostname: str, status: Status, words: str
) -> None:
    der = _certificate(names, cn, start, end)
    check = certificate_check("relay:587", der, hostname, 21, NOW.timestamp())
    assert (check.check, check.status) == ("tls", status), check
    assert words in check.found
    assert (check.fix == "") is (status is Status.OK)


def test_unreadable_certificate() -> None:
    assert certificate_check("relay:587", b"junk", "relay.example", 21, NOW.timestamp()).status is Status.FAIL


def test_socket_spec_forms() -> None:
    # The chroot-relative name is only offered for a socket inside the queue directory.
    assert milter_names(SocketSpec.parse(OURS), QUEUE) >= {OURS, "unix:smtpplus/milter.sock"}
    assert milter_names(SocketSpec.parse("unix:/run/m.sock"), QUEUE) == {"unix:/run/m.sock", "local:/run/m.sock"}
