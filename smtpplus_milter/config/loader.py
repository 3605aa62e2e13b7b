"""YAML config + users file -> validated, frozen, typed objects.

One declarative schema (pydantic models below) is the table of every key. Every problem is
reported as a :class:`ConfigProblem` naming the file, the key path, the line and what to do;
all problems of a file are reported at once. A config that does not validate is never returned,
so a reload can keep serving the old one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from smtpplus_milter.config.yamlsrc import Located, YamlProblem, load_yaml
from smtpplus_milter.core.addresses import AddressError, normalize_address, normalize_domain
from smtpplus_milter.core.users import AuthPolicy, Check, Directory, Mode, User, normalize_login

DEFAULT_CONFIG = Path("/etc/smtpplus/smtpplus.yaml")

Priority = Annotated[int, Field(ge=1, le=5)]
Queue = Literal["high", "normal", "low"]
DEFAULT_QUEUES: dict[int, Queue] = {1: "high", 2: "high", 3: "normal", 4: "low", 5: "low"}

_SOCKET = re.compile(r"^(unix|local):/.+|^inet6?:\d{1,5}@\S+$")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})$")


# A {daemon_name} value as master.cf sets it (-o milter_macro_daemon_name=ORIGINATING).
DaemonName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=100)]

# YAML has lists, not tuples; lax mode here only lets a list become the (immutable) tuple.
_LIST = Field(strict=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _host_port(value: str) -> str:
    _split_host_port(value)
    return value


def _split_host_port(value: str) -> tuple[str, int]:
    match = _HOSTPORT.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return match.group(1).strip("[]"), int(match.group(2))


def split_host_port(value: str) -> tuple[str, int]:
    """HOST and PORT of a validated ``HOST:PORT`` setting (``[v6]:port`` without brackets)."""
    return _split_host_port(value)


class MilterSection(_Strict):
    socket: str = "unix:/var/spool/postfix/smtpplus/milter.sock"
    timeout: Annotated[int, Field(ge=1, le=3600)] = 60
    on_internal_error: Literal["tempfail", "accept"] = "tempfail"

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        if re.fullmatch(r"inet6?:\d{1,5}", value):
            # libmilter would listen on every interface, and whoever reaches the socket can claim
            # any SASL login ({auth_authen} is just a macro the client side sends).
            raise ValueError(
                f"{value!r} has no host, so the milter would listen on every interface; "
                f"name it, e.g. {value}@127.0.0.1 (or use a unix socket)"
            )
        if not _SOCKET.match(value):
            raise ValueError(f"{value!r} is not a milter socket; use unix:/ABSOLUTE/PATH or inet:PORT@127.0.0.1")
        return value

    @property
    def exposed_host(self) -> str | None:
        """The host of an inet socket that is not loopback (anyone there can pose as Postfix)."""
        kind, _, rest = self.socket.partition(":")
        if kind not in ("inet", "inet6"):
            return None
        host = rest.partition("@")[2]
        if host == "localhost":
            return None
        try:
            return None if ipaddress.ip_address(host.strip("[]")).is_loopback else host
        except ValueError:
            return host  # a name: it may resolve to anything


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


class PrioritySection(_Strict):
    default: Priority = 3
    queues: dict[Priority, Queue] = Field(default_factory=lambda: dict(DEFAULT_QUEUES))

    @field_validator("queues")
    @classmethod
    def _all_levels(cls, value: dict[int, str]) -> dict[int, str]:
        missing = sorted(set(range(1, 6)) - set(value))
        if missing:
            raise ValueError(f"no queue for priority {', '.join(map(str, missing))}; give all of 1-5")
        return value


class MetricsSection(_Strict):
    listen: str | None = "127.0.0.1:9464"
    per_user_labels: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else _host_port(value)


class WebhookSink(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    timeout: Annotated[float, Field(gt=0, le=120)] = 5


class AlertmanagerSink(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    timeout: Annotated[float, Field(gt=0, le=120)] = 5


class EmailSink(_Strict):
    to: Annotated[tuple[str, ...], _LIST]
    smtp: str = "127.0.0.1:25"
    from_: str = Field(alias="from")

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, value: str) -> str:
        return _host_port(value)


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


class ListSection(_Strict):
    header: TextVariants | None = None
    footer: TextVariants | None = None


class SaslSection(_Strict):
    passwd_file: str = "/etc/dovecot/smtpplus.passwd"


class VerificationSection(_Strict):
    required: bool = False
    code_ttl_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    smtp: str = "127.0.0.1:25"
    from_: str | None = Field(default=None, alias="from")
    resolver: str | None = None
    relay_ips: Annotated[tuple[str, ...], _LIST] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = _split_host_port(value)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{value!r}: the resolver must be an IP address and port, e.g. 127.0.0.1:53") from None
        return f"{host}:{port}"

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(normalize_address(value))
        except AddressError as exc:
            raise ValueError(f"{exc}; write the sender of verification mail as local@domain") from None

    @field_validator("relay_ips")
    @classmethod
    def _relay_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address; list the relay's public IPv4/IPv6 IPs") from None
        return value


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


@dataclass(frozen=True)
class ConfigProblem:
    file: Path
    path: tuple[str | int, ...]
    line: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        key = ".".join(str(part) for part in self.path) or "(top level)"
        text = f"{where}: {key}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class Config:
    """Everything the running milter needs, validated."""

    path: Path
    users_path: Path
    settings: Settings
    directory: Directory

    @property
    def users(self) -> dict[str, User]:
        return dict(self.directory.users)

    @property
    def warnings(self) -> list[str]:
        """Valid but risky settings, for check-config and the milter's start-up log."""
        found = []
        host = self.settings.milter.exposed_host
        if host is not None:
            found.append(
                f"milter.socket {self.settings.milter.socket} listens on {host}, not on loopback: anyone who "
                "can connect there can pose as Postfix and claim any SASL login; firewall it to the Postfix "
                "hosts or use a unix socket"
            )
        return found


def load_config(path: Path | str = DEFAULT_CONFIG, *, users_text: str | None = None) -> Config:
    """Read and validate the main file and the users file it names; raise ConfigError.

    *users_text*, when given, is validated in place of the users file's current content (and
    reported under its path): ``smtpplus-milter users`` checks the file it is about to write
    with exactly the code that ``check-config`` and a reload use.
    """
    path = Path(path).absolute()
    located = _read(path, "the config file")
    settings = _validate(Settings, located, path)
    users_path = resolve_users_path(path, settings)
    users_located = _read(
        users_path, "the users file", referrer=(path, located.line_of(("users_file",))), text=users_text
    )
    entries = _validate(UsersFile, users_located, users_path).root
    directory = Directory(_build_users(entries, settings, users_located, users_path), _auth_policy(settings))
    return Config(path, users_path, settings, directory)


def resolve_users_path(config_path: Path, settings: Settings) -> Path:
    users = Path(settings.users_file)
    return users if users.is_absolute() else config_path.parent / users


def _read(path: Path, what: str, referrer: tuple[Path, int | None] | None = None, text: str | None = None) -> Located:
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if referrer is not None:
            raise ConfigError(
                [
                    ConfigProblem(
                        referrer[0],
                        ("users_file",),
                        referrer[1],
                        f"cannot read {what} {path}: {reason}",
                        "check users_file (relative paths are relative to the config file) and its permissions",
                    )
                ]
            ) from None
        raise ConfigError(
            [
                ConfigProblem(
                    path, (), None, f"cannot read {what}: {reason}", "check the path given with -c and its permissions"
                )
            ]
        ) from None
    try:
        located = load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError(
            [ConfigProblem(path, exc.path, exc.line, exc.message, "fix the YAML syntax at that line")]
        ) from None
    if located.value is None:
        located.value = {}
    if not isinstance(located.value, dict):
        raise ConfigError([ConfigProblem(path, (), 1, f"{what} must be a YAML mapping (key: value)", "")])
    return located


_M = typing.TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], located: Located, path: Path) -> _M:
    try:
        return model.model_validate(located.value)
    except ValidationError as exc:
        problems = [_problem(model, error, located, path) for error in exc.errors(include_url=False)]
        raise ConfigError(problems) from None


def _problem(model: type[BaseModel], error: Any, located: Located, path: Path) -> ConfigProblem:
    loc = tuple(
        part
        for part in error["loc"]
        if not (isinstance(part, str) and part.startswith(("function-", "[", "constrained")))
    )
    if model is UsersFile and loc and loc[0] == "root":  # RootModel adds no level of its own in the YAML
        loc = loc[1:]
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    hint = ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        message = f"unknown key {loc[-1]!r}"
        hint = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
    elif kind == "missing":
        message = "required key is missing"
        hint = "add it"
    elif kind == "literal_error":
        hint = "use one of the listed values"
    elif kind in ("int_type", "bool_type", "string_type", "float_type", "dict_type", "model_type", "tuple_type"):
        hint = "check the value's type (quotes make a string; numbers and true/false must not be quoted)"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than"):
        hint = (
            "priorities go from 1 (very high) to 5 (very low)"
            if "priorit" in ".".join(map(str, loc)) or (loc and isinstance(loc[-1], int))
            else "use a value inside the allowed range"
        )
    elif "';', not ','" in message:
        hint = 'write e.g. "a.example;b.example" or a YAML list'
    return ConfigProblem(path, loc, located.line_of(loc), message, hint)


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, RootModel):
            current = _unwrap(current.model_fields["root"].annotation)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                field = next((f for f in current.model_fields.values() if f.alias == part), None)
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel) and not issubclass(current, RootModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _build_users(entries: dict[str, UserEntry], settings: Settings, located: Located, path: Path) -> dict[str, User]:
    users: dict[str, User] = {}
    problems: list[ConfigProblem] = []
    seen_as: dict[str, str] = {}
    for name, entry in entries.items():
        login = normalize_login(str(name))
        line = located.line_of((name,))
        if not login or any(ch.isspace() or ch in ":;," for ch in login):
            problems.append(
                ConfigProblem(
                    path,
                    (name,),
                    line,
                    f"{name!r} is not a usable SASL login",
                    "use the login name exactly as the client sends it",
                )
            )
            continue
        if login in seen_as:
            problems.append(
                ConfigProblem(
                    path,
                    (name,),
                    line,
                    f"login {name!r} duplicates {seen_as[login]!r} (logins are case-insensitive)",
                    "keep one entry",
                )
            )
            continue
        seen_as[login] = str(name)
        if entry.list is not None and entry.list not in settings.lists:
            known = ", ".join(sorted(settings.lists)) or "none are defined"
            problems.append(
                ConfigProblem(
                    path,
                    (name, "list"),
                    located.line_of((name, "list")),
                    f"unknown list {entry.list!r}",
                    f"lists in the config file: {known}",
                )
            )
            continue
        users[login] = User(
            login=login,
            active=entry.active,
            priority=entry.priority if entry.priority is not None else settings.priority.default,
            list=entry.list,
            note=entry.note,
            authorized_domains=frozenset(entry.authorized_domains),
            authorized_senders=frozenset(entry.authorized_senders),
            pending_domains=frozenset(entry.pending_domains),
            pending_senders=frozenset(entry.pending_senders),
        )
    if problems:
        raise ConfigError(problems)
    return users


def _auth_policy(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        mode=Mode(settings.authorization.mode),
        checks=frozenset(Check(item) for item in settings.authorization.check),
        unknown_user=settings.unknown_user,
        unauthenticated=settings.unauthenticated,
        submission_daemon_names=frozenset(settings.submission_daemon_names),
    )


def config_path_from_env() -> Path:
    return Path(os.environ.get("SMTPPLUS_CONFIG", str(DEFAULT_CONFIG)))
