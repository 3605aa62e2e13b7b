"""doctor's DNS checks against a real private dnsmasq, asked through infra/dns.py's Resolver.

One server serves good and broken SPF, DKIM, DMARC and PTR records for domains under ``.test``;
each case runs the check exactly as ``doctor`` does (a real UDP query, dnspython's parsing).
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lab.harness import DnsServer, free_port
from smtpplus_milter.config.values import HostPort
from smtpplus_milter.core.deliverability import dkim_check, dmarc_check, ptr_check, spf_check, suggest_spf
from smtpplus_milter.core.dnscheck import check_spf
from smtpplus_milter.core.doctor import Check, Status
from smtpplus_milter.infra.dns import Resolver

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq (Debian dnsmasq-base)")

RELAY = "192.0.2.10"
RELAY6 = "2001:db8::10"


def _rsa_p(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return base64.b64encode(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolver]:
    txt = [
        ("good.test", f"v=spf1 ip4:{RELAY} ip6:{RELAY6} -all"),
        ("soft.test", "v=spf1 include:_spf.provider.test ~all"),
        ("_spf.provider.test", "v=spf1 ip4:198.51.100.0/24 ~all"),
        ("deep.test", "v=spf1 " + " ".join(f"include:i{n}.test" for n in range(11)) + " -all"),
        *[(f"i{n}.test", "v=spf1 ip4:198.51.100.1 -all") for n in range(11)],
        ("s2048._domainkey.good.test", f"v=DKIM1; k=rsa; p={_rsa_p(2048)}"),  # over 255 octets: 2 strings
        ("s1024._domainkey.good.test", f"v=DKIM1; k=rsa; p={_rsa_p(1024)}"),
        ("old._domainkey.good.test", "v=DKIM1; k=rsa; p="),
        ("_dmarc.good.test", "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"),
        ("_dmarc.watch.test", "v=DMARC1; p=none"),
        ("_dmarc.strict.test", "v=DMARC1; p=quarantine; aspf=s"),
    ]
    hosts = [("mail.good.test", RELAY), ("mail.good.test", RELAY6)]  # and their PTRs
    ptr = [("192.0.2.20", "mail.elsewhere.test")]  # a PTR whose name has no address
    with DnsServer(
        tmp_path_factory.mktemp("dns"),
        txt=txt,
        hosts=hosts,
        ptr=ptr,
        local=("test", "2.0.192.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"),
    ) as server:
        host, port = server.address.rsplit(":", 1)
        yield Resolver(HostPort(host, int(port)), timeout=3)


CASES: list[tuple[str, Callable[[Resolver], Check], Status, str, str]] = [
    ("spf-ok", lambda r: spf_check(r, "good.test", (RELAY, RELAY6)), Status.OK, "SPF passes", ""),
    (
        "spf-softfail",
        lambda r: spf_check(r, "soft.test", (RELAY,)),
        Status.FAIL,
        "softfail for 192.0.2.10",
        'soft.test. IN TXT "v=spf1 include:_spf.provider.test ip4:192.0.2.10 ~all"',
    ),
    ("spf-none", lambda r: spf_check(r, "nothing.test", (RELAY,)), Status.FAIL, "none", "v=spf1 ip4:192.0.2.10 ~all"),
    (
        "spf-too-many-lookups",
        lambda r: spf_check(r, "deep.test", (RELAY,)),
        Status.FAIL,
        "more than 10 DNS-querying terms",
        "the record already needs 11 DNS lookups",
    ),
    ("spf-no-relay-ips", lambda r: spf_check(r, "good.test", ()), Status.WARN, "no relay IPs", "doctor.relay_ips"),
    ("dkim-2048", lambda r: dkim_check(r, "good.test", "s2048"), Status.OK, "k=rsa 2048-bit key", ""),
    ("dkim-1024", lambda r: dkim_check(r, "good.test", "s1024"), Status.WARN, "k=rsa 1024-bit key", "-b 2048"),
    ("dkim-revoked", lambda r: dkim_check(r, "good.test", "old"), Status.FAIL, "revoked", "opendkim-genkey"),
    (
        "dkim-missing",
        lambda r: dkim_check(r, "good.test", "nokey"),
        Status.FAIL,
        "no DKIM key",
        "publish the signer's public key at nokey._domainkey.good.test",
    ),
    (
        "dmarc-reject-aligned",
        lambda r: dmarc_check(r, "good.test", return_path_domain="bounces.good.test", dkim_domains=()),
        Status.OK,
        "p=reject at _dmarc.good.test; aligned by return path bounces.good.test",
        "",
    ),
    (
        "dmarc-none",
        lambda r: dmarc_check(r, "watch.test", return_path_domain=None, dkim_domains=()),
        Status.WARN,
        "monitoring only",
        "p=quarantine",
    ),
    (
        "dmarc-missing",
        lambda r: dmarc_check(r, "soft.test", return_path_domain=None, dkim_domains=()),
        Status.WARN,
        "no DMARC record",
        '_dmarc.soft.test. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@soft.test"',
    ),
    (
        "dmarc-strict-misaligned",
        lambda r: dmarc_check(r, "strict.test", return_path_domain="bounces.strict.test", dkim_domains=()),
        Status.FAIL,
        "aspf=s",
        "use a return path under strict.test",
    ),
    ("ptr-confirmed", lambda r: ptr_check(r, RELAY), Status.OK, "PTR mail.good.test", ""),
    ("ptr-confirmed-v6", lambda r: ptr_check(r, RELAY6), Status.OK, "resolves back to 2001:db8::10", ""),
    (
        "ptr-not-confirmed",
        lambda r: ptr_check(r, "192.0.2.20"),
        Status.FAIL,
        "not forward-confirmed",
        "mail.elsewhere.test. IN A 192.0.2.20",
    ),
    (
        "ptr-missing",
        lambda r: ptr_check(r, "192.0.2.30", hostname="relay.good.test"),
        Status.FAIL,
        "no PTR record",
        "30.2.0.192.in-addr.arpa. IN PTR relay.good.test.",
    ),
    # dnsmasq refuses names outside its local domains: a resolver problem, never OK or FAIL.
    ("refused-warns", lambda r: spf_check(r, "outside.example", (RELAY,)), Status.WARN, "could not check: ", ""),
]


@pytest.mark.parametrize(("run", "status", "found", "fix"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_dns_check_against_dnsmasq(
    resolver: Resolver, run: Callable[[Resolver], Check], status: Status, found: str, fix: str
) -> None:
    check = run(resolver)
    assert check.status is status, check
    assert found in check.found
    assert fix in check.fix


def test_suggested_record_passes_when_served(tmp_path: Path) -> None:
    # The record doctor suggests for soft.test, published for real, passes for the relay IPs.
    suggested = suggest_spf("v=spf1 include:_spf.provider.test ~all", (RELAY, RELAY6))
    records = [("soft.test", suggested), ("_spf.provider.test", "v=spf1 ip4:198.51.100.0/24 ~all")]
    with DnsServer(tmp_path / "dns", txt=records) as server:
        host, port = server.address.rsplit(":", 1)
        resolver = Resolver(HostPort(host, int(port)), timeout=3)
        assert spf_check(resolver, "soft.test", (RELAY, RELAY6)).status is Status.OK
        assert check_spf(resolver, "soft.test", RELAY).lookups == 1  # the include only


def test_unreachable_resolver_warns() -> None:
    resolver = Resolver(HostPort("127.0.0.1", free_port()), timeout=0.5)  # nothing listens there
    checks = [
        spf_check(resolver, "good.test", (RELAY,)),
        dkim_check(resolver, "good.test", "s2048"),
        dmarc_check(resolver, "good.test", return_path_domain=None, dkim_domains=()),
        ptr_check(resolver, ipaddress.ip_address(RELAY)),
    ]
    assert [c.status for c in checks] == [Status.WARN] * 4
    assert all(c.found.startswith("could not check: ") for c in checks)
