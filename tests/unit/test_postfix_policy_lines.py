"""postfix-config: the check_policy_service lines for the policy daemon, and how its socket is named."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from smtpplus_milter.admin.postfix import (
    POLICY_DEFAULT_ACTION,
    fanout_transport,
    generate,
    local_listener,
    policy_address,
    policy_lines,
    render,
)
from smtpplus_milter.config.values import FANOUT_LISTEN, FANOUT_REINJECT, HostPort, OwnMail, parse_policy_socket
from tests.support.builders import config_with


@pytest.mark.parametrize(
    ("listen", "queue_directory", "address", "warned"),
    [
        pytest.param(
            "unix:/var/spool/postfix/private/smtpplus-policy",
            "/var/spool/postfix",
            "unix:private/smtpplus-policy",
            False,
            id="default-relative-to-the-queue",
        ),
        pytest.param(
            "unix:/var/spool/postfix/smtpplus/policy.sock",
            "/var/spool/postfix/",
            "unix:smtpplus/policy.sock",
            False,
            id="other-directory-in-the-queue-trailing-slash",
        ),
        pytest.param(
            "unix:/srv/postfix-2/private/smtpplus-policy",
            "/srv/postfix-2",
            "unix:private/smtpplus-policy",
            False,
            id="second-instance-own-queue",
        ),
        pytest.param(
            "unix:/run/smtpplus-policyd/policy.sock",
            "/var/spool/postfix",
            "unix:/run/smtpplus-policyd/policy.sock",
            True,
            id="outside-the-queue-absolute",
        ),
        pytest.param(
            "unix:/var/spool/postfix-old/private/policy",
            "/var/spool/postfix",
            "unix:/var/spool/postfix-old/private/policy",
            True,
            id="name-prefix-is-not-inside",
        ),
        pytest.param(
            "unix:/var/spool/postfix/../policy",
            "/var/spool/postfix",
            "unix:/var/spool/postfix/../policy",
            True,
            id="dot-dot-leaves-the-queue",
        ),
        pytest.param(
            "inet:127.0.0.1:10040", "/var/spool/postfix", "inet:127.0.0.1:10040", False, id="inet-postfix-form"
        ),
        pytest.param(
            "inet:10040@127.0.0.1", "/var/spool/postfix", "inet:127.0.0.1:10040", False, id="inet-milter-form"
        ),
        pytest.param("inet:[::1]:10040", "/var/spool/postfix", "inet:[::1]:10040", False, id="ipv6-bracketed"),
        pytest.param("inet6:10040@::1", "/var/spool/postfix", "inet:[::1]:10040", False, id="inet6-milter-form"),
        pytest.param("inet:localhost:10040", "/var/spool/postfix", "inet:localhost:10040", False, id="inet-name"),
    ],
)
def test_policy_address_forms(listen: str, queue_directory: str, address: str, warned: bool) -> None:
    got, warning = policy_address(parse_policy_socket(listen), queue_directory)
    assert got == address
    assert (warning is not None) == warned
    if warning is not None:
        assert "chroot" in warning and listen in warning


def _default_lines() -> dict[str, str]:
    return policy_lines(parse_policy_socket("unix:/var/spool/postfix/private/smtpplus-policy")).main_cf


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param(
            "smtpd_recipient_restrictions", "check_policy_service unix:private/smtpplus-policy", id="rcpt-question"
        ),
        pytest.param(
            "smtpd_end_of_data_restrictions", "check_policy_service unix:private/smtpplus-policy", id="counting-step"
        ),
        pytest.param(
            "smtpd_policy_service_default_action",
            "451 4.3.5 SMTP+ policy service unavailable; try again later",
            id="outage-means-later",
        ),
        pytest.param("smtpd_policy_service_try_limit", "2", id="one-retry"),
        pytest.param("smtpd_policy_service_timeout", "10s", id="short-timeout"),
    ],
)
def test_policy_main_cf_lines(name: str, value: str) -> None:
    assert _default_lines()[name] == value


def test_only_the_chosen_lines_and_each_says_why() -> None:
    lines = policy_lines(parse_policy_socket("inet:127.0.0.1:10040"))
    # Settings left at Postfix's defaults on purpose: setting them would change every other
    # check_policy_service of the same Postfix too.
    for default in ("request_limit", "max_idle", "max_ttl", "policy_context"):
        assert f"smtpd_policy_service_{default}" not in lines.main_cf
        assert any(default in note for note in lines.notes["smtpd_policy_service_timeout"]), default
    assert set(lines.notes) == set(lines.main_cf)
    assert all(lines.notes[name] for name in lines.main_cf)
    # The default action is a temporary refusal: an outage never accepts mail nobody counted.
    assert POLICY_DEFAULT_ACTION.startswith("451 4.")


@pytest.mark.parametrize(
    "fragment",
    [
        pytest.param("FIRST", id="merge-before-permit"),
        pytest.param("-o smtpd_recipient_restrictions", id="master-cf-overrides"),
        pytest.param("smtpd_end_of_data_restrictions: if you already set it", id="merge-eod"),
        pytest.param(", { default_action = 451 4.3.5 SMTP+", id="per-service-form-braces-the-spaced-value"),
        pytest.param("smtpplus-policyd.socket", id="start-the-socket"),
    ],
)
def test_policy_warnings(fragment: str) -> None:
    warnings = policy_lines(parse_policy_socket("unix:/var/spool/postfix/private/smtpplus-policy")).warnings
    assert any(fragment in warning for warning in warnings)


def test_generate_without_a_policy_section_prints_no_policy_lines(tmp_path: Path) -> None:
    snippets = generate(config_with(tmp_path).postfix)
    assert not any(name.startswith(("smtpd_policy", "smtpd_recipient", "smtpd_end_of")) for name in snippets.main_cf)
    assert "check_policy_service" not in render(snippets)


def test_generate_and_render_with_a_policy_socket(tmp_path: Path) -> None:
    inputs = dataclasses.replace(
        config_with(tmp_path).postfix, policy_listen=parse_policy_socket("unix:/srv/pf/private/smtpplus-policy")
    )
    snippets = generate(inputs, queue_directory="/srv/pf")
    assert snippets.main_cf["smtpd_end_of_data_restrictions"] == "check_policy_service unix:private/smtpplus-policy"
    assert any("before any permit_" in warning for warning in snippets.warnings)
    text = render(snippets)
    lines = text.splitlines()
    at = lines.index("smtpd_policy_service_try_limit = 2")
    assert lines[at - 1].startswith("# ") and "counting it again" in lines[at - 1]  # its why, right above it
    # Only the policy lines carry notes: the other main.cf lines look as before.
    assert lines[lines.index("enable_long_queue_ids = yes") - 1].startswith("message_strip_characters = ")


def _local_listener() -> str:
    own = OwnMail("alerts.email.smtp", HostPort("127.0.0.1", 10026), "smtpplus@example.com")
    return local_listener((own,))[0]


def _fanout_reinject() -> str:
    return "\n".join(fanout_transport(FANOUT_LISTEN, FANOUT_REINJECT, PurePosixPath("/etc/postfix")).master)


@pytest.mark.parametrize(
    "master",
    [
        pytest.param(_local_listener, id="alert-and-code-listener"),
        pytest.param(_fanout_reinject, id="fanout-reinjection"),
    ],
)
def test_the_loopback_listeners_never_ask_the_policy(master: Callable[[], str]) -> None:
    # main.cf's end-of-data question applies to every smtpd: alert mail and the fanout copies must
    # go through while the policy daemon is down (they are not customer mail, or were counted).
    text = master()
    assert "smtpd\n" in text
    assert "\n  -o smtpd_end_of_data_restrictions=\n" in text


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param("", "check_policy_service unix:private/smtpplus-policy", id="empty"),
        pytest.param(
            "permit_sasl_authenticated, reject_unauth_destination",
            "check_policy_service unix:private/smtpplus-policy, permit_sasl_authenticated, reject_unauth_destination",
            id="before-the-permits",
        ),
        pytest.param(
            "check_policy_service unix:private/smtpplus-policy,\n permit_mynetworks",
            "check_policy_service unix:private/smtpplus-policy, permit_mynetworks",
            id="already-there",
        ),
    ],
)
def test_setup_merges_the_check_first(existing: str, expected: str) -> None:
    from smtpplus_milter.admin.setup import merged_restrictions

    assert merged_restrictions("check_policy_service unix:private/smtpplus-policy", existing) == expected
