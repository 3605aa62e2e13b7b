"""Typed values the config parses once at load: ``HOST:PORT`` endpoints and the milter socket.

Every consumer (metrics, alert mail, verification mail and DNS, the daemon, the Postfix snippets)
receives these instead of re-splitting the text; the parsers here are the only ones. They raise
ValueError with the text the config check shows (the schema turns it into a ConfigProblem).
Pure: no I/O, no pydantic (only values of the core).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from smtpplus_milter.core.limits import Limits
from smtpplus_milter.core.suppression import Policy as SuppressionPolicy

# A bracketed IPv6 (or IPv4) literal, or a name/IPv4 without colons; then the port.
_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})")
_UNIX = re.compile(r"(unix|local):(/.+)")
_INET = re.compile(r"(inet6?):(\d{1,5})@(\S+)")

SocketKind = Literal["unix", "local", "inet", "inet6"]


def _port(text: str) -> int | None:
    """A TCP port 1-65535, or None (0 would be whatever port the kernel picks)."""
    port = int(text)
    return port if 0 < port < 65536 else None


@dataclass(frozen=True)
class HostPort:
    """A TCP endpoint; *host* never has brackets (an IPv6 literal is plain ``::1``)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """``host:port`` or ``[v6]:port``; ValueError naming the value otherwise."""
        match = _HOSTPORT.fullmatch(text)
        port = _port(match.group(2)) if match else None
        if match is None or port is None:
            raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
        return cls(match.group(1).strip("[]"), port)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SocketSpec:
    """A milter socket as libmilter takes it: ``unix:/path``, ``local:/path``, ``inet[6]:PORT@HOST``.

    ``str()`` is the text as written (what libmilter is given); *host* is without brackets.
    """

    text: str
    kind: SocketKind
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> SocketSpec:
        if re.fullmatch(r"inet6?:\d{1,5}", text):
            # libmilter would listen on every interface, and whoever reaches the socket can claim
            # any SASL login ({auth_authen} is just a macro the client side sends).
            raise ValueError(
                f"{text!r} has no host, so the milter would listen on every interface; "
                f"name it, e.g. {text}@127.0.0.1 (or use a unix socket)"
            )
        unix = _UNIX.fullmatch(text)
        if unix:
            return cls(text, "unix" if unix.group(1) == "unix" else "local", path=Path(unix.group(2)))
        inet = _INET.fullmatch(text)
        port = _port(inet.group(2)) if inet else None
        if inet is None or port is None:
            raise ValueError(f"{text!r} is not a milter socket; use unix:/ABSOLUTE/PATH or inet:PORT@127.0.0.1")
        kind: SocketKind = "inet6" if inet.group(1) == "inet6" else "inet"
        return cls(text, kind, host=inet.group(3).strip("[]"), port=port)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def exposed_host(self) -> str | None:
        """The host (as written) of an inet socket that is not loopback: anyone there can pose as Postfix."""
        if self.host is None or self.host == "localhost":
            return None
        # inet:PORT@HOST, or Postfix's inet:HOST:PORT (policy.listen): the host as written.
        written = self.text.partition("@")[2] or self.text.removeprefix(f"{self.kind}:").rpartition(":")[0]
        try:
            return None if ipaddress.ip_address(self.host).is_loopback else written
        except ValueError:
            return written  # a name: it may resolve to anything

    def __str__(self) -> str:
        return self.text


# Where the fanout filter listens and where it re-injects copies by default (fanout.listen/reinject).
FANOUT_LISTEN = SocketSpec.parse("unix:/run/smtpplus-fanout/fanout.sock")
FANOUT_REINJECT = HostPort("127.0.0.1", 10027)
# Where the unsubscribe endpoint listens by default (web.listen): loopback, behind a TLS proxy.
WEB_LISTEN = HostPort("127.0.0.1", 8025)
# Where the policy daemon listens by default (policy.listen): in Postfix's private/ directory, so
# main.cf names it `check_policy_service unix:private/smtpplus-policy`.
POLICY_LISTEN = SocketSpec.parse("unix:/var/spool/postfix/private/smtpplus-policy")
# Where the milter reaches the policy daemon to take back a count (the milter's user cannot enter
# Postfix's private/ directory; systemd makes this socket for the daemon, owned by smtpplus).
POLICY_REFUND_LISTEN = SocketSpec.parse("unix:/run/smtpplus-policy/refund.sock")
_POSTFIX_INET = re.compile(r"inet:([^\s@\[\]:]+|\[[0-9a-fA-F:.]+\]):(\d{1,5})")


def parse_policy_socket(text: str) -> SocketSpec:
    """``policy.listen``: a socket as the milter writes it, or as Postfix's check_policy_service does.

    ``inet:127.0.0.1:10040`` (Postfix's form) means the same as ``inet:10040@127.0.0.1``; the text
    stays as written.
    """
    postfix = _POSTFIX_INET.fullmatch(text)
    if postfix is not None:
        spec = SocketSpec.parse(f"inet:{postfix.group(2)}@{postfix.group(1)}")
        return SocketSpec(text, spec.kind, host=spec.host, port=spec.port)
    try:
        return SocketSpec.parse(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a policy socket; use unix:/ABSOLUTE/PATH or inet:127.0.0.1:PORT") from None


def parse_limit_store(text: str) -> str:
    """``sending_limits.store``: ``memory``, or a ``redis://`` / ``rediss://`` URL (its shape only).

    The shape: a host, an optional port 1-65535, an optional database number as the only path
    segment, nothing after ``?`` or ``#``. Whether the server answers is the daemon's to find out.
    """
    if text == "memory":
        return text
    hint = "give memory, or e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS)"
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{text!r} is neither memory nor a redis:// or rediss:// URL; {hint}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or port == 0 or any(ch.isspace() for ch in text):
        raise ValueError(f"{text!r} has no usable host and port; {hint}")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r} has a query or fragment, which the store does not read; {hint}")
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", parts.path):
        raise ValueError(f"{text!r}: the path must be a database number (e.g. /0); {hint}")
    return text


@dataclass(frozen=True)
class OwnMail:
    """Mail the product itself sends (alerts, verification codes): where to, and from whom.

    *key* is the config key of the endpoint, for messages (``alerts.email.smtp``).
    """

    key: str
    smtp: HostPort
    sender: str


@dataclass(frozen=True)
class PostfixInputs:
    """What the Postfix snippets depend on, and nothing else of the config."""

    queues: frozenset[str]  # the queues some priority maps to
    max_message_bytes: int
    own_mail: tuple[OwnMail, ...] = ()
    # bounces.return_path: the domain whose mail goes to the smtpplus-ingest pipe (None: no pipe),
    # and the config file that pipe's ingest reads.
    return_path: str | None = None
    config_file: str = "/etc/smtpplus/smtpplus.yaml"
    # bounces.ingest_listen: the LMTP socket of `ingest --serve` (None: the pipe).
    ingest_listen: SocketSpec | None = None
    # Some list has bcc_in_to: tagged messages go to the fanout filter (LMTP on fanout_listen),
    # which re-injects each copy into the loopback smtpd on fanout_reinject (docs/fanout.md).
    fanout: bool = False
    fanout_listen: SocketSpec = FANOUT_LISTEN
    fanout_reinject: HostPort = FANOUT_REINJECT
    # The policy: section's socket when the config has one (None: no policy daemon lines).
    policy_listen: SocketSpec | None = None


@dataclass(frozen=True)
class Tracking:
    """The ``tracking:`` section with everything resolved at load (node name, absolute paths)."""

    store: str
    node: str
    maillog: Path
    retention_days: int
    metrics_listen: HostPort | None
    spool_dir: Path
    spool_max_bytes: int


NoticeMode = Literal["immediate", "daily"]


@dataclass(frozen=True)
class Notices:
    """Who is told of one kind of event (bounces, complaints or unsubscribes), and when.

    *mode* ``immediate``: one notice per event; ``daily``: one digest per list and day.
    *original_sender*: the message's envelope sender is told too (always False but for bounces).
    """

    to: tuple[str, ...] = ()
    mode: NoticeMode = "immediate"
    original_sender: bool = False


@dataclass(frozen=True)
class Notify:
    """The ``notify:`` block in effect (the global one, or a list's merged over it)."""

    smtp: HostPort = HostPort("127.0.0.1", 25)
    sender: str | None = None  # notify.from; None only when nothing needs sending
    bounces: Notices = Notices()
    complaints: Notices = Notices()
    unsubscribes: Notices = Notices()


@dataclass(frozen=True)
class Bounces:
    """The ``bounces:`` section. *return_path* None: the client's envelope sender is kept."""

    return_path: str | None = None
    suppress_hard_days: int = 180
    soft_limit: int = 5
    # Where `ingest --serve` takes reports over LMTP (None: Postfix's pipe runs `ingest` per report).
    ingest_listen: SocketSpec | None = None

    @property
    def policy(self) -> SuppressionPolicy:
        """The suppression rules' inputs (core/suppression.py) from these settings."""
        return SuppressionPolicy(hard_days=self.suppress_hard_days, soft_limit=self.soft_limit)


@dataclass(frozen=True)
class Fanout:
    """The ``fanout:`` section: the content filter that makes one copy per recipient."""

    listen: SocketSpec = FANOUT_LISTEN
    reinject: HostPort = FANOUT_REINJECT
    metrics_listen: HostPort | None = None
    journal: Path = Path("/var/lib/smtpplus/fanout.db")
    journal_days: int = 7


@dataclass(frozen=True)
class Preempt:
    """``priority.preempt``: pause bulk queues while high mail goes out (``smtpplus-milter preempt``)."""

    pause: frozenset[str]
    resume_after_seconds: float
    postfix_config_dir: Path
    state_file: Path
    metrics_listen: HostPort | None = None


@dataclass(frozen=True)
class Doctor:
    """The ``doctor:`` section, resolved: relay IPs fall back to ``verification.relay_ips``."""

    relay_ips: tuple[str, ...] = ()
    dkim_selectors: tuple[str, ...] = ()
    postfix_config_dir: Path = Path("/etc/postfix")
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (25, 587)
    hostname: str = ""  # empty: Postfix's myhostname
    certificate_warn_days: int = 21


@dataclass(frozen=True)
class Web:
    """The ``web:`` section: the unsubscribe endpoint's HTTP listener and its metrics."""

    listen: HostPort = WEB_LISTEN
    metrics_listen: HostPort | None = None

    @property
    def exposed_host(self) -> str | None:
        """The host of *listen* when it is not loopback (then the proxy is not the only way in)."""
        if self.listen.host == "localhost":
            return None
        try:
            return None if ipaddress.ip_address(self.listen.host).is_loopback else self.listen.host
        except ValueError:
            return self.listen.host


@dataclass(frozen=True)
class Suppression:
    """The ``suppression:`` section: what a suppressed recipient gets (reject: 550 at RCPT; drop)."""

    action: Literal["reject", "drop"] = "reject"


@dataclass(frozen=True)
class Secret:
    """The key of the tokens, read from ``secret_file`` at load; ``repr`` never shows it."""

    path: Path
    key: bytes = field(repr=False)
    mode: int = 0o600  # the file's permission bits when it was read


@dataclass(frozen=True)
class Policy:
    """The ``policy:`` section: where ``smtpplus-milter policyd`` answers Postfix's policy queries."""

    listen: SocketSpec = POLICY_LISTEN
    # False: the config has no policy: section (policyd still runs with these defaults, but
    # postfix-config prints no check_policy_service lines and the milter sends it nothing).
    enabled: bool = False
    metrics_listen: HostPort | None = None
    idle_timeout_seconds: int = 600
    max_connections: int = 1000
    # Where the milter tells the daemon to take a count back (None: it does not).
    refund_listen: SocketSpec | None = POLICY_REFUND_LISTEN


StoreErrorAction = Literal["tempfail", "allow"]


@dataclass(frozen=True)
class SendingLimits:
    """The ``sending_limits:`` section with every user's and list's limits resolved at load.

    *lists*: each list's limits (its keys over the defaults), for every list of the config.
    *users*: by normalised login, only users whose entry has ``sending_limits``, already resolved
    over their list's (a user's key wins over the list's, the list's over the defaults).
    """

    defaults: Limits = field(default_factory=Limits)
    store: str = "memory"  # memory, or a redis:// / rediss:// URL (it may hold a password)
    on_store_error: StoreErrorAction = "tempfail"
    lists: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))
    users: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))

    def resolve(self, login: str, list_name: str | None) -> Limits:
        """The limits of *login* (normalised), whose list is *list_name* (None: no list)."""
        found = self.users.get(login)
        if found is not None:
            return found
        return self.lists.get(list_name, self.defaults) if list_name is not None else self.defaults

    @property
    def redis_host(self) -> str | None:
        """The host of a ``redis://`` store (None for memory)."""
        return None if self.store == "memory" else urlsplit(self.store).hostname
