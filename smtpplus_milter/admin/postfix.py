"""What Postfix needs for priority routing, generated from the current config.

The milter adds ``X-SMTPPlus-Queue: high|normal|low``; Postfix's ``milter_header_checks`` (which
only sees headers a milter produced, never what a client sent) turns ``high`` and ``low`` into a
FILTER to the ``smtpplus-high`` / ``smtpplus-low`` transports; ``smtp_header_checks`` removes the
header on the way out, so recipients never see it.

When some list has ``bcc_in_to``, the milter also adds ``X-SMTPPlus-Fanout`` (after the queue
header: the last FILTER wins) and :func:`fanout_transport` sends such messages to the fanout filter
over LMTP, one recipient per delivery, and takes its copies back on a loopback smtpd without this
milter (docs/fanout.md).

When the config has a ``policy:`` section, :func:`policy_lines` adds the check_policy_service lines
that send Postfix's RCPT and end-of-data questions to ``smtpplus-milter policyd`` (docs/limits.md).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from smtpplus_milter.config import HostPort, OwnMail, PostfixInputs, SocketSpec

MILTER_CHECKS = "smtpplus_milter_header_checks"
SMTP_CHECKS = "smtpplus_smtp_header_checks"
FANOUT_CHECKS = "smtpplus_fanout_header_checks"
# Postfix's queue_directory when postconf cannot tell (Debian's and Postfix's default).
QUEUE_DIRECTORY = "/var/spool/postfix"

# Postfix's message_size_limit must sit a little ABOVE limits.max_message_bytes, so that our 552
# (which names limits.max_message_bytes) is the refusal a client sees, not Postfix's "message size
# exceeds fixed limit". Both count different things: we count header and body bytes as they
# arrive (base64 already included); Postfix counts its queue file, which adds its own Received:
# header and envelope records. 1 MiB covers that with room to spare.
SIZE_LIMIT_MARGIN = 1024 * 1024
# Postfix refuses to start when mailbox_size_limit (default 51200000) is below message_size_limit.
POSTFIX_DEFAULT_MAILBOX_SIZE_LIMIT = 51_200_000


def postfix_size_limits(max_message_bytes: int) -> dict[str, str]:
    """main.cf size settings that let the milter's own limit be the one that fires."""
    limit = max_message_bytes + SIZE_LIMIT_MARGIN
    result = {"message_size_limit": str(limit)}
    if limit > POSTFIX_DEFAULT_MAILBOX_SIZE_LIMIT:
        # 0 = no limit: this relay delivers no mailboxes, and a smaller value stops Postfix.
        result["mailbox_size_limit"] = "0"
    return result


# Delivery settings per routed queue, and why:
# - high gets many parallel deliveries at once (no slow start) so a burst of urgent mail leaves
#   immediately, independent of what the default transport is busy with;
# - low gets few, so bulk never takes the processes, connections and remote goodwill that
#   normal and high mail need.
TRANSPORT_TUNING: Mapping[str, dict[str, str]] = MappingProxyType(
    {
        "high": {
            "maxproc": "50",
            "destination_concurrency_limit": "50",
            "initial_destination_concurrency": "20",
        },
        "low": {
            "maxproc": "4",
            "destination_concurrency_limit": "2",
            "initial_destination_concurrency": "1",
        },
    }
)


@dataclass
class PostfixSnippets:
    main_cf: dict[str, str]
    master_cf: str
    files: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    # master.cf service(s) for mail the product itself sends (alerts, verification codes): a
    # loopback smtpd without milters, see local_listener(). Empty when none is configured.
    local_listener: str = ""
    local_listener_main_cf: dict[str, str] = field(default_factory=dict)
    # Why a main.cf line is there: comment lines render() prints above it (the policy lines).
    main_cf_notes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse_nexthops(items: list[str]) -> dict[str, str]:
    """``--nexthop`` values: ``NEXTHOP`` for both routed queues, or ``high=NEXTHOP`` / ``low=NEXTHOP``.

    Raises ValueError naming the value that is neither.
    """
    nexthops: dict[str, str] = {}
    for item in items:
        queue, sep, hop = item.partition("=")
        if sep and queue in ("high", "low") and hop:
            nexthops[queue] = hop
        elif not sep and item:
            nexthops.update(high=item, low=item)
        else:
            raise ValueError(f"--nexthop {item!r}: use NEXTHOP or high=NEXTHOP / low=NEXTHOP")
    return nexthops


def transport_name(queue: str) -> str:
    return f"smtpplus-{queue}"


def generate(
    inputs: PostfixInputs,
    *,
    postfix_dir: str = "/etc/postfix",
    nexthops: Mapping[str, str] | None = None,
    relayhost: str = "",
    chroot: bool = True,
    queue_directory: str = QUEUE_DIRECTORY,
) -> PostfixSnippets:
    """Snippets for the queues the config uses (:attr:`Config.postfix <smtpplus_milter.config.Config.postfix>`).

    *nexthops*: queue -> explicit next hop.

    A FILTER with an empty destination delivers to the *recipient domain* (its MX): Postfix does
    not apply ``relayhost`` to it (measured with Postfix 3.7). So with a relayhost, the relayhost
    becomes the explicit next hop of both transports; *nexthops* overrides per queue.

    *queue_directory*: Postfix's ``queue_directory``, against which a policy socket inside it is
    written relative (:func:`policy_lines`).
    """
    routed = sorted(queue for queue in inputs.queues if queue != "normal")
    given = dict(nexthops or {})
    nexthops = {queue: given.get(queue, relayhost) for queue in routed}
    directory = PurePosixPath(postfix_dir)
    main_cf = {
        # Postfix hands header values to a milter as C strings: a NUL would end the value the
        # milter judges ("me@allowed.example<NUL>, ceo@bank.example") while the whole header is
        # delivered. Stripping NUL on arrival makes both see the same bytes.
        "message_strip_characters": "\\0",
        # Long queue ids never repeat (short ones do, after a while): a tracking record keyed by
        # (node, queue id) then names one message for good.
        "enable_long_queue_ids": "yes",
        "milter_header_checks": f"regexp:{directory / MILTER_CHECKS}",
        "smtp_header_checks": f"regexp:{directory / SMTP_CHECKS}",
        **postfix_size_limits(inputs.max_message_bytes),
    }
    master_lines = []
    checks = [
        "# Written by smtpplus-milter postfix-config: route by the header the milter added.",
        "# milter_header_checks sees only headers a milter produced, never a client's own.",
    ]
    for queue in routed:
        name = transport_name(queue)
        tuning = TRANSPORT_TUNING[queue]
        main_cf[f"{name}_destination_concurrency_limit"] = tuning["destination_concurrency_limit"]
        main_cf[f"{name}_initial_destination_concurrency"] = tuning["initial_destination_concurrency"]
        master_lines += [
            f"{name} unix  -       -       {'y' if chroot else 'n'}       -       {tuning['maxproc']}      smtp",
            f"  -o syslog_name=postfix/{name}",
        ]
        if queue == "low":
            # An idle cached connection of the bulk transport goes back to the relay host after
            # 1 s instead of 2: when preemption pauses bulk mail, a relay host that limits
            # connections per client has a place for urgent mail a second sooner. While bulk
            # flows, its connections are reused at once and never idle that long.
            master_lines.append("  -o smtp_connection_cache_time_limit=1s")
        checks.append(f"/^X-SMTPPlus-Queue:[[:space:]]*{queue}[[:space:]]*$/ FILTER {name}:{nexthops.get(queue, '')}")
    queue_checks = checks[2:]
    strip = [
        "# Written by smtpplus-milter postfix-config: recipients never see the routing header.",
        "/^X-SMTPPlus-Queue:/ IGNORE",
    ]
    files: dict[str, str] = {}
    warnings = [
        "FILTER overrides content_filter: a message routed to smtpplus-high/-low skips an "
        "after-queue content_filter (e.g. amavis). Run such filters as milters (before "
        "smtpplus-milter is fine) or route with transport_maps instead.",
        "smtp_header_checks applies to every smtp/relay transport; merge it with an existing "
        "smtp_header_checks table if you have one.",
    ]
    if relayhost:
        warnings.append(
            f"relayhost is {relayhost}: the transports deliver there too (a FILTER next hop bypasses "
            "relayhost, sender_dependent_relayhost_maps and transport_maps, so it is spelled out)."
        )
    else:
        warnings.append(
            "no relayhost: routed mail goes to the recipient domain's MX. If you use "
            "sender_dependent_relayhost_maps or transport_maps, give --nexthop: FILTER bypasses them."
        )
    unknown = sorted(set(given) - set(routed))
    if unknown:
        warnings.append(f"--nexthop for {', '.join(unknown)} ignored: no priority maps to that queue")
    if inputs.return_path:
        ingest_cf, ingest_master, ingest_warnings = ingest_transport(
            inputs.return_path, inputs.config_file, listen=inputs.ingest_listen
        )
        main_cf.update(ingest_cf)
        master_lines += ingest_master
        warnings += ingest_warnings
    if inputs.fanout:
        fanout = fanout_transport(inputs.fanout_listen, inputs.fanout_reinject, directory)
        checks += fanout.milter_checks
        strip += fanout.strip
        main_cf.update(fanout.main_cf)
        master_lines += fanout.master
        files[FANOUT_CHECKS] = "\n".join([*fanout.reinject_checks_head, *queue_checks]) + "\n"
        warnings += fanout.warnings
    notes: dict[str, tuple[str, ...]] = {}
    if inputs.policy_listen is not None:
        policy = policy_lines(inputs.policy_listen, queue_directory)
        main_cf.update(policy.main_cf)
        notes.update(policy.notes)
        warnings += policy.warnings
    listener, listener_cf, listener_warnings = local_listener(inputs.own_mail, chroot=chroot)
    return PostfixSnippets(
        main_cf=main_cf,
        master_cf="\n".join(master_lines) + ("\n" if master_lines else ""),
        files={MILTER_CHECKS: "\n".join(checks) + "\n", SMTP_CHECKS: "\n".join(strip) + "\n", **files},
        warnings=warnings + listener_warnings,
        local_listener=listener,
        local_listener_main_cf=listener_cf,
        main_cf_notes=notes,
    )


FANOUT = "smtpplus-fanout"
FANOUT_CLEANUP = "smtpplus-fanout-cleanup"
FANOUT_MILTERS = "smtpplus_fanout_milters"
FANOUT_TAG = "X-SMTPPlus-Fanout"


@dataclass(frozen=True)
class FanoutLines:
    """What the fanout filter needs from Postfix (see :func:`fanout_transport`)."""

    milter_checks: tuple[str, ...]  # appended to milter_header_checks, AFTER the queue lines
    strip: tuple[str, ...]  # appended to smtp_header_checks
    main_cf: dict[str, str]
    master: tuple[str, ...]
    reinject_checks_head: tuple[str, ...]  # comment lines of FANOUT_CHECKS (the queue lines follow)
    warnings: tuple[str, ...]


def fanout_transport(listen: SocketSpec, reinject: HostPort, postfix_dir: PurePosixPath) -> FanoutLines:
    """The per-message after-queue filter that makes one copy per recipient, and its way back.

    - ``milter_header_checks``: a message the milter tagged goes to the ``smtpplus-fanout`` LMTP
      transport. The line comes after the queue lines: when several FILTER actions match, Postfix
      runs the last one, and the tag is added after the queue header for the same reason.
    - ``smtpplus-fanout_destination_recipient_limit = 1``: the LMTP client hands the filter the
      message once per recipient, so each answer (250 or 451) is about one copy.
    - The re-injection listener on *reinject*: a loopback smtpd that does not run this milter
      (each copy was judged as the original), only takes mail from loopback without a login, skips
      a global content_filter and the address mappings already applied to the original, and runs
      ``$smtpplus_fanout_milters`` (empty here: the operator's DKIM signer goes there, so every copy
      is signed after its To: changed). Its own cleanup service reads :data:`FANOUT_CHECKS`, the
      queue FILTER lines without the fanout line, so each copy goes to its priority transport.
      A separate cleanup because header_checks are applied by cleanup(8), not smtpd: an
      ``-o header_checks=`` on the smtpd line would not be seen. milter_header_checks cannot do it:
      the queue header of a copy comes from the filter, not from a milter.
    """
    loopback = reinject.host in ("127.0.0.1", "::1", "localhost")
    endpoint = f"[{reinject.host}]:{reinject.port}" if ":" in reinject.host else str(reinject)
    milter_checks = (
        "# Tagged by the milter: one copy per recipient, made by smtpplus-milter fanout. Keep this",
        "# line after the X-SMTPPlus-Queue lines: Postfix runs the last FILTER that matched.",
        f"/^{FANOUT_TAG}:/ FILTER {FANOUT}:{_lmtp_nexthop(listen)}",
    )
    master = (
        f"{FANOUT} unix  -       -       n       -       10      lmtp",
        f"  -o syslog_name=postfix/{FANOUT}",
        f"{endpoint} inet  n       -       n       -       -       smtpd",
        "  -o syslog_name=postfix/smtpplus-reinject",
        f"  -o smtpd_milters=${FANOUT_MILTERS}",
        "  -o non_smtpd_milters=",
        "  -o content_filter=",
        f"  -o cleanup_service_name={FANOUT_CLEANUP}",
        "  -o receive_override_options=no_unknown_recipient_checks,no_address_mappings",
        "  -o mynetworks=127.0.0.0/8,[::1]/128",
        "  -o smtpd_client_restrictions=permit_mynetworks,reject",
        "  -o smtpd_helo_restrictions=",
        "  -o smtpd_sender_restrictions=",
        "  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
        "  -o smtpd_relay_restrictions=permit_mynetworks,reject",
        # The copies were counted as the original: no policy question (see policy_lines()).
        "  -o smtpd_end_of_data_restrictions=",
        "  -o smtpd_sasl_auth_enable=no",
        f"{FANOUT_CLEANUP} unix n       -       n       -       0       cleanup",
        f"  -o syslog_name=postfix/{FANOUT_CLEANUP}",
        f"  -o header_checks=regexp:{postfix_dir / FANOUT_CHECKS}",
        # Both default to $header_checks: a forwarded message inside a copy must not route it.
        "  -o mime_header_checks=",
        "  -o nested_header_checks=",
    )
    warnings = [
        f"{FANOUT_MILTERS} is empty: put your DKIM signer there (e.g. {FANOUT_MILTERS} = "
        "inet:127.0.0.1:8891) so each copy is signed after the split; a signature made before "
        "the split is removed from copies whose To: changes. Never put smtpplus-milter there.",
        f"Start smtpplus-milter fanout (systemd unit smtpplus-fanout) listening on {listen}: until "
        f"it answers, messages with a BCC recipient wait in Postfix's queue (deferred, retried).",
        f"The copies come back on {endpoint} with the sender's envelope; your own header_checks, "
        "body_checks and address mappings already applied to the original are not run again there.",
    ]
    if not loopback:
        warnings.append(f"fanout re-injection {endpoint} is not a loopback address: it must be")
    return FanoutLines(
        milter_checks=milter_checks,
        strip=(f"/^{FANOUT_TAG}:/ IGNORE",),
        main_cf={f"{FANOUT}_destination_recipient_limit": "1", FANOUT_MILTERS: ""},
        master=master,
        reinject_checks_head=(
            "# Written by smtpplus-milter postfix-config: the copies the fanout filter re-injects go",
            "# to the transport of their priority (the same lines as milter_header_checks, no fanout).",
        ),
        warnings=tuple(warnings),
    )


INGEST = "smtpplus-ingest"
# Where install.sh puts the command (the systemd units name the same path).
BINARY = "/usr/local/bin/smtpplus-milter"


def ingest_transport(
    return_path: str,
    config_file: str,
    *,
    listen: SocketSpec | None = None,
    command: str = BINARY,
    user: str = "smtpplus",
) -> tuple[dict[str, str], list[str], list[str]]:
    """The transport that hands mail for the return-path domain to ``smtpplus-milter ingest``.

    Without *listen*, a pipe: one ``ingest`` process per report (destination recipient limit 1,
    so each report names its own token in ``--recipient``), run as the unprivileged smtpplus user;
    ``ingest`` exits 75 when it could not record the report, which Postfix treats as "try again
    later". With *listen* (``bounces.ingest_listen``), Postfix's LMTP client delivers to the
    long-running ``ingest --serve`` on that socket instead, over cached connections (a process
    start per report costs more than reading it); a report that could not be recorded is
    answered 451 there, the same "try again later". *command* and *user*: another installation of
    the program (the lab runs its virtualenv's) and the user the pipe runs as.
    """
    nexthop = _lmtp_nexthop(listen) if listen is not None else ""
    main_cf = {
        "relay_domains": f"$mydestination, {return_path}",
        "transport_maps": f"inline:{{ {return_path}={INGEST}:{nexthop} }}",
        f"{INGEST}_destination_recipient_limit": "1",
        f"{INGEST}_destination_concurrency_limit": "4",
    }
    if listen is None:
        master = [
            f"{INGEST} unix  -       n       n       -       4       pipe",
            f"  flags=Rq user={user} argv={command} ingest -c {config_file} --recipient ${{recipient}}",
        ]
    else:
        master = [
            f"{INGEST} unix  -       -       n       -       4       lmtp",
            f"  -o syslog_name=postfix/{INGEST}",
        ]
    where = f"the {INGEST} pipe" if listen is None else f"`smtpplus-milter ingest --serve` on {listen} (LMTP)"
    warnings = [
        f"relay_domains and transport_maps take {return_path} to {where}: if you already set "
        "either, add that domain to yours instead of replacing it. Publish an MX record for "
        f"{return_path} pointing at this relay (docs/bounces.md).",
    ]
    return main_cf, master, warnings


def _lmtp_nexthop(listen: SocketSpec) -> str:
    """Postfix's LMTP destination for a socket written the milter way (``inet:PORT@HOST``)."""
    if listen.path is not None:
        return f"unix:{listen.path}"
    host = f"[{listen.host}]" if listen.host and ":" in listen.host else listen.host
    return f"inet:{host}:{listen.port}"


POLICY_DEFAULT_ACTION = "451 4.3.5 SMTP+ policy service unavailable; try again later"


@dataclass(frozen=True)
class PolicyLines:
    """What Postfix needs to ask ``smtpplus-milter policyd`` (see :func:`policy_lines`)."""

    address: str  # as check_policy_service names it
    main_cf: dict[str, str]
    notes: dict[str, tuple[str, ...]]  # main.cf name -> why (comment lines)
    warnings: tuple[str, ...]


def policy_address(listen: SocketSpec, queue_directory: str = QUEUE_DIRECTORY) -> tuple[str, str | None]:
    """*listen* as ``check_policy_service`` names it, and a warning when smtpd may not reach it.

    A unix socket inside Postfix's queue directory is written relative to it
    (``unix:private/smtpplus-policy``): smtpd runs chrooted there on Debian (master.cf chroot y),
    where the absolute path does not exist, and a relative name works chrooted or not (Postfix's
    daemons run in the queue directory). A socket elsewhere keeps its absolute path, which only an
    smtpd without chroot can open. An inet socket is Postfix's ``inet:HOST:PORT`` (``[::1]`` for IPv6).
    """
    if listen.path is None:
        host = f"[{listen.host}]" if listen.host and ":" in listen.host else listen.host
        return f"inet:{host}:{listen.port}", None
    path = PurePosixPath(listen.path)
    queue = PurePosixPath(queue_directory)
    if path != queue and path.is_relative_to(queue) and ".." not in path.parts:
        return f"unix:{path.relative_to(queue)}", None
    return f"unix:{path}", (
        f"policy.listen {listen} is outside Postfix's queue directory {queue}: a chrooted smtpd (master.cf "
        "chroot y, Debian's default) cannot open it. Run the smtpd services that ask it with chroot n, or "
        f"put the socket under {queue} (e.g. {queue}/private/smtpplus-policy, the default)."
    )


def policy_lines(listen: SocketSpec, queue_directory: str = QUEUE_DIRECTORY) -> PolicyLines:
    """The main.cf lines that make smtpd ask the policy daemon on *listen*, with why, and warnings.

    Two questions per message: at RCPT (refuse before the body is sent what the milter would refuse
    after it) and at end of data (count the message: its size and recipient count are final only
    then). The smtpd_policy_service_* settings make an unreachable daemon mean "try again later",
    never "accepted and not counted".
    """
    address, where = policy_address(listen, queue_directory)
    check = f"check_policy_service {address}"
    main_cf = {
        "smtpd_recipient_restrictions": check,
        "smtpd_end_of_data_restrictions": check,
        "smtpd_policy_service_default_action": POLICY_DEFAULT_ACTION,
        "smtpd_policy_service_try_limit": "2",
        "smtpd_policy_service_timeout": "10s",
    }
    notes = {
        "smtpd_recipient_restrictions": (
            "SMTP+ policy at RCPT: unknown or inactive user, unauthorized envelope sender, suppressed",
            "recipient and too many recipients are refused before the body is sent. First in the list,",
            "before any permit_*: a permit ends the list. Safe for everyone: sessions without a login get DUNNO.",
        ),
        "smtpd_end_of_data_restrictions": (
            "SMTP+ policy at end of data: counts the message against the sender's limits (size and",
            "recipient count are final only here); asked once per message.",
        ),
        "smtpd_policy_service_default_action": (
            "When the policy daemon cannot be reached: try again later, never accept mail nobody counted.",
            "Postfix's default is the same 451 4.3.5 with a vaguer text; ours names the cause.",
        ),
        "smtpd_policy_service_try_limit": (
            "Postfix's default, stated because we rely on it: a request on a connection the daemon closed",
            "(restart, reload) is sent once more on a new one. A repeated end-of-data request for a queue",
            "id already counted is answered without counting it again.",
        ),
        "smtpd_policy_service_timeout": (
            "The client waits while smtpd asks: give up after 10 s (default 100 s) and answer the default",
            "action (at most 2 tries: about 21 s). Left at Postfix's defaults on purpose:",
            "request_limit 0 (many requests per connection: the daemon keeps them open),",
            "max_idle 300s (below policy.idle_timeout_seconds, 600 s by default: smtpd closes an idle",
            "connection before the daemon does; keep it so), max_ttl 1000s (connections are renewed now",
            "and then, which costs the daemon nothing), policy_context empty (the daemon tells RCPT and",
            "end of data apart by the request's protocol_state).",
        ),
    }
    warnings = [
        f"smtpd_recipient_restrictions: if you already set it, put `{check}` FIRST in yours, before any "
        "permit_* (e.g. permit_sasl_authenticated, which would end the list before the policy is asked); "
        "do the same in every master.cf service that sets it with -o (Debian's submission service does: "
        f"-o smtpd_recipient_restrictions=...). Sessions without a login are answered DUNNO, so first is safe.",
        f"smtpd_end_of_data_restrictions: if you already set it (in main.cf or with -o in master.cf), add `{check}` "
        "to yours; without it no message is counted and no sending limit holds.",
        "The smtpd_policy_service_* lines apply to every check_policy_service of this Postfix: if another "
        "policy service (e.g. SPF) needs other values, leave them out and give ours per service instead: "
        # A value with spaces needs its own braces inside the service's (Postfix's attr_override).
        f"check_policy_service {{ {address}, timeout=10s, try_limit=2, "
        f"{{ default_action = {POLICY_DEFAULT_ACTION} }} }}.",
        f"Start smtpplus-policyd.socket before `postfix reload`: while nothing answers on {address}, every "
        "smtpd that asks answers 451 4.3.5 (also to mail without a login, e.g. on port 25) and clients retry later.",
    ]
    if where is not None:
        warnings.append(where)
    return PolicyLines(address=address, main_cf=main_cf, notes=notes, warnings=tuple(warnings))


LOCAL_SENDERS = "smtpplus_local_sender_restrictions"


def local_listener(own_mail: Sequence[OwnMail], *, chroot: bool = True) -> tuple[str, dict[str, str], list[str]]:
    """The loopback smtpd(s) that take the product's own mail: (master.cf text, main.cf, warnings).

    Alert and verification mail must not pass this milter (an alert about a spoofed sender would
    itself be judged), so it goes to a listener without milters. Such a listener must not become
    an open relay for every local process: it takes no logins, only connections from 127.0.0.1,
    and only the envelope senders this config sends from (``alerts.email.from``,
    ``verification.from``); anything else is refused at MAIL FROM. Who may connect at all is a
    question for the host firewall (deploy/nftables/).
    """
    endpoints: dict[HostPort, None] = {}
    senders: dict[str, None] = {}
    warnings: list[str] = []
    for mail in own_mail:
        host = mail.smtp.host
        if host not in ("127.0.0.1", "::1", "localhost"):
            warnings.append(f"{mail.key} {mail.smtp} is not on this host: that server must not run smtpplus-milter")
            continue
        endpoints[HostPort("127.0.0.1", mail.smtp.port) if host == "localhost" else mail.smtp] = None
        senders[mail.sender.lower()] = None
    if not endpoints:
        return "", {}, warnings
    table = ", ".join(f"{sender}=OK" for sender in senders)
    main_cf = {LOCAL_SENDERS: f"check_sender_access inline:{{ {table} }}, reject"}
    lines = []
    for endpoint in endpoints:
        host = endpoint.host
        lines += [
            f"{endpoint} inet  n       -       {'y' if chroot else 'n'}       -       -       smtpd",
            "  -o syslog_name=postfix/smtpplus-local",
            "  -o smtpd_milters=",
            "  -o smtpd_sasl_auth_enable=no",
            f"  -o mynetworks={host}/{128 if ':' in host else 32}",
            "  -o smtpd_client_restrictions=permit_mynetworks,reject",
            "  -o smtpd_helo_restrictions=",
            f"  -o smtpd_sender_restrictions=${LOCAL_SENDERS}",
            "  -o smtpd_recipient_restrictions=",
            "  -o smtpd_relay_restrictions=permit_mynetworks,reject",
            # Alerts and codes must go out while the policy daemon is down (see policy_lines()).
            "  -o smtpd_end_of_data_restrictions=",
        ]
    return "\n".join(lines) + "\n", main_cf, warnings


def milter_address(socket: SocketSpec) -> str:
    """*socket* as main.cf's ``smtpd_milters`` names it: ``unix:/path`` or ``inet:HOST:PORT``."""
    if socket.path is not None:
        return f"unix:{socket.path}"
    host = f"[{socket.host}]" if socket.host is not None and ":" in socket.host else socket.host
    return f"inet:{host}:{socket.port}"


def render(snippets: PostfixSnippets, postfix_dir: str = "/etc/postfix") -> str:
    out = ["# ---- main.cf (postconf -e 'name = value', or append) ----"]
    for name, value in snippets.main_cf.items():
        out += [f"# {note}" for note in snippets.main_cf_notes.get(name, ())]
        out.append(f"{name} = {value}")
    out += ["", "# ---- master.cf (append) ----", snippets.master_cf.rstrip("\n")]
    if snippets.local_listener:
        out += [
            "",
            "# ---- loopback listener for alert/verification mail, without this milter ----",
            "# main.cf:",
            *(f"{name} = {value}" for name, value in snippets.local_listener_main_cf.items()),
            "# master.cf (append):",
            snippets.local_listener.rstrip("\n"),
        ]
    for name, text in snippets.files.items():
        out += ["", f"# ---- {PurePosixPath(postfix_dir) / name} ----", text.rstrip("\n")]
    out += ["", "# ---- warnings ----"] + [f"# WARNING: {warning}" for warning in snippets.warnings]
    out += ["", "# Then: postfix check && postfix reload"]
    return "\n".join(out) + "\n"


def postconf_relayhost(postfix_dir: str) -> tuple[str, str | None]:
    """Postfix's ``relayhost`` in *postfix_dir*, read with postconf; ("", why) when it cannot be read."""
    return _postconf(postfix_dir, "relayhost", "", "assuming no relayhost (give --relayhost)")


def postconf_queue_directory(postfix_dir: str) -> tuple[str, str | None]:
    """Postfix's ``queue_directory`` in *postfix_dir*; (the default, why) when it cannot be read."""
    return _postconf(postfix_dir, "queue_directory", QUEUE_DIRECTORY, f"assuming queue_directory {QUEUE_DIRECTORY}")


def _postconf(postfix_dir: str, name: str, fallback: str, assumption: str) -> tuple[str, str | None]:
    try:
        done = subprocess.run(
            ["postconf", "-c", postfix_dir, "-h", name], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return fallback, f"postconf not found; {assumption}"
    if done.returncode != 0:
        return fallback, f"postconf -c {postfix_dir} failed; {assumption}"
    return done.stdout.strip() or fallback, None


def write_tables(snippets: PostfixSnippets, postfix_dir: str) -> list[Path]:
    """Write the generated lookup tables into *postfix_dir*, each atomically; raise FileProblem.

    Postfix's daemons (user postfix) read the tables: a new one is world-readable, like main.cf.
    """
    from smtpplus_milter.infra.files import Ownership, replace_atomically

    written = []
    for name, text in snippets.files.items():
        target = Path(postfix_dir) / name
        replace_atomically(target, text.encode("utf-8"), new_file=Ownership(0o644, os.geteuid(), os.getegid()))
        written.append(target)
    return written
