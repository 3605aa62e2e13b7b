"""doctor's DNS checks (core/deliverability.py) against an in-memory Lookup: each OK, WARN and FAIL."""

from __future__ import annotations

import base64
import functools
import ipaddress
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpplus_milter.core.deliverability import (
    dkim_check,
    dkim_checks,
    dmarc_check,
    organizational_domain,
    ptr_check,
    spf_check,
    suggest_spf,
    zone_txt,
)
from smtpplus_milter.core.dnscheck import SPF_LOOKUP_LIMIT, DnsFailure, IPAddress, check_spf, spf_lookup_costs
from smtpplus_milter.core.doctor import Status

RELAY4 = "192.0.2.10"
RELAY6 = "2001:db8::10"


@dataclass
class FakeDns:
    """A Lookup over dictionaries; a name in *broken* raises DnsFailure like a SERVFAIL would."""

    txts: dict[str, list[str]] = field(default_factory=dict)
    hosts: dict[str, list[str]] = field(default_factory=dict)
    ptrs: dict[str, list[str]] = field(default_factory=dict)
    broken: frozenset[str] = frozenset()

    def _ask(self, name: str) -> None:
        if name in self.broken:
            raise DnsFailure(f"{name}: SERVFAIL")

    def txt(self, name: str) -> list[str]:
        self._ask(name)
        return list(self.txts.get(name, []))

    def addresses(self, name: str) -> list[IPAddress]:
        self._ask(name)
        return [ipaddress.ip_address(a) for a in self.hosts.get(name, [])]

    def mx(self, name: str) -> list[str]:
        self._ask(name)
        return []

    def ptr(self, ip: IPAddress) -> list[str]:
        self._ask(str(ip))
        return list(self.ptrs.get(str(ip), []))


def _includes(count: int) -> dict[str, list[str]]:
    """*count* chained include domains, each costing one lookup (an a: term of its own)."""
    return {f"inc{i}.test": [f"v=spf1 a:host{i}.test -all"] for i in range(count)}


# --- SPF -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("txts", "relay_ips", "status", "found", "fix"),
    [
        pytest.param(
            {"ex.test": [f"v=spf1 ip4:{RELAY4} ip6:{RELAY6} -all"]},
            (RELAY4, RELAY6),
            Status.OK,
            "SPF passes for 192.0.2.10, 2001:db8::10",
            "",
            id="passes-for-every-ip",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 include:spf.prov.test -all"], "spf.prov.test": [f"v=spf1 ip4:{RELAY4}/24 -all"]},
            (RELAY4,),
            Status.OK,
            "SPF passes for 192.0.2.10",
            "",
            id="passes-through-include",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 mx -all"]},
            (RELAY4,),
            Status.FAIL,
            "fail for 192.0.2.10",
            'ex.test. IN TXT "v=spf1 mx ip4:192.0.2.10 -all"',
            id="fail-merged-before-all",
        ),
        pytest.param(
            {"ex.test": [f"v=spf1 ip4:{RELAY4} ~all"]},
            (RELAY4, RELAY6),
            Status.FAIL,
            "softfail for 2001:db8::10",
            'ex.test. IN TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ~all"',
            id="softfail-only-missing-ip-added",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 a ?all"]},
            (RELAY4,),
            Status.FAIL,
            "neutral for 192.0.2.10",
            'ex.test. IN TXT "v=spf1 a ip4:192.0.2.10 ?all"',
            id="neutral",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 redirect=_spf.ex.test"], "_spf.ex.test": ["v=spf1 -all"]},
            (RELAY4,),
            Status.FAIL,
            "fail for 192.0.2.10",
            'ex.test. IN TXT "v=spf1 ip4:192.0.2.10 redirect=_spf.ex.test"',
            id="redirect-ip-before-the-modifier",
        ),
        pytest.param(
            {},
            (RELAY4, RELAY6),
            Status.FAIL,
            "none for 192.0.2.10",
            'ex.test. IN TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ~all"\n(~all, not -all',
            id="none-new-record-softfail",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 include:missing.test -all"]},
            (RELAY4,),
            Status.FAIL,
            "permerror for 192.0.2.10",
            'ex.test. IN TXT "v=spf1 include:missing.test ip4:192.0.2.10 -all"',
            id="permerror-include-without-record",
        ),
        pytest.param(
            {
                "ex.test": ["v=spf1 " + " ".join(f"include:inc{i}.test" for i in range(6)) + " a mx -all"],
                "inc0.test": ["v=spf1 include:inc6.test include:inc7.test include:inc8.test include:inc9.test -all"],
                **{k: v for k, v in _includes(10).items() if k != "inc0.test"},
            },
            (RELAY4,),
            Status.FAIL,
            "permerror for 192.0.2.10 (more than 10 DNS-querying terms",
            "the record already needs 21 DNS lookups (at most 10; the ip4/ip6 terms add none): replace the "
            "costliest includes by the ip4/ip6 networks they list: include:inc0.test (9), include:inc1.test (2)",
            id="permerror-too-many-lookups-says-what-to-flatten",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 -all", f"v=spf1 ip4:{RELAY4} -all"]},
            (RELAY4,),
            Status.FAIL,
            "permerror for 192.0.2.10 (ex.test has 2 SPF records)",
            'receivers then ignore all of them: replace them by one:\nex.test. IN TXT "v=spf1 ip4:192.0.2.10 -all"',
            id="two-records",
        ),
        pytest.param(
            {"ex.test": ["v=spf1 -all"]},
            (),
            Status.WARN,
            "no relay IPs configured",
            "set doctor.relay_ips",
            id="no-relay-ips",
        ),
    ],
)
def test_spf_check(
    txts: dict[str, list[str]], relay_ips: tuple[str, ...], status: Status, found: str, fix: str
) -> None:
    check = spf_check(FakeDns(txts), "ex.test", relay_ips)
    assert (check.check, check.subject, check.status) == ("spf", "ex.test", status)
    assert found in check.found
    assert fix in check.fix
    assert bool(check.fix) == (status is not Status.OK)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("ex.test", id="the-domain"),
        pytest.param("spf.prov.test", id="an-include"),
    ],
)
def test_spf_check_resolver_failure_warns(broken: str) -> None:
    dns = FakeDns({"ex.test": ["v=spf1 include:spf.prov.test -all"]}, broken=frozenset({broken}))
    check = spf_check(dns, "ex.test", (RELAY4,))
    assert check.status is Status.WARN
    assert check.found.startswith("could not check: ") and broken in check.found


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param(None, "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ~all", id="new"),
        pytest.param("v=spf1 -all", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all", id="before-all"),
        pytest.param("v=spf1 mx", "v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10", id="no-all-appended"),
        pytest.param("v=spf1 ip4:192.0.2.10 -all", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all", id="keeps-present"),
        pytest.param(
            "v=spf1 include:a.test exp=why.test",
            "v=spf1 include:a.test ip4:192.0.2.10 ip6:2001:db8::10 exp=why.test",
            id="before-modifier",
        ),
    ],
)
def test_suggest_spf(existing: str | None, expected: str) -> None:
    assert suggest_spf(existing, (RELAY4, RELAY6)) == expected


_EXISTING = st.lists(
    st.sampled_from(
        [
            "mx",
            "a",
            "include:inc0.test",
            "include:inc1.test",
            "ip4:198.51.100.0/24",
            "ip6:2001:db8:1::/48",
            "exists:x.test",
        ]
    ),
    max_size=8,
    unique=True,
).flatmap(
    lambda terms: st.sampled_from(["-all", "~all", "?all", "", "redirect=inc2.test"]).map(
        lambda tail: " ".join(["v=spf1", *terms, tail]).strip()
    )
)
_IPS = st.lists(
    st.ip_addresses(network="192.0.2.0/24") | st.ip_addresses(network="2001:db8:ff::/64"), min_size=1, max_size=4
)


@settings(max_examples=200, deadline=None)
@given(existing=st.none() | _EXISTING, ips=_IPS)
def test_suggested_spf_passes_and_adds_no_lookup(existing: str | None, ips: list[IPAddress]) -> None:
    dns = FakeDns(_includes(3))
    if existing is not None:
        dns.txts["ex.test"] = [existing]
    before = sum(cost for _, cost in spf_lookup_costs(dns, "ex.test"))
    dns.txts["ex.test"] = [suggest_spf(existing, ips)]
    assert sum(cost for _, cost in spf_lookup_costs(dns, "ex.test")) == before
    assert before <= SPF_LOOKUP_LIMIT
    for ip in ips:
        assert check_spf(dns, "ex.test", ip).result == "pass", dns.txts["ex.test"]


def test_zone_txt_splits_long_text() -> None:
    line = zone_txt("s._domainkey.ex.test", "x" * 300)
    assert line == f's._domainkey.ex.test. IN TXT "{"x" * 255}" "{"x" * 45}"'


# --- DKIM ------------------------------------------------------------------------------------------


@functools.cache
def _rsa_p(bits: int) -> str:
    if bits < 1024:  # cryptography generates no such key any more; a public one is just (e, n)
        key = rsa.RSAPublicNumbers(65537, 2 ** (bits - 1) + 1).public_key()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return base64.b64encode(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


def _ed25519_p() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


NAME = "s1._domainkey.ex.test"
GENKEY = "opendkim-genkey -b 2048 -s s1 -d ex.test"


@pytest.mark.parametrize(
    ("texts", "status", "found", "fix"),
    [
        pytest.param(lambda: [f"v=DKIM1; k=rsa; p={_rsa_p(2048)}"], Status.OK, "k=rsa 2048-bit key", "", id="rsa-2048"),
        pytest.param(lambda: [f"p={_rsa_p(2048)}"], Status.OK, "k=rsa 2048-bit key", "", id="no-v-no-k"),
        pytest.param(
            lambda: [f"v=DKIM1; k=rsa; p={_rsa_p(2048)[:100]} {_rsa_p(2048)[100:]}"],
            Status.OK,
            "k=rsa 2048-bit key",
            "",
            id="whitespace-in-p",
        ),
        pytest.param(lambda: [f"v=DKIM1; k=ed25519; p={_ed25519_p()}"], Status.OK, "k=ed25519", "", id="ed25519"),
        pytest.param(lambda: [f"v=DKIM1; p={_rsa_p(1024)}"], Status.WARN, "k=rsa 1024-bit key", GENKEY, id="rsa-1024"),
        pytest.param(lambda: [f"v=DKIM1; p={_rsa_p(512)}"], Status.FAIL, "k=rsa 512-bit key", GENKEY, id="rsa-512"),
        pytest.param(lambda: ["v=DKIM1; k=rsa; p="], Status.FAIL, "revoked", GENKEY, id="revoked"),
        pytest.param(lambda: ["v=DKIM1; k=rsa; p=bm90IGEga2V5"], Status.FAIL, "not a readable", GENKEY, id="garbage"),
        pytest.param(lambda: ["v=DKIM1; k=dsa; p=AAAA"], Status.WARN, "unknown key type k=dsa", GENKEY, id="unknown-k"),
        pytest.param(
            lambda: [],
            Status.FAIL,
            "no DKIM key",
            f"publish the signer's public key at {NAME} ({GENKEY} writes s1.txt)",
            id="missing",
        ),
        pytest.param(lambda: ["v=spf1 -all"], Status.FAIL, "no DKIM key", GENKEY, id="other-txt-only"),
    ],
)
def test_dkim_check(texts: object, status: Status, found: str, fix: str) -> None:
    assert callable(texts)
    check = dkim_check(FakeDns({NAME: texts()}), "ex.test", "s1")
    assert (check.check, check.subject, check.status) == ("dkim", NAME, status)
    assert found in check.found
    assert fix in check.fix


def test_dkim_checks_without_selector_warns_once() -> None:
    (check,) = dkim_checks(FakeDns(), "ex.test", ())
    assert (check.subject, check.status) == ("ex.test", Status.WARN)
    assert "doctor.dkim_selectors" in check.fix


def test_dkim_checks_one_per_selector_and_resolver_failure() -> None:
    dns = FakeDns({NAME: [f"p={_rsa_p(2048)}"]}, broken=frozenset({"s2._domainkey.ex.test"}))
    checks = dkim_checks(dns, "ex.test", ("s1", "s2"))
    assert [(c.subject, c.status) for c in checks] == [(NAME, Status.OK), ("s2._domainkey.ex.test", Status.WARN)]
    assert checks[1].found.startswith("could not check: ")


# --- DMARC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        pytest.param("ex.test", "ex.test", id="two-labels"),
        pytest.param("mail.news.ex.test", "ex.test", id="deep"),
        pytest.param("mail.shop.co.uk", "shop.co.uk", id="short-suffix"),
        pytest.param("Shop.CO.UK.", "shop.co.uk", id="case-and-dot"),
    ],
)
def test_organizational_domain(domain: str, expected: str) -> None:
    assert organizational_domain(domain) == expected


@pytest.mark.parametrize(
    ("txts", "domain", "return_path", "dkim", "status", "found", "fix"),
    [
        pytest.param(
            {},
            "ex.test",
            None,
            (),
            Status.WARN,
            "no DMARC record",
            '_dmarc.ex.test. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@ex.test"',
            id="missing",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=none"]}, "ex.test", None, (), Status.WARN, "p=none", "p=quarantine",
            id="none-monitoring",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; rua=mailto:a@ex.test"]}, "ex.test", None, (), Status.WARN, "no valid p=",
            "v=DMARC1; p=none", id="no-p",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject"]}, "ex.test", None, (), Status.OK,
            "aligned by return path ex.test (aspf=r)", "", id="reject-own-return-path",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject"]}, "ex.test", "bounces.ex.test", (), Status.OK,
            "return path bounces.ex.test (aspf=r)", "", id="reject-relaxed-subdomain-return-path",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=quarantine; aspf=s"]}, "ex.test", "bounces.ex.test", (), Status.FAIL,
            "neither the return path bounces.ex.test (aspf=s)", "use a return path under ex.test",
            id="quarantine-strict-subdomain-fails",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=quarantine; aspf=s"]}, "ex.test", "bounces.ex.test", ("ex.test",),
            Status.OK, "DKIM d=ex.test (adkim=r)", "", id="quarantine-strict-rescued-by-dkim",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject"]}, "ex.test", "bounce.relay.test", (), Status.FAIL,
            "receivers will refuse", "sign its mail with d=ex.test", id="reject-foreign-return-path",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject; adkim=s"]}, "ex.test", "bounce.relay.test", ("mail.ex.test",),
            Status.FAIL, "nor a DKIM signature aligns", "d=ex.test", id="reject-strict-dkim-subdomain",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject; sp=none"]}, "news.ex.test", None, (), Status.WARN,
            "p=none at _dmarc.ex.test", "", id="subdomain-takes-sp-of-org",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject"]}, "news.ex.test", "rp.other.test", (), Status.FAIL,
            "p=reject at _dmarc.ex.test", "use a return path under ex.test", id="subdomain-takes-p-of-org",
        ),
        pytest.param(
            {"_dmarc.ex.test": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}, "ex.test", None, (), Status.WARN,
            "no DMARC record", "", id="two-records-ignored",
        ),
    ],
)  # fmt: skip
def test_dmarc_check(
    txts: dict[str, list[str]],
    domain: str,
    return_path: str | None,
    dkim: tuple[str, ...],
    status: Status,
    found: str,
    fix: str,
) -> None:
    check = dmarc_check(FakeDns(txts), domain, return_path_domain=return_path, dkim_domains=dkim)
    assert (check.check, check.subject, check.status) == ("dmarc", domain, status), check.found
    assert found in check.found
    assert fix in check.fix


def test_dmarc_check_resolver_failure_warns() -> None:
    dns = FakeDns(broken=frozenset({"_dmarc.ex.test"}))
    check = dmarc_check(dns, "ex.test", return_path_domain=None, dkim_domains=())
    assert check.status is Status.WARN and check.found.startswith("could not check: ")


# --- PTR -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "ptrs", "hosts", "status", "found", "fix"),
    [
        pytest.param(
            RELAY4, {RELAY4: ["mail.ex.test"]}, {"mail.ex.test": [RELAY4]}, Status.OK,
            "PTR mail.ex.test, which resolves back to 192.0.2.10", "", id="confirmed-v4",
        ),
        pytest.param(
            RELAY6, {RELAY6: ["mail.ex.test"]}, {"mail.ex.test": ["192.0.2.99", RELAY6]}, Status.OK,
            "resolves back to 2001:db8::10", "", id="confirmed-v6",
        ),
        pytest.param(
            RELAY4, {RELAY4: ["other.test", "mail.ex.test"]}, {"mail.ex.test": [RELAY4]}, Status.OK,
            "PTR mail.ex.test", "", id="second-ptr-confirms",
        ),
        pytest.param(
            RELAY4, {}, {}, Status.FAIL, "no PTR record",
            "10.2.0.192.in-addr.arpa. IN PTR relay.ex.test.\nand publish relay.ex.test. IN A 192.0.2.10",
            id="no-ptr",
        ),
        pytest.param(
            RELAY4, {RELAY4: ["mail.ex.test"]}, {"mail.ex.test": ["192.0.2.99"]}, Status.FAIL,
            "does not resolve back", "mail.ex.test. IN A 192.0.2.10", id="not-confirmed",
        ),
        pytest.param(
            RELAY6, {RELAY6: ["mail.ex.test"]}, {}, Status.FAIL, "not forward-confirmed",
            "mail.ex.test. IN AAAA 2001:db8::10", id="ptr-name-without-address",
        ),
    ],
)  # fmt: skip
def test_ptr_check(
    ip: str, ptrs: dict[str, list[str]], hosts: dict[str, list[str]], status: Status, found: str, fix: str
) -> None:
    check = ptr_check(FakeDns(hosts=hosts, ptrs=ptrs), ip, hostname="relay.ex.test")
    assert (check.check, check.subject, check.status) == ("ptr", ip, status)
    assert found in check.found
    assert fix in check.fix


@pytest.mark.parametrize("broken", [pytest.param(RELAY4, id="ptr"), pytest.param("mail.ex.test", id="forward")])
def test_ptr_check_resolver_failure_warns(broken: str) -> None:
    dns = FakeDns(hosts={"mail.ex.test": [RELAY4]}, ptrs={RELAY4: ["mail.ex.test"]}, broken=frozenset({broken}))
    check = ptr_check(dns, RELAY4)
    assert check.status is Status.WARN and check.found.startswith("could not check: ")
