"""The DNS checks of ``doctor``: will receivers accept mail of this domain from this relay?

Every function takes a :class:`~smtpplus_milter.core.dnscheck.Lookup` and values and returns
:class:`~smtpplus_milter.core.doctor.Check` values (docs/doctor.md, "DNS checks"):

* :func:`spf_check` (``spf``, subject the domain): SPF passes for every relay IP; else FAIL with
  the record to publish, built by :func:`suggest_spf` (the existing record with the missing
  ``ip4:``/``ip6:`` merged in before its ``all`` term; never an added DNS lookup).
* :func:`dkim_checks` / :func:`dkim_check` (``dkim``, subject ``SEL._domainkey.DOMAIN``): a public
  key is published for each configured selector, and an RSA key is at least 2048 bits.
* :func:`dmarc_check` (``dmarc``, subject the domain): the policy, and for ``quarantine``/``reject``
  whether this relay's mail aligns (return path or DKIM ``d=``), by :func:`organizational_domain`.
* :func:`ptr_check` (``ptr``, subject the IP): the IP has a PTR whose name resolves back to it.

A resolver problem (timeout, SERVFAIL) is never OK and never FAIL: the check says WARN
"could not check: ...". Every fix is a record in zone-file syntax an operator can paste.
SPF is evaluated by :mod:`smtpplus_milter.core.dnscheck`'s evaluator; nothing here evaluates it again.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Sequence

from smtpplus_milter.core.dnscheck import (
    SPF_LOOKUP_LIMIT,
    DnsFailure,
    IPAddress,
    Lookup,
    ReverseLookup,
    check_spf,
    spf_lookup_costs,
    spf_records,
)
from smtpplus_milter.core.doctor import Check, Status

# Two-label public suffixes under which an organization registers the third label. A deliberate
# simplification of the public suffix list: the organizational domain is the last two labels, or
# three under one of these (docs/doctor.md says so).
SHORT_SUFFIXES = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au",
        "co.nz", "org.nz", "net.nz",
        "co.jp", "ne.jp", "or.jp", "ac.jp",
        "co.za", "org.za",
        "com.br", "net.br", "org.br",
        "com.cn", "net.cn", "org.cn",
        "co.in", "net.in", "org.in",
        "com.mx", "com.ar", "com.tr", "co.kr", "co.il", "com.sg", "com.hk", "com.tw",
    }
)  # fmt: skip

RSA_MIN_BITS = 1024  # below: receivers ignore the signature (RFC 8301 forbids verifying it)
RSA_GOOD_BITS = 2048  # what RFC 8301 asks signers to use
_TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes
_MODIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*=")  # RFC 7208 §12: name=value


def zone_txt(name: str, text: str) -> str:
    """*text* as a TXT record line for a zone file, split into 255-byte strings when longer."""
    chunks = [text[i : i + _TXT_CHUNK] for i in range(0, len(text), _TXT_CHUNK)] or [""]
    return f"{name}. IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def _could_not(check: str, subject: str, exc: DnsFailure) -> Check:
    return Check(check, subject, Status.WARN, f"could not check: {exc}", "retry; if it persists, fix the resolver")


# --- SPF -------------------------------------------------------------------------------------------


def _ip_term(ip: IPAddress) -> str:
    return f"ip{ip.version}:{ip}"


def suggest_spf(existing: str | None, relay_ips: Iterable[IPAddress | str]) -> str:
    """The SPF record to publish so that it passes for *relay_ips*, adding no DNS lookup.

    With an *existing* record, the ``ip4:``/``ip6:`` terms it lacks go just before its ``all``
    term (or, without one, at the end of its mechanisms, before any modifier): everything it
    already allows or refuses stays as it was. Without one, the new record ends in ``~all``
    (softfail), not ``-all``: a domain that had no SPF may well send from other places too (its
    own mailbox provider), and ``-all`` would make those fail outright; move to ``-all`` once
    every source is listed.
    """
    ips = [ipaddress.ip_address(ip) if isinstance(ip, str) else ip for ip in relay_ips]
    if existing is None:
        return " ".join(["v=spf1", *dict.fromkeys(_ip_term(ip) for ip in ips), "~all"])
    terms = existing.split()
    present = {term.lstrip("+").lower() for term in terms}
    new = [term for term in dict.fromkeys(_ip_term(ip) for ip in ips) if term.lower() not in present]
    at = len(terms)
    for index, term in enumerate(terms[1:], start=1):
        bare = term.lstrip("+-~?").lower()
        if bare == "all" or _MODIFIER.match(term):
            at = index  # the all term, or the first modifier (mechanisms come before modifiers)
            break
    return " ".join(terms[:at] + new + terms[at:])


def spf_check(lookup: Lookup, domain: str, relay_ips: Sequence[IPAddress | str]) -> Check:
    """Does *domain*'s SPF pass for every relay IP? FAIL with the record to publish when not."""
    if not relay_ips:
        return Check(
            "spf",
            domain,
            Status.WARN,
            "no relay IPs configured: SPF not checked",
            "set doctor.relay_ips (or verification.relay_ips) to this relay's public addresses",
        )
    try:
        records = spf_records(lookup, domain)
    except DnsFailure as exc:
        return _could_not("spf", domain, exc)
    results = [(ip, check_spf(lookup, domain, ip)) for ip in relay_ips]
    for _, spf in results:
        if spf.result == "temperror":
            return _could_not("spf", domain, DnsFailure(spf.reason))
    if all(spf.result == "pass" for _, spf in results):
        listed = ", ".join(str(ip) for ip, _ in results)
        return Check("spf", domain, Status.OK, f"SPF passes for {listed} ({records[0]})")
    found = "; ".join(f"{spf.result} for {ip} ({spf.reason})" for ip, spf in results if spf.result != "pass")
    missing = [ip for ip, spf in results if spf.result != "pass"]
    if len(records) > 1:
        fix = (
            f"{domain} has {len(records)} SPF records and receivers then ignore all of them: "
            f"replace them by one:\n{zone_txt(domain, suggest_spf(records[0], missing))}"
        )
        return Check("spf", domain, Status.FAIL, found, fix)
    existing = records[0] if records else None
    fix = zone_txt(domain, suggest_spf(existing, missing))
    if existing is None:
        fix += "\n(~all, not -all: the domain may send from elsewhere too; tighten once every source is listed)"
    else:
        try:
            costs = spf_lookup_costs(lookup, domain)
        except DnsFailure as exc:
            return _could_not("spf", domain, exc)
        total = sum(cost for _, cost in costs)
        if total > SPF_LOOKUP_LIMIT:
            worst = ", ".join(f"{term} ({cost})" for term, cost in sorted(costs, key=lambda c: -c[1]) if cost > 1)
            fix += (
                f"\nthe record already needs {total} DNS lookups (at most {SPF_LOOKUP_LIMIT}; the ip4/ip6 terms "
                f"add none): replace the costliest includes by the ip4/ip6 networks they list: {worst or 'a/mx terms'}"
            )
    return Check("spf", domain, Status.FAIL, found, fix)


# --- DKIM ------------------------------------------------------------------------------------------


def _tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())  # whitespace inside a value is folding
    return tags


def dkim_checks(lookup: Lookup, domain: str, selectors: Sequence[str]) -> tuple[Check, ...]:
    """:func:`dkim_check` for each selector; without any, one WARN asking for ``doctor.dkim_selectors``."""
    if not selectors:
        return (
            Check(
                "dkim",
                domain,
                Status.WARN,
                "no DKIM selector configured: DKIM not checked",
                "set doctor.dkim_selectors to the selector(s) your DKIM signer uses",
            ),
        )
    return tuple(dkim_check(lookup, domain, selector) for selector in selectors)


def dkim_check(lookup: Lookup, domain: str, selector: str) -> Check:
    """Is a usable DKIM public key published at ``SELECTOR._domainkey.DOMAIN``?"""
    name = f"{selector}._domainkey.{domain}"
    generate = f"opendkim-genkey -b 2048 -s {selector} -d {domain} writes {selector}.txt"
    try:
        texts = lookup.txt(name)
    except DnsFailure as exc:
        return _could_not("dkim", name, exc)
    keys = [_tags(text) for text in texts]
    keys = [tags for tags in keys if tags.get("v", "DKIM1") == "DKIM1" and "p" in tags]
    if not keys:
        return Check(
            "dkim",
            name,
            Status.FAIL,
            "no DKIM key published",
            f"publish the signer's public key at {name} ({generate})",
        )
    tags = keys[0]
    kind = tags.get("k", "rsa").lower()
    if not tags["p"]:
        return Check(
            "dkim",
            name,
            Status.FAIL,
            "the key is revoked (empty p=)",
            f"publish the key the signer uses now at {name}, or sign with a selector that has one ({generate})",
        )
    if kind == "ed25519":
        return Check("dkim", name, Status.OK, "k=ed25519 key published")
    if kind != "rsa":
        return Check("dkim", name, Status.WARN, f"unknown key type k={kind}: receivers may ignore it", generate)
    bits = _rsa_bits(tags["p"])
    if bits is None:
        return Check(
            "dkim",
            name,
            Status.FAIL,
            "k=rsa but p= is not a readable RSA public key (base64 of a DER SubjectPublicKeyInfo)",
            f"publish the signer's public key at {name} unchanged ({generate})",
        )
    if bits < RSA_MIN_BITS:
        return Check(
            "dkim", name, Status.FAIL, f"k=rsa {bits}-bit key: receivers ignore signatures under 1024 bits", generate
        )
    if bits < RSA_GOOD_BITS:
        return Check("dkim", name, Status.WARN, f"k=rsa {bits}-bit key: 2048 bits are recommended", generate)
    return Check("dkim", name, Status.OK, f"k=rsa {bits}-bit key published")


def _rsa_bits(p: str) -> int | None:
    # cryptography reads the DER structure; an RSA key of the wrong shape is not ours to parse.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(base64.b64decode(p, validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return None
    return key.key_size if isinstance(key, RSAPublicKey) else None


# --- DMARC -----------------------------------------------------------------------------------------


def organizational_domain(domain: str) -> str:
    """The last two labels of *domain*, or three under a known two-label suffix (``co.uk``).

    A simplification of the public suffix list, good enough for alignment of a relay's own domains.
    """
    labels = domain.lower().rstrip(".").split(".")
    keep = 3 if ".".join(labels[-2:]) in SHORT_SUFFIXES else 2
    return ".".join(labels[-keep:])


def _aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


def _dmarc_record(lookup: Lookup, domain: str) -> tuple[str, dict[str, str]] | None:
    """The DMARC record that applies to *domain* (its own, else its organizational domain's) and its tags."""
    names = [domain]
    org = organizational_domain(domain)
    if org != domain.lower():
        names.append(org)
    for index, name in enumerate(names):
        records = [_tags(t) for t in lookup.txt(f"_dmarc.{name}")]
        records = [tags for tags in records if tags.get("v", "").upper() == "DMARC1"]
        if len(records) == 1:
            tags = records[0]
            if index > 0 and "sp" in tags:
                tags = {**tags, "p": tags["sp"]}  # a subdomain gets the organization's sp=
            return f"_dmarc.{name}", tags
    return None


def dmarc_check(lookup: Lookup, domain: str, *, return_path_domain: str | None, dkim_domains: Iterable[str]) -> Check:
    """The DMARC policy of *domain*, and whether this relay's mail aligns with it.

    *return_path_domain*: the envelope sender's domain when bounces go to a return path of their
    own (``bounces.return_path``), else None (the domain itself is the envelope sender's).
    *dkim_domains*: the ``d=`` domains the relay's mail is signed with (those with a selector).
    SPF alignment only says the domains match; whether SPF passes is :func:`spf_check`'s part.
    """
    suggestion = zone_txt(f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}")
    try:
        found = _dmarc_record(lookup, domain)
    except DnsFailure as exc:
        return _could_not("dmarc", domain, exc)
    if found is None:
        return Check(
            "dmarc",
            domain,
            Status.WARN,
            "no DMARC record (some large receivers junk or refuse bulk mail without one)",
            f"{suggestion}\n(p=none only asks for reports at rua=, an address you must create: "
            "read them before moving to p=quarantine)",
        )
    where, tags = found
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Check("dmarc", domain, Status.WARN, f"{where} has no valid p= (receivers ignore it)", suggestion)
    if policy == "none":
        return Check(
            "dmarc",
            domain,
            Status.WARN,
            f"p=none at {where}: monitoring only, receivers apply no policy",
            "once the aggregate reports show all its mail aligned, publish p=quarantine in the same record",
        )
    sender = return_path_domain or domain
    aspf, adkim = tags.get("aspf", "r").lower(), tags.get("adkim", "r").lower()
    how = []
    if _aligned(sender, domain, aspf):
        how.append(f"return path {sender} (aspf={aspf})")
    how += [f"DKIM d={d} (adkim={adkim})" for d in dict.fromkeys(dkim_domains) if _aligned(d, domain, adkim)]
    if how:
        return Check("dmarc", domain, Status.OK, f"p={policy} at {where}; aligned by " + " and ".join(how))
    return Check(
        "dmarc",
        domain,
        Status.FAIL,
        f"p={policy} at {where} but neither the return path {sender} (aspf={aspf}) nor a DKIM signature aligns: "
        f"receivers will {'refuse' if policy == 'reject' else 'junk'} its mail",
        f"sign its mail with d={domain} (and set doctor.dkim_selectors), or use a return path under "
        + (domain if aspf == "s" else organizational_domain(domain)),
    )


# --- PTR -------------------------------------------------------------------------------------------


def ptr_check(lookup: ReverseLookup, ip: IPAddress | str, *, hostname: str = "") -> Check:
    """Does *ip* have a PTR whose name resolves back to *ip* (forward-confirmed reverse DNS)?

    *hostname*: this relay's name (Postfix's myhostname), used in the fix.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    subject = str(address)
    rtype = "A" if address.version == 4 else "AAAA"
    try:
        names = lookup.ptr(address)
        confirmed = [name for name in names if address in lookup.addresses(name)]
    except DnsFailure as exc:
        return _could_not("ptr", subject, exc)
    host = hostname or (names[0] if names else "HOSTNAME")
    if not names:
        return Check(
            "ptr",
            subject,
            Status.FAIL,
            "no PTR record (many receivers refuse mail from an IP without one)",
            f"ask the owner of {address} (your hosting provider) for the PTR "
            f"{_reverse_name(address)}. IN PTR {host}.\nand publish {host}. IN {rtype} {address}",
        )
    if confirmed:
        return Check("ptr", subject, Status.OK, f"PTR {confirmed[0]}, which resolves back to {address}")
    return Check(
        "ptr",
        subject,
        Status.FAIL,
        f"PTR {', '.join(names)} does not resolve back to {address} (not forward-confirmed)",
        f"{names[0]}. IN {rtype} {address}",
    )


def _reverse_name(address: IPAddress) -> str:
    return address.reverse_pointer
