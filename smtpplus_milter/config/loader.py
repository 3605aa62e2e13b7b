"""YAML config + users file -> validated, frozen, typed objects.

The schema (:mod:`~smtpplus_milter.config.schema`) is the table of every key; this module reads
the files, validates them against it and builds :class:`Config`. Every problem is reported as a
:class:`ConfigProblem` naming the file, the key path, the line and what to do; all problems of a
file are reported at once. A config that does not validate is never returned, so a reload can
keep serving the old one. Every path the config names is resolved here, once.
"""

from __future__ import annotations

import os
import socket
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, RootModel, ValidationError

from smtpplus_milter.config.schema import Settings, UserEntry, UsersFile
from smtpplus_milter.config.values import OwnMail, PostfixInputs, Tracking
from smtpplus_milter.config.yamlsrc import Located, YamlProblem, load_yaml
from smtpplus_milter.core.users import AuthPolicy, Check, Directory, Mode, User, normalize_login
from smtpplus_milter.core.verification import STATE_FILE

DEFAULT_CONFIG = Path("/etc/smtpplus/smtpplus.yaml")


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
    """Everything the running milter and the commands need, validated; every path absolute."""

    path: Path
    users_path: Path
    passwd_path: Path  # sasl.passwd_file: Dovecot's passwd-file of the SMTP+ logins
    state_path: Path  # verification.json, next to the users file
    settings: Settings
    directory: Directory
    tracking: Tracking | None = None  # None: delivery tracking is off (no tracking: section)

    @property
    def users(self) -> dict[str, User]:
        return dict(self.directory.users)

    @property
    def postfix(self) -> PostfixInputs:
        """What ``postfix-config`` and ``setup`` generate the Postfix side from."""
        return postfix_inputs(self.settings)

    @property
    def warnings(self) -> list[str]:
        """Valid but risky settings, for check-config and the milter's start-up log."""
        found = []
        host = self.settings.milter.socket.exposed_host
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
    users_path = _beside(path, settings.users_file)
    users_located = _read(
        users_path, "the users file", referrer=(path, located.line_of(("users_file",))), text=users_text
    )
    entries = _validate(UsersFile, users_located, users_path).root
    directory = Directory(_build_users(entries, settings, users_located, users_path), _auth_policy(settings))
    return Config(
        path=path,
        users_path=users_path,
        passwd_path=_beside(path, settings.sasl.passwd_file),
        state_path=users_path.with_name(STATE_FILE),
        settings=settings,
        directory=directory,
        tracking=_tracking(path, settings),
    )


def _tracking(path: Path, settings: Settings) -> Tracking | None:
    section = settings.tracking
    if section is None:
        return None
    return Tracking(
        store=section.store,
        node=section.node or socket.gethostname(),
        maillog=_beside(path, section.maillog),
        retention_days=section.retention_days,
        metrics_listen=section.metrics_listen,
        spool_dir=_beside(path, section.spool_dir),
        spool_max_bytes=section.spool_max_mb * 1024 * 1024,
    )


def _beside(config_path: Path, value: str) -> Path:
    """A path the config names: relative paths are relative to the config file's directory."""
    named = Path(value)
    return named if named.is_absolute() else config_path.parent / named


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


def postfix_inputs(settings: Settings) -> PostfixInputs:
    """What the Postfix snippets need from *settings*: routed queues, the size limit, own mail."""
    own = []
    email = settings.alerts.email
    if email is not None:
        own.append(OwnMail("alerts.email.smtp", email.smtp, email.from_))
    verification = settings.verification
    if verification.from_ is not None:
        own.append(OwnMail("verification.smtp", verification.smtp, verification.from_))
    return PostfixInputs(
        queues=frozenset(settings.priority.queues.values()),
        max_message_bytes=settings.limits.max_message_bytes,
        own_mail=tuple(own),
    )


def config_path_from_env() -> Path:
    return Path(os.environ.get("SMTPPLUS_CONFIG", str(DEFAULT_CONFIG)))
