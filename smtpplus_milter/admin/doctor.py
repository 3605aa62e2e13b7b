"""``smtpplus-milter doctor``: run every check for this config and collect the report (docs/doctor.md).

What is checked, for whom:

* every domain this relay sends as — the users' authorized domains and the domains of their
  authorized sender addresses (active users only), or only ``--domain`` — and the return-path
  domain (``bounces.return_path``): SPF allows the relay's addresses, a DKIM key is published for
  each configured selector, DMARC's policy and whether the mail aligns with it;
* the relay's addresses: PTR and forward-confirmed reverse DNS;
* this host's Postfix (``doctor.postfix_config_dir``): our milter before any other, tempfail when
  the milter is down, long queue ids, the transports the config routes to, the policy daemon's lines;
* the SMTP ports (``doctor.ports`` on ``doctor.host``): something listens, STARTTLS is offered and
  AUTH only after it, the certificate names the relay and is not about to expire.

The DNS checks are pure functions over the ``Lookup`` that verification uses (one resolver, the
same SPF evaluator); the Postfix and port checks run postconf and a real STARTTLS handshake.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from smtpplus_milter.config import Config
from smtpplus_milter.core.addresses import normalize_domain
from smtpplus_milter.core.dnscheck import DnsFailure, ReverseLookup
from smtpplus_milter.core.doctor import Check, Report, Status


def sending_domains(config: Config) -> list[str]:
    """The domains SMTP+ users send as (authorized domains and the domains of authorized senders), sorted."""
    found: set[str] = set()
    for user in config.directory.users.values():
        if not user.active:
            continue
        found.update(user.authorized_domains)
        found.update(sender.rpartition("@")[2] for sender in user.authorized_senders)
    return sorted(domain for domain in found if domain)


def dns_checks(config: Config, lookup: ReverseLookup, domains: Sequence[str], hostname: str = "") -> Iterator[Check]:
    """SPF, DKIM and DMARC of each domain (and SPF of the return-path domain), then PTR of each relay address."""
    from smtpplus_milter.core.deliverability import dkim_checks, dmarc_check, ptr_check, spf_check

    doctor = config.doctor
    return_path = config.bounces.return_path
    for domain in domains:
        yield spf_check(lookup, domain, doctor.relay_ips)
        yield from dkim_checks(lookup, domain, doctor.dkim_selectors)
        yield dmarc_check(
            lookup,
            domain,
            return_path_domain=return_path or domain,
            dkim_domains=(domain,) if doctor.dkim_selectors else (),
        )
    if return_path:
        yield spf_check(lookup, return_path, doctor.relay_ips)
    if not doctor.relay_ips:
        yield Check(
            "ptr",
            "relay",
            Status.WARN,
            "not checked: no relay IP configured",
            "set doctor.relay_ips (or verification.relay_ips) to the relay's public IPv4/IPv6 addresses",
        )
    for ip in doctor.relay_ips:
        yield ptr_check(lookup, ip, hostname=hostname)


def run(
    config: Config,
    *,
    domains: Sequence[str] | None = None,
    lookup: ReverseLookup | None = None,
    now: Callable[[], float] = time.time,
) -> Report:
    """Every check for *config* (*domains*: only these, e.g. ``--domain``), in a stable order."""
    from smtpplus_milter.admin.doctor_postfix import port_checks, postfix_checks, postfix_hostname

    doctor = config.doctor
    # The name clients use: the certificate must name it, and the PTR of the relay should be it.
    hostname = doctor.hostname or postfix_hostname(doctor.postfix_config_dir)
    wanted = [normalize_domain(domain) for domain in domains] if domains else sending_domains(config)
    checks: list[Check] = []
    if lookup is None:
        from smtpplus_milter.infra.dns import Resolver

        try:
            lookup = Resolver(config.settings.verification.resolver)
        except DnsFailure as exc:
            checks.append(Check("dns", "resolver", Status.WARN, f"DNS checks skipped: {exc}", ""))
    if lookup is not None:
        checks.extend(dns_checks(config, lookup, wanted, hostname))
    checks.extend(postfix_checks(config, doctor.postfix_config_dir))
    checks.extend(port_checks(doctor.host, doctor.ports, hostname, doctor.certificate_warn_days, now()))
    return Report.of(checks)
