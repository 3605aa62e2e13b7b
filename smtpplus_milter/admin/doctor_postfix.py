"""``doctor``'s checks of this host: the Postfix settings SMTP+ relies on, and the SMTP ports.

Postfix is read with ``postconf`` on the configured instance (``postconf -c DIR -x NAME...`` for
main.cf, ``-M`` for master.cf), never by parsing its files ourselves: postconf applies defaults and
``$name`` expansion exactly as Postfix does. A missing or failing postconf gives one WARN ("could
not check"), never a crash. The ports are probed with a real STARTTLS handshake
(:mod:`smtpplus_milter.infra.tls_probe`) and the certificate is read with ``cryptography``.

Each ``evaluate_*``/``*_check`` function here is pure (values in, a :class:`Check` out) so the
rules are unit-tested without Postfix; :func:`postfix_checks` and :func:`port_checks` do the I/O.
docs/doctor.md explains every check and its fix.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.x509.oid import NameOID

from smtpplus_milter.admin.postfix import (
    FANOUT,
    FANOUT_CLEANUP,
    INGEST,
    QUEUE_DIRECTORY,
    milter_address,
    policy_address,
    policy_lines,
    transport_name,
)
from smtpplus_milter.config import Config, SocketSpec
from smtpplus_milter.core.doctor import Check, Status
from smtpplus_milter.infra.tls_probe import TIMEOUT_SECONDS, Failure, Probe, probe

POSTCONF_TIMEOUT = 10
# main.cf parameters the checks read (one postconf run).
MAIN_CF_NAMES = (
    "smtpd_milters",
    "milter_default_action",
    "enable_long_queue_ids",
    "queue_directory",
    "smtpd_recipient_restrictions",
    "smtpd_end_of_data_restrictions",
    "myhostname",
)
SUBMISSION_PORT = 587
# Clients submit on 587 and on any port of this range (redirected to the submission service):
# there AUTH is the point of the port.
CLIENT_PORTS = range(1025, 5001)
SMTP_PORT = 25


@dataclass(frozen=True)
class PostfixView:
    """What postconf said: main.cf values (expanded, defaults included) and master.cf services."""

    main_cf: Mapping[str, str]
    services: frozenset[tuple[str, str]]  # (service name, type), e.g. ("smtpplus-high", "unix")


class PostconfFailed(Exception):
    """postconf is missing or failed: the Postfix checks cannot run (say why)."""


# --- reading Postfix -----------------------------------------------------------------------------


def _postconf(postfix_dir: str, *args: str) -> str:
    command = ["postconf", "-c", postfix_dir, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise PostconfFailed("postconf not found (is Postfix installed on this host?)") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostconfFailed(f"{' '.join(command)}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()
        raise PostconfFailed(f"{' '.join(command)} failed (exit {done.returncode}): {why[-1] if why else ''}")
    return done.stdout


def parse_main_cf(text: str) -> dict[str, str]:
    """``postconf NAME...`` output (``name = value`` lines) as a dict."""
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name.strip()] = value.strip()
    return found


def parse_master_cf(text: str) -> frozenset[tuple[str, str]]:
    """``postconf -M`` output: the (service name, type) of every service line."""
    services = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line[:1].isspace() and not line.startswith("#"):
            services.add((fields[0], fields[1]))
    return frozenset(services)


def read_postfix(postfix_dir: str) -> PostfixView:
    """main.cf (expanded: ``-x``) and master.cf of the instance in *postfix_dir*; raise PostconfFailed."""
    main_cf = parse_main_cf(_postconf(postfix_dir, "-x", *MAIN_CF_NAMES))
    return PostfixView(main_cf, parse_master_cf(_postconf(postfix_dir, "-M")))


# --- the Postfix checks --------------------------------------------------------------------------


def split_milters(value: str) -> list[tuple[str, str]]:
    """``smtpd_milters`` as (address, entry as written), in order.

    Entries are separated by commas or whitespace; an entry may be a ``{ address, name=value... }``
    group (Postfix 3.0+), whose address is its first element.
    """
    entries: list[str] = []
    depth, current = 0, ""
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0 and (char == "," or char.isspace()):
            if current.strip():
                entries.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        entries.append(current.strip())
    found = []
    for entry in entries:
        inner = entry.strip("{} \t")
        address = re.split(r"[,\s]+", inner, maxsplit=1)[0]
        found.append((address, entry))
    return found


def milter_names(socket: SocketSpec, queue_directory: str) -> frozenset[str]:
    """The ways main.cf may name our milter: the absolute path, and (a unix socket inside the queue
    directory) the path relative to it that a chrooted smtpd needs, e.g. ``unix:smtpplus/milter.sock``."""
    address = milter_address(socket)
    names = {address}
    if socket.path is not None:
        path, queue = PurePosixPath(socket.path), PurePosixPath(queue_directory)
        names.add(f"local:{path}")
        if path.is_relative_to(queue) and path != queue:
            names.update({f"unix:{path.relative_to(queue)}", f"local:{path.relative_to(queue)}"})
    return frozenset(names)


def milter_order_check(smtpd_milters: str, ours: Collection[str], preferred: str) -> Check:
    """Ours must be listed, and first: a signer after us signs what we changed (our header, the
    footer); a signer before us has its signature broken by our changes."""
    name = "smtpd_milters"
    milters = split_milters(smtpd_milters)
    others = [entry for address, entry in milters if address not in ours]
    fixed = f"smtpd_milters = {', '.join([preferred, *others])}"
    if not any(address in ours for address, _ in milters):
        found = f"{preferred} is not in smtpd_milters ({smtpd_milters or 'empty'}): mail passes unchecked"
        return Check("postfix_milter_order", name, Status.FAIL, found, fixed)
    if milters[0][0] not in ours:
        before = [entry for address, entry in milters[: [a in ours for a, _ in milters].index(True)]]
        found = (
            f"{', '.join(before)} runs before smtpplus-milter: a DKIM signature made there is broken by the "
            f"header and footer we add ({name} = {smtpd_milters})"
        )
        return Check("postfix_milter_order", name, Status.FAIL, found, fixed)
    return Check("postfix_milter_order", name, Status.OK, f"smtpplus-milter first: {smtpd_milters}")


def default_action_check(value: str) -> Check:
    fix = "milter_default_action = tempfail"
    name = "milter_default_action"
    if value == "tempfail":
        return Check(
            "postfix_milter_default_action", name, Status.OK, "tempfail: clients retry while the milter is down"
        )
    if value == "accept":
        found = "accept: while the milter is down, mail passes unchecked (no sender authorization, no footer)"
        return Check("postfix_milter_default_action", name, Status.FAIL, found, fix)
    found = f"{value or '(empty)'}: while the milter is down, clients are not asked to retry"
    return Check("postfix_milter_default_action", name, Status.WARN, found, fix)


def long_queue_ids_check(value: str) -> Check:
    name = "enable_long_queue_ids"
    if value == "yes":
        return Check("postfix_long_queue_ids", name, Status.OK, "yes")
    found = f"{value or 'no'}: short queue ids repeat, and delivery tracking keys messages by queue id"
    return Check("postfix_long_queue_ids", name, Status.FAIL, found, "enable_long_queue_ids = yes")


def wanted_transports(config: Config) -> list[str]:
    """The master.cf services the config routes mail to, in a stable order."""
    inputs = config.postfix
    wanted = [transport_name(queue) for queue in sorted(inputs.queues) if queue != "normal"]
    if inputs.fanout:
        wanted += [FANOUT, FANOUT_CLEANUP]
    if inputs.return_path:
        wanted.append(INGEST)
    return wanted


def transport_checks(wanted: Sequence[str], services: Collection[tuple[str, str]]) -> list[Check]:
    present = {name for name, kind in services if kind == "unix"}
    if not wanted:
        return [Check("postfix_transports", "master.cf", Status.OK, "no transport of ours is needed by this config")]
    checks = []
    for name in wanted:
        if name in present:
            checks.append(Check("postfix_transports", name, Status.OK, "in master.cf"))
        else:
            found = f"no {name} service in master.cf: mail routed to it stays in the queue"
            fix = "run smtpplus-milter postfix-config and add its master.cf lines (or smtpplus-milter setup)"
            checks.append(Check("postfix_transports", name, Status.FAIL, found, fix))
    return checks


_POLICY = re.compile(r"check_policy_service\s+(?:\{\s*)?([^\s,{}]+)")


def policy_checks(main_cf: Mapping[str, str], addresses: Collection[str], expected: str) -> list[Check]:
    """``check_policy_service`` of our daemon in both restriction lists (RCPT: refuse early; end of
    data: count the message); at RCPT before any ``permit*``, which would end the list first."""
    checks = []
    for name in ("smtpd_recipient_restrictions", "smtpd_end_of_data_restrictions"):
        value = main_cf.get(name, "")
        ours = [match for match in _POLICY.finditer(value) if match.group(1) in addresses]
        fix = f"{name} = check_policy_service {expected}" + (f", {value}" if value else "")
        if not ours:
            found = f"no check_policy_service {expected} in {name} ({value or 'empty'})"
            if name == "smtpd_end_of_data_restrictions":
                found += ": no message is counted, no sending limit holds"
            else:
                found += ": refusals come only after the body, and limits on recipients are not applied"
            checks.append(Check("postfix_policy", name, Status.FAIL, found, fix))
            continue
        permit = re.search(r"(?<![\w-])permit\w*", value[: ours[0].start()])
        if name == "smtpd_recipient_restrictions" and permit:
            found = f"{permit.group(0)} comes before check_policy_service and ends the list first ({value})"
            checks.append(Check("postfix_policy", name, Status.WARN, found, "put check_policy_service first"))
            continue
        checks.append(Check("postfix_policy", name, Status.OK, f"check_policy_service {ours[0].group(1)}"))
    return checks


def evaluate_postfix(config: Config, view: PostfixView) -> list[Check]:
    """Every Postfix check of *config* against what postconf said (pure)."""
    main_cf = view.main_cf
    queue_directory = main_cf.get("queue_directory") or QUEUE_DIRECTORY
    socket = config.settings.milter.socket
    ours = milter_names(socket, queue_directory)
    # The relative form when the socket is in the queue directory: it works chrooted or not.
    preferred = min(ours, key=lambda name: (name.startswith("local:"), len(name)))
    checks = [
        milter_order_check(main_cf.get("smtpd_milters", ""), ours, preferred),
        default_action_check(main_cf.get("milter_default_action", "")),
        long_queue_ids_check(main_cf.get("enable_long_queue_ids", "")),
        *transport_checks(wanted_transports(config), view.services),
    ]
    if config.policy.enabled:
        listen = config.policy.listen
        expected = policy_lines(listen, queue_directory).address
        addresses = {expected, policy_address(listen, "/nonexistent")[0]}  # relative or absolute
        checks += policy_checks(main_cf, addresses, expected)
    return checks


def postfix_checks(config: Config, postfix_dir: str | Path) -> list[Check]:
    """The Postfix checks for *config* on the instance in *postfix_dir* (WARN if postconf cannot tell)."""
    try:
        view = read_postfix(str(postfix_dir))
    except PostconfFailed as exc:
        fix = "run doctor on the Postfix host, or set doctor.postfix_config_dir to its config directory"
        return [Check("postfix", str(postfix_dir), Status.WARN, f"could not check: {exc}", fix)]
    return evaluate_postfix(config, view)


def postfix_hostname(postfix_dir: str | Path) -> str:
    """Postfix's ``myhostname`` in *postfix_dir*, or "" when postconf cannot tell."""
    try:
        return parse_main_cf(_postconf(str(postfix_dir), "-x", "myhostname")).get("myhostname", "")
    except PostconfFailed:
        return ""


# --- the ports -----------------------------------------------------------------------------------


def auth_required(port: int) -> bool:
    """Whether a port exists for clients that log in (587 and 1025-5000), so AUTH is mandatory."""
    return port == SUBMISSION_PORT or port in CLIENT_PORTS


def _listener_fix(port: int) -> str:
    if port in CLIENT_PORTS:
        return (
            f"load deploy/nftables/smtpplus-ports.nft (it redirects 1025-5000 to the submission service; "
            f"from this host only the smtpplus user's connections are redirected, so run doctor as that user), "
            f"or add a master.cf listener `{port} inet n - y - - smtpd` with the submission service's -o options"
        )
    if port == SUBMISSION_PORT:
        return "enable the submission service in master.cf (smtpplus-milter setup writes it)"
    return f"add a master.cf smtpd listener for port {port} (e.g. `smtp inet n - y - - smtpd` for 25)"


def port_check(found: Probe) -> Check:
    """The reachability/STARTTLS/AUTH verdict of one probe (pure)."""
    subject, port = found.endpoint, found.port
    if found.failure is Failure.REFUSED:
        return Check("port", subject, Status.FAIL, f"nothing listens: {found.error}", _listener_fix(port))
    if found.failure in (Failure.TIMEOUT, Failure.UNREACHABLE):
        fix = f"open port {port} in the firewall, or {_listener_fix(port)}"
        return Check("port", subject, Status.FAIL, f"no SMTP server reached: {found.error}", fix)
    if found.failure is Failure.PROTOCOL and not found.starttls:
        return Check("port", subject, Status.FAIL, f"not a working SMTP server: {found.error}", _listener_fix(port))
    if not found.starttls:
        level = "encrypt" if auth_required(port) else "may"
        fix = (
            f"set smtpd_tls_security_level = {level} (-o on that master.cf service) and "
            "smtpd_tls_chain_files (or smtpd_tls_cert_file and smtpd_tls_key_file)"
        )
        return Check("port", subject, Status.FAIL, "STARTTLS is not offered: mail and passwords travel in clear", fix)
    if found.auth_before_tls is not None:
        found_text = f"AUTH {' '.join(found.auth_before_tls)} is offered before STARTTLS: passwords can travel in clear"
        return Check("port", subject, Status.FAIL, found_text, "smtpd_tls_auth_only = yes")
    if found.failure is not None:
        return Check("port", subject, Status.FAIL, f"STARTTLS offered, then: {found.error}", "see Postfix's log")
    if found.auth_after_tls is None:
        if auth_required(port):
            found_text = "STARTTLS offered, but no AUTH after it: clients cannot log in on this port"
            fix = "-o smtpd_sasl_auth_enable=yes on this port's master.cf service (and the SASL settings of submission)"
            return Check("port", subject, Status.FAIL, found_text, fix)
        found_text = f"STARTTLS offered ({found.tls_version}), no AUTH: clients cannot submit on this port"
        return Check("port", subject, Status.WARN, found_text, "smtpd_sasl_auth_enable = yes if clients submit here")
    mechanisms = " ".join(found.auth_after_tls)
    return Check("port", subject, Status.OK, f"STARTTLS offered ({found.tls_version}), AUTH {mechanisms} only after it")


def _matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 matching: case-insensitive; a ``*`` is a whole left-most label matching one label."""
    pattern = pattern.rstrip(".").lower()
    if pattern == hostname:
        return True
    if not pattern.startswith("*."):
        return False
    label, _, rest = hostname.partition(".")
    return bool(label) and rest == pattern[2:] and "*" not in rest


def _ascii_hostname(hostname: str) -> str:
    hostname = hostname.rstrip(".").lower()
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return hostname


def certificate_check(subject: str, der: bytes, hostname: str, warn_days: int, now: float) -> Check:
    """Names and expiry of a DER certificate (pure): *hostname* must be among its names (SAN DNS
    names; the CN only when there is no SAN), and it must be valid for at least *warn_days* more."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return Check("tls", subject, Status.FAIL, f"unreadable certificate: {exc}", "check smtpd_tls_chain_files")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        # Only without a SAN extension does the subject's CN count (RFC 6125).
        names = [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    moment = datetime.fromtimestamp(now, UTC)
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    days = int((after - moment).total_seconds() // 86400)
    self_signed = cert.issuer == cert.subject
    facts = [
        f"names {', '.join(names) or '(none)'}",
        f"valid until {after:%Y-%m-%d %H:%M} UTC ({days} days)",
        *(["self-signed"] if self_signed else []),
    ]
    found = "; ".join(facts)
    renew = "renew the certificate (smtpd_tls_chain_files, or smtpd_tls_cert_file), then postfix reload"
    wanted = _ascii_hostname(hostname)
    if not wanted:
        return Check("tls", subject, Status.WARN, f"{found}; no host name to compare", "set doctor.hostname")
    if not any(_matches(name, wanted) for name in names):
        fix = f"get a certificate for {wanted} (smtpd_tls_chain_files), or set doctor.hostname to the name clients use"
        return Check("tls", subject, Status.FAIL, f"{wanted} is not among its names: {found}", fix)
    if after < moment:
        return Check("tls", subject, Status.FAIL, f"expired on {after:%Y-%m-%d}: {found}", renew)
    if before > moment:
        fix = "check this host's clock, or the certificate's start date"
        return Check("tls", subject, Status.FAIL, f"not valid before {before:%Y-%m-%d}: {found}", fix)
    if days < warn_days:
        return Check("tls", subject, Status.WARN, f"expires in {days} days (< {warn_days}): {found}", renew)
    return Check("tls", subject, Status.OK, found)


def port_checks(
    host: str,
    ports: Sequence[int],
    hostname: str,
    warn_days: int,
    now: float,
    *,
    postfix_dir: str | Path | None = None,
    timeout: float | None = None,
) -> list[Check]:
    """Per port: one "port" check (reachable, STARTTLS, AUTH only after it) and, when a handshake
    happened, one "tls" check (the certificate names *hostname*, not about to expire).

    An empty *hostname* means Postfix's myhostname (read from *postfix_dir* when given).
    """
    if not hostname and postfix_dir is not None:
        hostname = postfix_hostname(postfix_dir)
    checks = []
    for port in ports:
        found = probe(host, port, timeout=TIMEOUT_SECONDS if timeout is None else timeout, server_name=hostname)
        checks.append(port_check(found))
        if found.certificate is not None:
            checks.append(certificate_check(found.endpoint, found.certificate, hostname, warn_days, now))
    return checks
