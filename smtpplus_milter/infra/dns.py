"""DNS look-ups through dnspython: the :class:`~smtpplus_milter.core.dnscheck.ReverseLookup` the commands use.

The checks themselves (token, DMARC, SPF) are pure and live in :mod:`smtpplus_milter.core.dnscheck`;
this module only asks the configured resolver (or the system's) and turns its failures into
:class:`~smtpplus_milter.core.dnscheck.DnsFailure`.
"""

from __future__ import annotations

import ipaddress

from smtpplus_milter.config.values import HostPort
from smtpplus_milter.core.dnscheck import DnsFailure, IPAddress

DNS_TIMEOUT = 5.0


class Resolver:
    """:class:`ReverseLookup` (TXT, A/AAAA, MX, PTR) over dnspython.

    *address*: ``verification.resolver`` (or doctor's), or None for the system's resolver.
    """

    def __init__(self, address: HostPort | None = None, *, timeout: float = DNS_TIMEOUT) -> None:
        import dns.resolver

        if address is None:
            try:
                self._resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise DnsFailure(
                    "no system resolver (/etc/resolv.conf); set verification.resolver to HOST:PORT"
                ) from None
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [address.host]
            self._resolver.port = address.port
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self.address = str(address) if address is not None else "the system resolver"

    def _ask(self, name: str, rdtype: str) -> list[object]:
        import dns.exception
        import dns.resolver

        try:
            return list(self._resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DnsFailure(f"{rdtype} {name}: {exc} (asked {self.address})") from None

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._ask(name, "TXT")]  # type: ignore[attr-defined]

    def addresses(self, name: str) -> list[IPAddress]:
        found: list[IPAddress] = []
        for rdtype in ("A", "AAAA"):
            found += [ipaddress.ip_address(r.address) for r in self._ask(name, rdtype)]  # type: ignore[attr-defined]
        return found

    def ptr(self, ip: IPAddress) -> list[str]:
        import dns.reversename

        name = dns.reversename.from_address(str(ip)).to_text()
        return [r.target.to_text(omit_final_dot=True) for r in self._ask(name, "PTR")]  # type: ignore[attr-defined]

    def mx(self, name: str) -> list[str]:
        records = sorted(self._ask(name, "MX"), key=lambda r: r.preference)  # type: ignore[attr-defined]
        return [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]
