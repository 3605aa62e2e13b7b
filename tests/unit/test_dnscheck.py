"""The SPF subset and the DMARC/SPF warnings of ``verify check``, over a dictionary instead of DNS.

The same code against a real DNS server (dnsmasq): tests/e2e/test_verify_e2e.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from smtpplus_milter.core.dnscheck import (
    DnsFailure,
    IPAddress,
    check_spf,
    check_token,
    deliverability_warnings,
    dmarc_policy,
)


class FakeDns:
    def __init__(
        self,
        txt: dict[str, list[str]],
        hosts: dict[str, list[str]] | None = None,
        mx: dict[str, list[str]] | None = None,
    ) -> None:
        self._txt, self._hosts, self._mx = txt, hosts or {}, mx or {}
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        if name == "broken.test":
            raise DnsFailure("SERVFAIL")
        return self._txt.get(name, [])

    def addresses(self, name: str) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in self._hosts.get(name, [])]

    def mx(self, name: str) -> list[str]:
        return self._mx.get(name, [])


RELAY = "192.0.2.10"
ZONE = FakeDns(
    {
        "ip4.test": ["v=spf1 ip4:192.0.2.0/24 -all"],
        "ip4-host.test": ["v=spf1 ip4:192.0.2.10 -all"],
        "other.test": ["v=spf1 ip4:198.51.100.0/24 -all"],
        "soft.test": ["v=spf1 ip4:198.51.100.0/24 ~all"],
        "neutral.test": ["v=spf1 ?all"],
        "noall.test": ["v=spf1 ip4:198.51.100.1"],
        "ip6.test": ["v=spf1 ip6:2001:db8::/32 -all"],
        "include.test": ["v=spf1 include:ip4.test -all"],
        "include-fail.test": ["v=spf1 include:other.test ~all"],
        "include-none.test": ["v=spf1 include:nothing.test -all"],
        "redirect.test": ["v=spf1 redirect=ip4.test"],
        "redirect-none.test": ["v=spf1 redirect=nothing.test"],
        "a.test": ["v=spf1 a -all"],
        "a-cidr.test": ["v=spf1 a:hosts.test/24 -all"],
        "mx.test": ["v=spf1 mx -all"],
        "exists.test": ["v=spf1 exists:hosts.test -all"],
        "two.test": ["v=spf1 -all", "v=spf1 +all"],
        "macro.test": ["v=spf1 exists:%{i}.spf.test -all"],
        "unknown.test": ["v=spf1 foo:bar -all"],
        "loop.test": ["v=spf1 include:loop.test -all"],
        "many.test": ["v=spf1 " + " ".join(f"a:h{i}.test" for i in range(11)) + " -all"],
        "uppercase.test": ["V=SPF1 IP4:192.0.2.0/24 -ALL"],
        "temp.test": ["v=spf1 include:broken.test -all"],
        "nospf.test": ["some other text"],
    },
    hosts={"a.test": ["192.0.2.10"], "hosts.test": ["192.0.2.99"], "mail.mx.test": ["192.0.2.10"]},
    mx={"mx.test": ["mail.mx.test"]},
)


@pytest.mark.parametrize(
    ("domain", "ip", "result"),
    [
        pytest.param("ip4.test", RELAY, "pass", id="ip4-range"),
        pytest.param("ip4-host.test", RELAY, "pass", id="ip4-single"),
        pytest.param("ip4-host.test", "192.0.2.11", "fail", id="ip4-single-other"),
        pytest.param("other.test", RELAY, "fail", id="dash-all"),
        pytest.param("soft.test", RELAY, "softfail", id="tilde-all"),
        pytest.param("neutral.test", RELAY, "neutral", id="question-all"),
        pytest.param("noall.test", RELAY, "neutral", id="no-all-is-neutral"),
        pytest.param("ip6.test", "2001:db8::25", "pass", id="ip6"),
        pytest.param("ip6.test", RELAY, "fail", id="ip6-does-not-match-v4"),
        pytest.param("include.test", RELAY, "pass", id="include-pass"),
        pytest.param("include-fail.test", RELAY, "softfail", id="include-no-match-falls-through"),
        pytest.param("include-none.test", RELAY, "permerror", id="include-of-nothing"),
        pytest.param("redirect.test", RELAY, "pass", id="redirect"),
        pytest.param("redirect.test", "198.51.100.7", "fail", id="redirect-fail"),
        pytest.param("redirect-none.test", RELAY, "permerror", id="redirect-to-nothing"),
        pytest.param("a.test", RELAY, "pass", id="a"),
        pytest.param("a-cidr.test", RELAY, "pass", id="a-with-cidr"),
        pytest.param("mx.test", RELAY, "pass", id="mx"),
        pytest.param("exists.test", RELAY, "pass", id="exists"),
        pytest.param("two.test", RELAY, "permerror", id="two-records"),
        pytest.param("macro.test", RELAY, "permerror", id="macros-not-evaluated"),
        pytest.param("unknown.test", RELAY, "permerror", id="unknown-mechanism"),
        pytest.param("loop.test", RELAY, "permerror", id="include-loop-hits-lookup-limit"),
        pytest.param("many.test", RELAY, "permerror", id="eleven-lookups"),
        pytest.param("uppercase.test", RELAY, "pass", id="case-insensitive"),
        pytest.param("temp.test", RELAY, "temperror", id="dns-failure"),
        pytest.param("nospf.test", RELAY, "none", id="no-spf-record"),
        pytest.param("absent.test", RELAY, "none", id="no-txt-at-all"),
    ],
)
def test_spf(domain: str, ip: str, result: str) -> None:
    assert check_spf(ZONE, domain, ip).result == result


@pytest.mark.parametrize(
    ("records", "policy"),
    [
        pytest.param(["v=DMARC1; p=reject; rua=mailto:x@y.test"], "reject", id="reject"),
        pytest.param(["v=DMARC1;p=Quarantine"], "quarantine", id="no-spaces-mixed-case"),
        pytest.param(["v=DMARC1; p=none"], "none", id="none"),
        pytest.param(["something else", "v=DMARC1; p=reject"], "reject", id="among-other-txt"),
        pytest.param(["p=reject"], None, id="no-version-tag"),
        pytest.param([], None, id="no-record"),
    ],
)
def test_dmarc_policy(records: list[str], policy: str | None) -> None:
    assert dmarc_policy(FakeDns({"_dmarc.d.test": records}), "d.test") == policy


def test_token_found_missing_and_wrong() -> None:
    dns = FakeDns({"_smtpplus-verify.d.test": ["smtpplus-verify=right", "google-site-verification=x"]})
    found = check_token(dns, "d.test", lambda text: text == "smtpplus-verify=right")
    assert found.found and found.published == ("smtpplus-verify=right",)
    wrong = check_token(dns, "d.test", lambda text: text == "smtpplus-verify=other")
    assert not wrong.found and wrong.published == ("smtpplus-verify=right",)
    missing = check_token(dns, "e.test", lambda text: True)
    assert not missing.found and missing.published == ()


def test_warnings() -> None:
    dns = FakeDns(
        {
            "strict.test": ["v=spf1 ip4:198.51.100.0/24 -all"],
            "_dmarc.strict.test": ["v=DMARC1; p=reject"],
            "ok.test": ["v=spf1 ip4:192.0.2.0/24 -all"],
            "_dmarc.ok.test": ["v=DMARC1; p=reject"],
            "loose.test": ["v=spf1 -all"],
        }
    )
    (strict,) = deliverability_warnings(dns, "strict.test", (RELAY,))
    assert "DMARC p=reject" in strict and "fail" in strict and f"ip4:{RELAY}" in strict
    assert deliverability_warnings(dns, "ok.test", (RELAY,)) == []
    (loose,) = deliverability_warnings(dns, "loose.test", (RELAY,))
    assert "SPF of loose.test gives fail" in loose and "DMARC" not in loose
    (unchecked,) = deliverability_warnings(dns, "strict.test", ())
    assert "verification.relay_ips" in unchecked
    assert deliverability_warnings(dns, "loose.test", ()) == []
