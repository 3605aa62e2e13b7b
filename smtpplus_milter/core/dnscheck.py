"""DNS for domain verification: the ``_smtpplus-verify`` TXT token, DMARC and SPF.

``verify check`` proves control of a domain by the TXT record the customer published, and warns
about what would still stop the domain's mail: a DMARC policy of ``reject``/``quarantine`` that
this relay cannot satisfy because the domain's SPF record does not pass for the relay's IPs
(``verification.relay_ips``).

The SPF evaluator here is a deliberately small subset of RFC 7208 (``ip4``, ``ip6``, ``a``,
``mx``, ``include``, ``exists``, ``redirect``, ``all``, the four qualifiers and the limit of ten
DNS-querying terms; no macros, ``ptr`` never matches). It only feeds a warning, and pyspf,
the full implementation, resolves through its own DNS layer that cannot be pointed at the
configured resolver without patching its internals.

Lookups go through the small :class:`Lookup` interface; :class:`smtpplus_milter.infra.dns.Resolver` implements it with
dnspython, and unit tests use a dictionary.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from smtpplus_milter.core.verification import TOKEN_PREFIX, txt_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4


class DnsFailure(Exception):
    """The DNS could not be asked (timeout, SERVFAIL, refused): nothing is known about the name."""


class Lookup(Protocol):
    def txt(self, name: str) -> list[str]:
        """TXT strings at *name* (one per record, its character-strings joined); [] if none."""

    def addresses(self, name: str) -> list[IPAddress]:
        """A and AAAA at *name*; [] if none."""

    def mx(self, name: str) -> list[str]:
        """MX host names at *name*, best first; [] if none."""


class ReverseLookup(Lookup, Protocol):
    """A :class:`Lookup` that can also ask PTR records (``doctor``'s reverse-DNS check)."""

    def ptr(self, ip: IPAddress) -> list[str]:
        """Host names (no trailing dot) of the PTR records of *ip*'s reverse name; [] if none."""


# --- the token -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenCheck:
    found: bool
    published: tuple[str, ...]  # every smtpplus-verify=... string seen at the name


def check_token(lookup: Lookup, domain: str, matches: Callable[[str], bool]) -> TokenCheck:
    published = tuple(text for text in lookup.txt(txt_name(domain)) if text.startswith(TOKEN_PREFIX))
    return TokenCheck(any(matches(text) for text in published), published)


# --- DMARC ---------------------------------------------------------------------------------------


def dmarc_policy(lookup: Lookup, domain: str) -> str | None:
    """The ``p=`` of the domain's own DMARC record (lower-case), or None when it has none.

    Only ``_dmarc.DOMAIN`` is asked: finding the organizational domain needs the public suffix
    list, and a subdomain without a record of its own is reported as having none.
    """
    for text in lookup.txt(f"_dmarc.{domain}"):
        tags = _tags(text)
        if tags.get("v", "").upper() == "DMARC1":
            return tags.get("p", "").lower() or None
    return None


def _tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    return tags


# --- SPF -----------------------------------------------------------------------------------------

_QUALIFIERS = MappingProxyType({"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"})
_MODIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*=")
_MECHANISM = re.compile(r"^([A-Za-z0-9]+)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?$")


class _PermError(Exception):
    pass


@dataclass
class SpfResult:
    result: str  # pass | fail | softfail | neutral | none | permerror | temperror
    reason: str = ""
    lookups: int = 0
    trail: list[str] = field(default_factory=list)


def check_spf(lookup: Lookup, domain: str, ip: IPAddress | str) -> SpfResult:
    """What a receiver's SPF check would say for mail from *domain* sent by *ip*."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    outcome = SpfResult("none")
    try:
        result, reason = _check_host(lookup, domain, address, outcome)
    except _PermError as exc:
        result, reason = "permerror", str(exc)
    except DnsFailure as exc:
        result, reason = "temperror", str(exc)
    outcome.result, outcome.reason = result, reason
    return outcome


def _spend(outcome: SpfResult, term: str) -> None:
    outcome.lookups += 1
    if outcome.lookups > SPF_LOOKUP_LIMIT:
        raise _PermError(f"more than {SPF_LOOKUP_LIMIT} DNS-querying terms (at {term})")


def spf_records(lookup: Lookup, domain: str) -> list[str]:
    """The SPF records (``v=spf1 ...``) among the TXT records of *domain* (more than one is a permerror)."""
    return [t for t in lookup.txt(domain) if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


def spf_lookup_costs(lookup: Lookup, domain: str) -> tuple[tuple[str, int], ...]:
    """Each DNS-querying term of *domain*'s SPF record with the DNS-querying terms it costs in all.

    The evaluator stops at the first match, so what one IP costs depends on the IP; this is the
    worst case, an IP that matches nothing, which is what must stay within the limit of ten for
    every sender. An ``include``/``redirect`` costs one plus what its record costs (a record that
    cannot be read costs nothing more; a loop stops counting past the limit).
    """
    return tuple(_costs(lookup, domain, depth=0))


def _costs(lookup: Lookup, domain: str, depth: int) -> list[tuple[str, int]]:
    records = spf_records(lookup, domain)
    if len(records) != 1 or depth > SPF_LOOKUP_LIMIT:
        return []
    costs: list[tuple[str, int]] = []
    for term in records[0].split()[1:]:
        name, _, value = term.lstrip("+-~?").partition(":")
        name = name.lower()
        if term.lower().startswith("redirect="):
            target = term.partition("=")[2]
            costs.append((term, 1 + sum(cost for _, cost in _costs(lookup, target, depth + 1))))
        elif name == "include" and value:
            costs.append((term, 1 + sum(cost for _, cost in _costs(lookup, value, depth + 1))))
        elif name.split("/")[0] in ("a", "mx", "exists", "ptr"):
            costs.append((term, 1))
    return costs


def _check_host(lookup: Lookup, domain: str, ip: IPAddress, outcome: SpfResult) -> tuple[str, str]:
    records = spf_records(lookup, domain)
    if not records:
        return "none", f"{domain} has no SPF record"
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records")
    outcome.trail.append(f"{domain}: {records[0]}")
    redirect: str | None = None
    for term in records[0].split()[1:]:
        if _MODIFIER.match(term):
            name, _, value = term.partition("=")
            if name.lower() == "redirect":
                redirect = value
            continue
        if "%" in term:
            raise _PermError(f"{term}: SPF macros are not evaluated here")
        qualifier = _QUALIFIERS.get(term[0])
        mechanism = term[1:] if qualifier else term
        if _matches(lookup, domain, mechanism, ip, outcome):
            return qualifier or "pass", f"{term} in the SPF record of {domain}"
    if redirect is not None:
        _spend(outcome, f"redirect={redirect}")
        result, reason = _check_host(lookup, redirect, ip, outcome)
        if result == "none":
            raise _PermError(f"redirect={redirect}: {redirect} has no SPF record")
        return result, reason
    return "neutral", f"no term of the SPF record of {domain} matches {ip}"


def _network(base: IPAddress, cidr4: str | None, cidr6: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    prefix = cidr4 if base.version == 4 else cidr6
    return ipaddress.ip_network(f"{base}/{prefix or base.max_prefixlen}", strict=False)


def _matches(lookup: Lookup, domain: str, mechanism: str, ip: IPAddress, outcome: SpfResult) -> bool:
    match = _MECHANISM.match(mechanism)
    if not match:
        raise _PermError(f"cannot read the SPF term {mechanism!r}")
    name, argument, cidr4, cidr6 = match.groups()
    name = name.lower()
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        if not argument:
            raise _PermError(f"{mechanism}: {name} needs an address")
        try:
            network = ipaddress.ip_network(f"{argument}/{cidr4}" if cidr4 else argument, strict=False)
        except ValueError:
            raise _PermError(f"{mechanism}: not an IP{name[-1]} network") from None
        if network.version != int(name[-1]):
            raise _PermError(f"{mechanism}: not an IP{name[-1]} network")
        return ip.version == network.version and ip in network
    target = argument or domain
    if name == "a":
        _spend(outcome, mechanism)
        return any(a.version == ip.version and ip in _network(a, cidr4, cidr6) for a in lookup.addresses(target))
    if name == "mx":
        _spend(outcome, mechanism)
        for host in lookup.mx(target)[:10]:
            if any(a.version == ip.version and ip in _network(a, cidr4, cidr6) for a in lookup.addresses(host)):
                return True
        return False
    if name == "include":
        if not argument:
            raise _PermError("include needs a domain")
        _spend(outcome, mechanism)
        result, _ = _check_host(lookup, argument, ip, outcome)
        if result in ("none", "permerror"):
            raise _PermError(f"include:{argument}: {argument} has no usable SPF record")
        return result == "pass"
    if name == "exists":
        _spend(outcome, mechanism)
        return bool(lookup.addresses(target))
    if name == "ptr":
        _spend(outcome, mechanism)
        return False  # discouraged by RFC 7208 and not evaluated: treated as not matching
    raise _PermError(f"unknown SPF mechanism {name!r}")


# --- the report ------------------------------------------------------------------------------------


def deliverability_warnings(lookup: Lookup, domain: str, relay_ips: tuple[str, ...]) -> list[str]:
    """Why mail from *domain* through this relay may still not be delivered, as advice for people."""
    warnings: list[str] = []
    try:
        policy = dmarc_policy(lookup, domain)
    except DnsFailure as exc:
        return [f"could not read the DMARC record of {domain}: {exc}"]
    strict = policy in ("reject", "quarantine")
    if not relay_ips:
        if strict:
            warnings.append(
                f"{domain} publishes DMARC p={policy}; SPF for this relay was not checked "
                "(set verification.relay_ips): receivers will reject or quarantine its mail unless SPF passes "
                f"for the relay or it carries a DKIM signature with d={domain}"
            )
        return warnings
    for ip in relay_ips:
        spf = check_spf(lookup, domain, ip)
        if spf.result == "pass":
            continue
        why = f"SPF of {domain} gives {spf.result} for this relay's address {ip} ({spf.reason})"
        fix = f"ask the customer to add ip{ipaddress.ip_address(ip).version}:{ip} to the SPF record of {domain}"
        if strict:
            warnings.append(
                f"{domain} publishes DMARC p={policy} and {why}: its mail through this relay will be "
                f"{'rejected' if policy == 'reject' else 'quarantined'} unless it carries a DKIM signature "
                f"with d={domain}; {fix}"
            )
        elif spf.result in ("fail", "softfail", "permerror"):
            warnings.append(f"{why}: receivers may refuse or junk its mail; {fix}")
    return warnings
