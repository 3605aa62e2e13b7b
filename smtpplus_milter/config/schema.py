"""The schema: every key of the main file and the users file, declared once (pydantic).

This table is the only place that says which keys exist, their types, defaults and limits, and
what a bad value is told. Endpoint and socket settings become :mod:`~smtpplus_milter.config.values`
here, so nothing downstream parses their text again. Reading files and reporting problems is
:mod:`~smtpplus_milter.config.loader`'s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, RootModel, field_validator
from pydantic_core import core_schema

from smtpplus_milter.config.values import (
    FANOUT_LISTEN,
    FANOUT_REINJECT,
    POLICY_LISTEN,
    POLICY_REFUND_LISTEN,
    WEB_LISTEN,
    HostPort,
    SocketSpec,
    parse_limit_store,
    parse_policy_socket,
)
from smtpplus_milter.core.addresses import AddressError, normalize_address, normalize_domain

Priority = Annotated[int, Field(ge=1, le=5)]
Queue = Literal["high", "normal", "low"]
DEFAULT_QUEUES: Mapping[int, Queue] = MappingProxyType({1: "high", 2: "high", 3: "normal", 4: "low", 5: "low"})

# A {daemon_name} value as master.cf sets it (-o milter_macro_daemon_name=ORIGINATING).
DaemonName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=100)]

# YAML has lists, not tuples; lax mode here only lets a list become the (immutable) tuple.
_LIST = Field(strict=False)


def _parsed_from_text(parse: Callable[[str], object]) -> GetPydanticSchema:
    """A YAML string turned into a typed value by *parse* (whose ValueError is the problem shown).

    Validated as a string first, so a number where text belongs gets pydantic's own type error;
    dumped back as its text.
    """
    return GetPydanticSchema(
        lambda _source, _handler: core_schema.no_info_after_validator_function(
            parse, core_schema.str_schema(), serialization=core_schema.plain_serializer_function_ser_schema(str)
        )
    )


def _resolver(text: str) -> HostPort:
    address = HostPort.parse(text)
    if not address.is_ip:
        raise ValueError(f"{text!r}: the resolver must be an IP address and port, e.g. 127.0.0.1:53")
    return address


HostPortValue = Annotated[HostPort, _parsed_from_text(HostPort.parse)]
ResolverValue = Annotated[HostPort, _parsed_from_text(_resolver)]
SocketValue = Annotated[SocketSpec, _parsed_from_text(SocketSpec.parse)]
PolicySocketValue = Annotated[SocketSpec, _parsed_from_text(parse_policy_socket)]
LimitStoreValue = Annotated[str, _parsed_from_text(parse_limit_store)]
# A sending limit: 0 means none allowed. The ceiling keeps every counter exact in the Redis
# script, whose numbers are doubles (integers exact up to 2**53).
LimitCount = Annotated[int, Field(ge=0, le=10**15)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MilterSection(_Strict):
    socket: SocketValue = SocketSpec.parse("unix:/var/spool/postfix/smtpplus/milter.sock")
    timeout: Annotated[int, Field(ge=1, le=3600)] = 60
    on_internal_error: Literal["tempfail", "accept"] = "tempfail"


class AuthorizationSection(_Strict):
    mode: Literal["block", "alert"] = "block"
    check: Annotated[tuple[Literal["envelope_from", "header_from", "header_sender"], ...], _LIST] = (
        "envelope_from",
        "header_from",
        "header_sender",
    )
    # An authorized From:/Sender: whose display name or comment shows another address: alert
    # (log, count, alert), log (log and count), off. Never changes the verdict.
    display_name_spoofing: Literal["alert", "log", "off"] = "alert"

    @field_validator("display_name_spoofing", mode="before")
    @classmethod
    def _spoofing_off(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `off` as false; that is what the operator wrote.
        return "off" if value is False else value


class LimitsSection(_Strict):
    max_message_bytes: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024


class PreemptSection(_Strict):
    """Priority preemption (docs/priority.md, "Preemption"): ``smtpplus-milter preempt``."""

    # Queues whose new deliveries stop while high mail waits or is being delivered.
    pause: Annotated[tuple[Queue, ...], _LIST] = ("low",)
    resume_after_seconds: Annotated[float, Field(ge=0, le=3600)] = 5
    # Ours: which Postfix instance (its main.cf directory), where the held ids are kept, metrics.
    postfix_config_dir: str = "/etc/postfix"
    state_file: str = "/var/lib/smtpplus-preempt/held.json"
    metrics_listen: HostPortValue | None = None

    @field_validator("resume_after_seconds", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        # YAML gives 5 as an int; strict mode would refuse it for a float field.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("pause")
    @classmethod
    def _not_high(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one queue to pause (normal and/or low), or remove priority.preempt")
        if "high" in value:
            raise ValueError("high cannot be paused: it is the queue the others pause for; give normal and/or low")
        if len(set(value)) != len(value):
            raise ValueError("a queue is named twice")
        return value


class PrioritySection(_Strict):
    default: Priority = 3
    queues: dict[Priority, Queue] = Field(default_factory=lambda: dict(DEFAULT_QUEUES))
    preempt: PreemptSection | None = None

    @field_validator("queues")
    @classmethod
    def _all_levels(cls, value: dict[int, str]) -> dict[int, str]:
        missing = sorted(set(range(1, 6)) - set(value))
        if missing:
            raise ValueError(f"no queue for priority {', '.join(map(str, missing))}; give all of 1-5")
        return value


class MetricsSection(_Strict):
    listen: HostPortValue | None = HostPort("127.0.0.1", 9464)
    per_user_labels: bool = True


class WebhookSink(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    timeout: Annotated[float, Field(gt=0, le=120)] = 5


class AlertmanagerSink(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    timeout: Annotated[float, Field(gt=0, le=120)] = 5


class EmailSink(_Strict):
    to: Annotated[tuple[str, ...], _LIST]
    smtp: HostPortValue = HostPort("127.0.0.1", 25)
    from_: str = Field(alias="from")

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


class AlertsSection(_Strict):
    dedup_seconds: Annotated[int, Field(ge=0)] = 300
    # Tries per alert and sink; a failed try waits backoff_seconds, then twice that, ... (max 300).
    attempts: Annotated[int, Field(ge=1, le=20)] = 5
    backoff_seconds: Annotated[float, Field(gt=0, le=300)] = 2
    webhook: WebhookSink | None = None
    alertmanager: AlertmanagerSink | None = None
    email: EmailSink | None = None


class TextVariants(_Strict):
    text: str | None = None
    html: str | None = None


class BouncesSection(_Strict):
    """Bounces (docs/bounces.md). With *return_path* null the client's envelope sender is kept."""

    return_path: str | None = None
    suppress_hard_days: Annotated[int, Field(ge=1, le=3650)] = 180
    # This many soft failures in a row (spread over at least three days) suppress an address.
    soft_limit: Annotated[int, Field(ge=1, le=1000)] = 5
    # null: Postfix runs `smtpplus-milter ingest` once per report (pipe); a socket
    # (unix:/PATH or inet:PORT@127.0.0.1): `ingest --serve` takes reports over LMTP there.
    ingest_listen: SocketValue | None = None

    @field_validator("return_path")
    @classmethod
    def _return_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "@" in value:
            raise ValueError(f"{value!r} is an address; give only the domain (mail goes to b+TOKEN@that domain)")
        try:
            return normalize_domain(value)
        except AddressError as exc:
            raise ValueError(str(exc)) from None


class SuppressionSection(_Strict):
    # reject: 550 at RCPT; drop: accepted, not delivered, recorded as suppressed.
    action: Literal["reject", "drop"] = "reject"


NoticeMode = Literal["immediate", "daily"]


class Notices(_Strict):
    """Who gets one kind of notice (complaints, unsubscribes), and how often."""

    to: Annotated[tuple[str, ...], _LIST] = ()
    mode: NoticeMode = "immediate"

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value: object) -> tuple[str, ...]:
        return _recipients(value)


class BounceNotices(Notices):
    # Bounce notices may also go to the message's original envelope sender.
    original_sender: bool = False


class NotifySection(_Strict):
    """Where bounce, complaint and unsubscribe notices go.

    In ``lists.NAME.notify`` every key left out is the global one.
    """

    smtp: HostPortValue = HostPort("127.0.0.1", 25)
    from_: str | None = Field(default=None, alias="from")
    bounces: BounceNotices = BounceNotices()
    complaints: Notices = Notices()
    unsubscribes: Notices = Notices()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return _sender(value, "notices")


def _sender(value: str | None, what: str) -> str | None:
    """A ``from:`` address, normalised; a ValueError that says what it is the sender of."""
    if value is None:
        return None
    try:
        return str(normalize_address(value))
    except AddressError as exc:
        raise ValueError(f"{exc}; write the sender of {what} as local@domain") from None


# RFC 2919's list-id: dot-atom text (letters, digits and a few symbols, dot-separated), no brackets.
_LIST_ID = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+$"


class UnsubscribeSection(_Strict):
    """``lists.NAME.unsubscribe`` (docs/unsubscribe.md): every recipient gets List-Unsubscribe."""

    # The web endpoint's base; each recipient's link is URL/TOKEN.
    url: Annotated[str, Field(max_length=500)]
    # Also offer mailto:u+TOKEN@<bounces.return_path> (answered by ingest).
    mailto: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL; give e.g. https://relay.example/u")
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError(f"{value!r} has a query or fragment; the token is added as a last path segment")
        if any(ch.isspace() or ch in '<>,"' or not ch.isprintable() or not ch.isascii() for ch in value):
            raise ValueError(f"{value!r} holds a character a List-Unsubscribe header cannot carry")
        return value.rstrip("/")


class PolicySection(_Strict):
    """The policy daemon ``smtpplus-milter policyd`` (Postfix's check_policy_service)."""

    # unix:/PATH, or inet:127.0.0.1:PORT (Postfix's form; inet:PORT@127.0.0.1 is read too).
    listen: PolicySocketValue = POLICY_LISTEN
    # Where the milter tells the daemon to take back the count of a message it refused after the
    # end-of-data check counted it; null: the milter does not (such messages stay counted).
    refund_listen: PolicySocketValue | None = POLICY_REFUND_LISTEN
    # HOST:PORT for the daemon's /metrics (smtpplus_limited_total...), or null: none.
    metrics_listen: HostPortValue | None = None
    # A connection with no request for this long is closed. Postfix's smtpd closes an idle policy
    # connection after smtpd_policy_service_max_idle (300 s) itself; this bound is for anything else.
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = 600
    # At most this many connections at once (one per smtpd process of every Postfix using the
    # daemon); one more is closed at once, and that smtpd answers smtpd_policy_service_default_action.
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000


class LimitOverrides(_Strict):
    """``sending_limits:`` of one user (users file) or ``lists.NAME.sending_limits``: any of the four.

    A key left out comes from the list (for a user) or the defaults; null is the same as leaving it out.
    """

    messages_per_hour: LimitCount | None = None
    recipients_per_message: LimitCount | None = None
    recipients_per_day: LimitCount | None = None
    bytes_per_day: LimitCount | None = None

    def given(self) -> dict[str, int]:
        """The keys this block sets, by name (the field names are those of core.limits.Limits)."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class SendingLimitsSection(_Strict):
    """Every user's sending limits unless their entry or list says otherwise (docs/limits.md)."""

    messages_per_hour: LimitCount = 1000
    recipients_per_message: LimitCount = 100
    recipients_per_day: LimitCount = 10_000
    bytes_per_day: LimitCount = 2_147_483_648
    # memory: one host's counters, forgotten at restart; redis://HOST:PORT/DB (rediss:// for TLS):
    # one set of counters shared by every relay host that names the same server.
    store: LimitStoreValue = "memory"
    # The store cannot be reached: tempfail (450, the client retries) or allow (sent uncounted).
    on_store_error: Literal["tempfail", "allow"] = "tempfail"


def _ip_addresses(value: tuple[str, ...]) -> tuple[str, ...]:
    """``relay_ips``: every item an IPv4/IPv6 address."""
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address; list the relay's public IPv4/IPv6 IPs") from None
    return value


class DoctorSection(_Strict):
    """``smtpplus-milter doctor`` (docs/doctor.md): what to check beyond the config itself."""

    # The relay's public addresses, which SPF must allow and which need a PTR; empty: verification.relay_ips.
    relay_ips: Annotated[tuple[str, ...], _LIST] = ()
    # DKIM selectors the signer uses for the authorized domains (e.g. [mail]); empty: the DKIM key
    # check says what it could not check.
    dkim_selectors: Annotated[tuple[str, ...], _LIST] = ()
    # The Postfix instance whose settings are checked (its main.cf directory).
    postfix_config_dir: str = "/etc/postfix"
    # Where the SMTP ports are tried (STARTTLS, certificate, AUTH only after TLS), and which ports.
    host: str = "127.0.0.1"
    ports: Annotated[tuple[int, ...], _LIST] = (25, 587)
    # The name clients use for the relay (the certificate must name it); empty: Postfix's myhostname.
    hostname: str = ""
    # A certificate that expires within this many days is a warning (an expired one fails).
    certificate_warn_days: Annotated[int, Field(ge=1, le=365)] = 21

    @field_validator("relay_ips")
    @classmethod
    def _relay_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _ip_addresses(value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"{port!r} is not a TCP port (1-65535)")
        return value

    @field_validator("dkim_selectors")
    @classmethod
    def _selectors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for selector in value:
            labels = selector.split(".")
            if not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
                raise ValueError(f"{selector!r} is not a DKIM selector (DNS labels: letters, digits, '-')")
        return value


class ListSection(_Strict):
    # List-Id: <list_id> on the list's mail (RFC 2919), e.g. news.yourcompany.com.
    list_id: Annotated[str, Field(pattern=_LIST_ID, max_length=255)] | None = None
    # absent: transactional mail, no List-Unsubscribe.
    unsubscribe: UnsubscribeSection | None = None
    header: TextVariants | None = None
    footer: TextVariants | None = None
    notify: NotifySection | None = None
    # A recipient not named in To:/Cc: gets a copy of their own whose To: is their address
    # (docs/fanout.md: the milter tags the message, the fanout filter makes the copies).
    bcc_in_to: bool = False
    # Over sending_limits for the list's users; a user's own keys win over these.
    sending_limits: LimitOverrides | None = None


class SaslSection(_Strict):
    passwd_file: str = "/etc/dovecot/smtpplus.passwd"


class VerificationSection(_Strict):
    required: bool = False
    code_ttl_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    smtp: HostPortValue = HostPort("127.0.0.1", 25)
    from_: str | None = Field(default=None, alias="from")
    resolver: ResolverValue | None = None
    relay_ips: Annotated[tuple[str, ...], _LIST] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return _sender(value, "verification mail")

    @field_validator("relay_ips")
    @classmethod
    def _relay_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _ip_addresses(value)


class TrackingSection(_Strict):
    """Delivery tracking (docs/tracking.md). Without this section nothing is recorded."""

    # sqlite:////ABSOLUTE/PATH.db for one relay host; postgresql://USER@HOST/DB for several.
    store: Annotated[str, Field(pattern=r"^(sqlite:////\S+|postgres(ql)?://\S+)$", max_length=1000)]
    # This relay host's name in the store; null = the host name.
    node: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)] | None = None
    maillog: str = "/var/log/postfix.log"
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 90
    metrics_listen: HostPortValue | None = HostPort("127.0.0.1", 9465)
    # Records wait here while the store is slow or down (at most spool_max_mb).
    spool_dir: str = "/var/lib/smtpplus/tracking-spool"
    spool_max_mb: Annotated[int, Field(ge=1, le=100_000)] = 256


class FanoutSection(_Strict):
    """One copy per recipient (docs/fanout.md): the content filter ``smtpplus-milter fanout``."""

    # Where Postfix's LMTP client hands the filter each message, once per recipient.
    listen: SocketValue = FANOUT_LISTEN
    # The loopback smtpd (without this milter) that takes the copies back.
    reinject: HostPortValue = FANOUT_REINJECT
    metrics_listen: HostPortValue | None = None
    # Which copies were already made: a retry answers from here instead of sending a second copy.
    journal: str = "/var/lib/smtpplus/fanout.db"
    journal_days: Annotated[int, Field(ge=1, le=365)] = 7

    @field_validator("reinject")
    @classmethod
    def _loopback(cls, value: HostPort) -> HostPort:
        # The copies skip this milter's checks, so they must go only to a listener that accepts
        # nothing from outside (postfix-config prints one on 127.0.0.1:10027).
        try:
            loopback = ipaddress.ip_address(value.host).is_loopback
        except ValueError:
            loopback = value.host == "localhost"
        if not loopback:
            raise ValueError(
                f"{value} is not a loopback address: copies go back to the relay's own re-injection "
                "smtpd (e.g. 127.0.0.1:10027), never to another host"
            )
        return value


class WebSection(_Strict):
    """The unsubscribe endpoint ``smtpplus-milter web`` (docs/unsubscribe.md, "The web endpoint")."""

    # Plain HTTP behind the operator's TLS reverse proxy: loopback unless the proxy is elsewhere.
    listen: HostPortValue = WEB_LISTEN
    metrics_listen: HostPortValue | None = None


class Settings(_Strict):
    """The main YAML file."""

    milter: MilterSection = MilterSection()
    unauthenticated: Literal["pass", "reject"] = "pass"
    # Postfix services whose {daemon_name} (milter_macro_daemon_name in master.cf) marks them as
    # submission: a session there without SASL login is refused whatever `unauthenticated` says.
    submission_daemon_names: Annotated[tuple[DaemonName, ...], _LIST] = ()
    unknown_user: Literal["reject", "pass"] = "reject"
    authorization: AuthorizationSection = AuthorizationSection()
    limits: LimitsSection = LimitsSection()
    priority: PrioritySection = PrioritySection()
    metrics: MetricsSection = MetricsSection()
    alerts: AlertsSection = AlertsSection()
    lists: dict[str, ListSection] = Field(default_factory=dict)
    users_file: str = "users.yaml"
    sasl: SaslSection = SaslSection()
    verification: VerificationSection = VerificationSection()
    tracking: TrackingSection | None = None
    # The key of bounce and unsubscribe tokens; read only when a feature needs it.
    secret_file: str | None = None
    bounces: BouncesSection = BouncesSection()
    suppression: SuppressionSection = SuppressionSection()
    notify: NotifySection = NotifySection()
    fanout: FanoutSection = FanoutSection()
    # null: no unsubscribe endpoint on this host (the section is what asks for one).
    web: WebSection | None = None
    # null: no policy daemon; the section (even empty: `policy: {}`) is what asks for one, and
    # postfix-config then prints the check_policy_service lines.
    policy: PolicySection | None = None
    doctor: DoctorSection = DoctorSection()
    sending_limits: SendingLimitsSection = SendingLimitsSection()


def _entries(value: object, kind: str) -> tuple[str, ...]:
    """Accept ``"a;b"`` or a YAML list; a ``,`` is always a mistake."""
    if value is None:
        return ()
    if isinstance(value, str):
        if "," in value:
            raise ValueError(f"{kind} entries are separated with ';', not ','")
        items = [part.strip() for part in value.split(";")]
    elif isinstance(value, list | tuple):
        items = []
        for part in value:
            if not isinstance(part, str):
                raise ValueError(f"every {kind} entry must be a string, got {part!r}")
            if "," in part or ";" in part:
                raise ValueError(f"one {kind} per list item (found ',' or ';' in {part!r})")
            items.append(part.strip())
    else:
        raise ValueError(f"give {kind}s as a ';'-separated string or a YAML list")
    return tuple(item for item in items if item)


def _domains(value: object) -> tuple[str, ...]:
    result = []
    for item in _entries(value, "domain"):
        if "@" in item:
            raise ValueError(f"{item!r} is an address; put it in authorized_senders, or give only its domain")
        try:
            result.append(normalize_domain(item))
        except AddressError as exc:
            raise ValueError(str(exc)) from None
    return tuple(result)


def _senders(value: object) -> tuple[str, ...]:
    result = []
    for item in _entries(value, "sender"):
        try:
            result.append(str(normalize_address(item)))
        except AddressError as exc:
            raise ValueError(f"{exc}; write senders as local@domain") from None
    return tuple(result)


def _recipients(value: object) -> tuple[str, ...]:
    result = []
    for item in _entries(value, "address"):
        try:
            result.append(str(normalize_address(item)))
        except AddressError as exc:
            raise ValueError(f"{exc}; write recipients as local@domain") from None
    return tuple(result)


class UserEntry(_Strict):
    """One user in the users file."""

    active: bool = True
    priority: Priority | None = None
    list: str | None = None
    note: str = ""
    authorized_domains: tuple[str, ...] = ()
    authorized_senders: tuple[str, ...] = ()
    pending_domains: tuple[str, ...] = ()
    pending_senders: tuple[str, ...] = ()
    # Over the list's (or the default) sending limits: this user's own.
    sending_limits: LimitOverrides | None = None

    @field_validator("authorized_domains", "pending_domains", mode="before")
    @classmethod
    def _check_domains(cls, value: object) -> tuple[str, ...]:
        return _domains(value)

    @field_validator("authorized_senders", "pending_senders", mode="before")
    @classmethod
    def _check_senders(cls, value: object) -> tuple[str, ...]:
        return _senders(value)


class UsersFile(RootModel[dict[str, UserEntry]]):
    model_config = ConfigDict(frozen=True, strict=True)
