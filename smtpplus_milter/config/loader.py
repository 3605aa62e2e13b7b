"""YAML config + users file -> validated, frozen, typed objects.

The schema (:mod:`~smtpplus_milter.config.schema`) is the table of every key; this module reads
the files, validates them against it and builds :class:`Config`. Every problem is reported as a
:class:`ConfigProblem` naming the file, the key path, the line and what to do; all problems of a
file are reported at once. A config that does not validate is never returned, so a reload can
keep serving the old one. Every path the config names is resolved here, once.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import stat
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, RootModel, ValidationError

from smtpplus_milter.config.schema import NotifySection, Settings, UserEntry, UsersFile
from smtpplus_milter.config.values import (
    Bounces,
    Doctor,
    Fanout,
    Notices,
    Notify,
    OwnMail,
    Policy,
    PostfixInputs,
    Preempt,
    Secret,
    SendingLimits,
    Suppression,
    Tracking,
    Web,
)
from smtpplus_milter.config.yamlsrc import Located, YamlProblem, load_yaml
from smtpplus_milter.core.limits import Limits
from smtpplus_milter.core.tokens import MIN_KEY_BYTES
from smtpplus_milter.core.unsubscribe import ListUnsubscribe
from smtpplus_milter.core.users import AuthPolicy, Check, Directory, Mode, User, normalize_login
from smtpplus_milter.core.verification import STATE_FILE

DEFAULT_CONFIG = Path("/etc/smtpplus/smtpplus.yaml")
# Permission bits a secret_file may have without a warning (owner rw, group r).
SECRET_MODE_OK = 0o640
# The whole file is the key, as it is (a trailing newline counts); more than this is a wrong path.
MAX_SECRET_BYTES = 4096


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
    secret_path: Path | None = None  # secret_file, absolute; None: not configured
    secret: Secret | None = None  # read at load only when a feature needs it (bounces.return_path)
    bounces: Bounces = field(default_factory=Bounces)
    suppression: Suppression = field(default_factory=Suppression)
    fanout: Fanout = field(default_factory=Fanout)
    notify: Notify = field(default_factory=Notify)  # the global notify: block
    preempt: Preempt | None = None  # priority.preempt; None: no preemption
    web: Web | None = None  # the web: section (the unsubscribe endpoint); None: not on this host
    list_notify: Mapping[str, Notify] = field(default_factory=lambda: MappingProxyType({}))
    # Each list with lists.NAME.unsubscribe, with the key; empty while the key is not read (no
    # secret_file yet: a process started without create_secret, see load_config).
    unsubscribe: Mapping[str, ListUnsubscribe] = field(default_factory=lambda: MappingProxyType({}))
    policy: Policy = field(default_factory=Policy)  # the policy: section (policyd's socket)
    doctor: Doctor = field(default_factory=Doctor)  # what `doctor` checks beyond the config
    sending_limits: SendingLimits = field(default_factory=SendingLimits)

    def limits_for(self, login: str) -> Limits:
        """The sending limits of *login*: the user's own keys, else their list's, else the defaults.

        A login that is not in the users file gets the defaults (the policy daemon refuses it anyway).
        """
        normal = normalize_login(login)
        user = self.directory.users.get(normal)
        return self.sending_limits.resolve(normal, user.list if user is not None else None)

    def notify_for(self, list_name: str | None) -> Notify:
        """The notify: block in effect for a message of *list_name* (None: no list)."""
        return self.list_notify.get(list_name, self.notify) if list_name is not None else self.notify

    @property
    def users(self) -> dict[str, User]:
        return dict(self.directory.users)

    @property
    def postfix(self) -> PostfixInputs:
        """What ``postfix-config`` and ``setup`` generate the Postfix side from."""
        return postfix_inputs(self.settings, self.path)

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
        listen = self.bounces.ingest_listen
        if listen is not None and listen.exposed_host is not None:
            found.append(
                f"bounces.ingest_listen {listen} listens on {listen.exposed_host}, not on loopback: anyone who "
                "can connect there can feed reports (a forged token is ignored, a complaint quoting a real "
                "message is not); firewall it to the Postfix hosts or use a unix socket"
            )
        if listen is not None and self.bounces.return_path is None:
            found.append(
                "bounces.ingest_listen is set but bounces.return_path is not: no report comes back to "
                "this relay, so `ingest --serve` has nothing to take"
            )
        web = self.web
        if web is not None and web.exposed_host is not None:
            found.append(
                f"web.listen {web.listen} listens on {web.exposed_host}, not on loopback: the endpoint speaks "
                "plain HTTP and is meant to sit behind the TLS proxy (deploy/nginx/smtpplus-unsubscribe.conf); "
                "firewall it to the proxy or listen on 127.0.0.1"
            )
        secret = self.secret
        if secret is None and self.secret_path is not None and _needs_secret(self.settings) is not None:
            found.append(
                f"secret_file {self.secret_path} does not exist yet: `smtpplus-milter run` (or ingest) creates it "
                "on first use; it must be able to write there, else create it yourself: "
                + _MAKE_SECRET.format(path=self.secret_path)
            )
        if secret is not None and secret.mode & ~SECRET_MODE_OK:
            found.append(
                f"secret_file {secret.path} has mode {secret.mode:04o}: whoever can read it can forge bounce "
                f"and unsubscribe tokens; chmod 0600 {secret.path} (0640 at most, for the milter's group)"
            )
        if self.preempt is not None:
            used = set(self.settings.priority.queues.values())
            if "high" not in used:
                found.append(
                    "priority.preempt is set but no priority maps to the high queue (priority.queues): "
                    "nothing will ever pause"
                )
            idle = sorted(self.preempt.pause - used)
            if idle:
                found.append(
                    f"priority.preempt.pause names {', '.join(idle)}, but no priority maps to "
                    f"{'that queue' if len(idle) == 1 else 'those queues'} (priority.queues): nothing of it to hold"
                )
        policy = self.policy.listen
        if policy.exposed_host is not None:
            found.append(
                f"policy.listen {policy} listens on {policy.exposed_host}, not on loopback: anyone who can "
                "connect there can ask about any user's limits and spend them; firewall it to the Postfix "
                "hosts or use a unix socket"
            )
        store = self.sending_limits
        if store.store.startswith("redis://") and not _loopback(store.redis_host):
            found.append(
                f"sending_limits.store names the Redis server {store.redis_host} over plain redis://: the "
                "counters (and a password in the URL) cross the network unencrypted; use rediss:// or a "
                "private network"
            )
        return found


def load_config(
    path: Path | str = DEFAULT_CONFIG, *, users_text: str | None = None, create_secret: bool = False
) -> Config:
    """Read and validate the main file and the users file it names; raise ConfigError.

    *users_text*, when given, is validated in place of the users file's current content (and
    reported under its path): ``smtpplus-milter users`` checks the file it is about to write
    with exactly the code that ``check-config`` and a reload use.

    *create_secret*: the process uses the tokens (``run``, ``ingest``): a ``secret_file`` that a
    feature needs and that does not exist yet is created (0600, 32 random bytes, atomically, so two
    processes starting at once end up with the same key). Without it a missing file is a warning.
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
    secret_path = _beside(path, settings.secret_file) if settings.secret_file is not None else None
    notify, list_notify = resolve_notify(settings)
    problems = _notify_problems(notify, list_notify, located, path)
    problems += _unsubscribe_problems(settings, located, path)
    if settings.bounces.return_path is not None and settings.tracking is None:
        where = ("bounces", "return_path")
        problems.append(
            ConfigProblem(
                path,
                where,
                located.line_of(where),
                "returned reports are matched to the messages the tracking store recorded, but tracking is off",
                "add a tracking: section (docs/tracking.md), or set bounces.return_path to null",
            )
        )
    if settings.web is not None and settings.tracking is None:
        problems.append(
            ConfigProblem(
                path,
                ("web",),
                located.line_of(("web",)),
                "the unsubscribe endpoint records each unsubscribe in the tracking store, but tracking is off",
                "add a tracking: section (docs/tracking.md), or remove the web: section",
            )
        )
    try:
        secret = _secret(secret_path, settings, located, path, create=create_secret)
    except ConfigError as exc:
        problems[:0] = exc.problems
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        users_path=users_path,
        passwd_path=_beside(path, settings.sasl.passwd_file),
        state_path=users_path.with_name(STATE_FILE),
        settings=settings,
        directory=directory,
        tracking=_tracking(path, settings),
        secret_path=secret_path,
        secret=secret,
        bounces=Bounces(
            return_path=settings.bounces.return_path,
            suppress_hard_days=settings.bounces.suppress_hard_days,
            soft_limit=settings.bounces.soft_limit,
            ingest_listen=settings.bounces.ingest_listen,
        ),
        suppression=Suppression(action=settings.suppression.action),
        fanout=Fanout(
            listen=settings.fanout.listen,
            reinject=settings.fanout.reinject,
            metrics_listen=settings.fanout.metrics_listen,
            journal=_beside(path, settings.fanout.journal),
            journal_days=settings.fanout.journal_days,
        ),
        notify=notify,
        list_notify=list_notify,
        preempt=_preempt(path, settings),
        web=Web(settings.web.listen, settings.web.metrics_listen) if settings.web is not None else None,
        unsubscribe=_unsubscribe(settings, secret),
        policy=_policy(settings),
        doctor=_doctor(settings),
        sending_limits=_sending_limits(settings, entries, directory),
    )


def _doctor(settings: Settings) -> Doctor:
    section = settings.doctor
    return Doctor(
        relay_ips=section.relay_ips or settings.verification.relay_ips,
        dkim_selectors=section.dkim_selectors,
        postfix_config_dir=Path(section.postfix_config_dir),
        host=section.host,
        ports=section.ports,
        hostname=section.hostname,
        certificate_warn_days=section.certificate_warn_days,
    )


def _policy(settings: Settings) -> Policy:
    section = settings.policy
    if section is None:
        return Policy()
    return Policy(
        listen=section.listen,
        enabled=True,
        metrics_listen=section.metrics_listen,
        idle_timeout_seconds=section.idle_timeout_seconds,
        max_connections=section.max_connections,
        refund_listen=section.refund_listen,
    )


def _sending_limits(settings: Settings, entries: Mapping[str, UserEntry], directory: Directory) -> SendingLimits:
    """Every list's and every overriding user's limits, resolved once: a user over the list over the defaults."""
    section = settings.sending_limits
    defaults = Limits(
        messages_per_hour=section.messages_per_hour,
        recipients_per_message=section.recipients_per_message,
        recipients_per_day=section.recipients_per_day,
        bytes_per_day=section.bytes_per_day,
    )
    lists = {
        name: replace(defaults, **list_section.sending_limits.given())
        if list_section.sending_limits is not None
        else defaults
        for name, list_section in settings.lists.items()
    }
    users = {}
    for name, entry in entries.items():
        if entry.sending_limits is None:
            continue
        login = normalize_login(str(name))
        user = directory.users[login]  # _build_users accepted every entry, or load_config stopped
        base = lists[user.list] if user.list is not None else defaults
        users[login] = replace(base, **entry.sending_limits.given())
    return SendingLimits(
        defaults=defaults,
        store=section.store,
        on_store_error=section.on_store_error,
        lists=MappingProxyType(lists),
        users=MappingProxyType(users),
    )


def _loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _preempt(path: Path, settings: Settings) -> Preempt | None:
    section = settings.priority.preempt
    if section is None:
        return None
    return Preempt(
        pause=frozenset(section.pause),
        resume_after_seconds=section.resume_after_seconds,
        postfix_config_dir=_beside(path, section.postfix_config_dir),
        state_file=_beside(path, section.state_file),
        metrics_listen=section.metrics_listen,
    )


# The shell line that makes a key, for hints: written with umask 077 so it is never readable by others.
_MAKE_SECRET = "(umask 077; head -c 32 /dev/urandom > {path})"


def _needs_secret(settings: Settings) -> tuple[str, ...] | None:
    """The key path of the first setting that needs the secret, or None (then it is not read)."""
    if settings.bounces.return_path is not None:
        return ("bounces", "return_path")
    for name, section in settings.lists.items():
        if section.unsubscribe is not None:
            return ("lists", name, "unsubscribe")
    if settings.web is not None:
        return ("web",)  # the endpoint reads the unsubscribe tokens in its URLs
    return None


def _unsubscribe_problems(settings: Settings, located: Located, path: Path) -> list[ConfigProblem]:
    """A list's unsubscribe needs the store (to suppress) and, for mailto:, the return path."""
    problems = []
    for name, section in settings.lists.items():
        if section.unsubscribe is None:
            continue
        where = ("lists", name, "unsubscribe")
        if settings.tracking is None:
            problems.append(
                ConfigProblem(
                    path,
                    where,
                    located.line_of(where),
                    "an unsubscribe is recorded as a suppression in the tracking store, but tracking is off",
                    "add a tracking: section (docs/tracking.md), or remove unsubscribe "
                    "(the list is then transactional)",
                )
            )
        if section.unsubscribe.mailto and settings.bounces.return_path is None:
            mailto = (*where, "mailto")
            problems.append(
                ConfigProblem(
                    path,
                    mailto,
                    located.line_of(mailto),
                    "mailto: unsubscribes go to u+TOKEN@<bounces.return_path>, but bounces.return_path is not set",
                    "set bounces.return_path (docs/bounces.md), or set mailto: false",
                )
            )
    return problems


def _unsubscribe(settings: Settings, secret: Secret | None) -> Mapping[str, ListUnsubscribe]:
    """Each list's unsubscribe settings as values (the mailto: domain only with mailto: true)."""
    if secret is None:
        return MappingProxyType({})
    return_path = settings.bounces.return_path
    return MappingProxyType(
        {
            name: ListUnsubscribe(
                section.unsubscribe.url,
                return_path if section.unsubscribe.mailto else None,
                secret.key,
                node=_tracking_node(settings),
            )
            for name, section in settings.lists.items()
            if section.unsubscribe is not None
        }
    )


def _secret(
    secret_path: Path | None, settings: Settings, located: Located, path: Path, *, create: bool = False
) -> Secret | None:
    """The key of the tokens, read now if a feature needs it; a ConfigError if it is unusable.

    A file that does not exist yet is created when *create* (see :func:`load_config`), else
    None: the feature waits for the first process that creates it (``Config.warnings`` says so).
    """
    needed_by = _needs_secret(settings)
    if needed_by is None:
        return None
    needer = ".".join(needed_by)
    if secret_path is None:
        example = path.parent / "secret"
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    needed_by,
                    located.line_of(needed_by),
                    "set, so secret_file (the key that authenticates bounce and unsubscribe tokens) is needed, "
                    "but it is not set",
                    f"add 'secret_file: secret' and create it: {_MAKE_SECRET.format(path=example)}",
                )
            ]
        )
    where = ("secret_file",)
    line = located.line_of(where)
    make = _MAKE_SECRET.format(path=secret_path)
    if not secret_path.exists() and not secret_path.is_symlink():
        if not create:
            return None
        try:
            create_secret_file(secret_path)
        except OSError as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        path,
                        where,
                        line,
                        f"{needer} needs secret_file {secret_path}, which does not exist and cannot be created "
                        f"here: {exc.strerror or exc}",
                        f"create it as root: {make}; then chown it to the user the milter runs as",
                    )
                ]
            ) from None
    try:
        with secret_path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            key = handle.read(MAX_SECRET_BYTES + 1)  # bounded: the path might name a device
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    where,
                    line,
                    f"{needer} needs secret_file {secret_path}, which cannot be read: {reason}",
                    f"create it: {make}; it must be readable by the user the milter runs as"
                    if isinstance(exc, FileNotFoundError)
                    else "check its path (relative paths are relative to the config file) and permissions",
                )
            ]
        ) from None
    if len(key) > MAX_SECRET_BYTES:
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    where,
                    line,
                    f"secret_file {secret_path} is longer than {MAX_SECRET_BYTES} bytes; is it the right file?",
                    f"a key file holds {MIN_KEY_BYTES} random bytes: {make}",
                )
            ]
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    where,
                    line,
                    f"secret_file {secret_path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}",
                    f"make a new one: {make} (tokens already sent stop being valid)",
                )
            ]
        )
    return Secret(secret_path, key, mode)


def create_secret_file(path: Path) -> None:
    """A new key file: 32 random bytes, mode 0600, complete before it appears under its name.

    Written to a temporary name and linked into place, which fails if the name exists: when two
    processes create it at once, one wins and both then read the winner's key.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(MIN_KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: its key is the key
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(temporary)


def resolve_notify(settings: Settings) -> tuple[Notify, Mapping[str, Notify]]:
    """The global notify block, and each list's (its keys over the global ones), as values."""
    base = _notices(settings.notify, None)
    per_list = {
        name: _notices(section.notify, base) for name, section in settings.lists.items() if section.notify is not None
    }
    return base, MappingProxyType(per_list)


def _notices(section: NotifySection, base: Notify | None) -> Notify:
    """*section* as a value; with *base*, every key the section leaves out comes from *base*."""
    if base is None:
        return Notify(
            smtp=section.smtp,
            sender=section.from_,
            bounces=Notices(section.bounces.to, section.bounces.mode, section.bounces.original_sender),
            complaints=Notices(section.complaints.to, section.complaints.mode),
            unsubscribes=Notices(section.unsubscribes.to, section.unsubscribes.mode),
        )
    given = section.model_fields_set

    def over(inherited: Notices, own: BaseModel) -> Notices:
        # The schema's keys of bounces:/complaints:/unsubscribes: are the field names of Notices.
        return replace(inherited, **{name: getattr(own, name) for name in own.model_fields_set})

    return Notify(
        smtp=section.smtp if "smtp" in given else base.smtp,
        sender=section.from_ if "from_" in given else base.sender,
        bounces=over(base.bounces, section.bounces) if "bounces" in given else base.bounces,
        complaints=over(base.complaints, section.complaints) if "complaints" in given else base.complaints,
        unsubscribes=over(base.unsubscribes, section.unsubscribes) if "unsubscribes" in given else base.unsubscribes,
    )


def _notify_problems(
    notify: Notify, list_notify: Mapping[str, Notify], located: Located, path: Path
) -> list[ConfigProblem]:
    """A notify block that would send mail must name its sender (notify.from)."""
    problems = []
    blocks: list[tuple[tuple[str, ...], Notify]] = [(("notify",), notify)]
    blocks += [(("lists", name, "notify"), value) for name, value in list_notify.items()]
    for where, value in blocks:
        if value.sender is not None:
            continue
        sends_to = value.bounces.to or value.complaints.to or value.unsubscribes.to
        if sends_to or value.bounces.original_sender:
            why = "to the listed addresses" if sends_to else "to original senders"
            problems.append(
                ConfigProblem(
                    path,
                    (*where, "from"),
                    located.line_of(where),
                    f"notices would be sent {why}, but no sender is set",
                    f"set {'.'.join(where)}.from to an address of this relay, e.g. postmaster@relay.example",
                )
            )
    return problems


def _tracking_node(settings: Settings) -> str:
    """``tracking.node``, by default this host's name ("" without tracking)."""
    section = settings.tracking
    return "" if section is None else section.node or socket.gethostname()


def _tracking(path: Path, settings: Settings) -> Tracking | None:
    section = settings.tracking
    if section is None:
        return None
    return Tracking(
        store=section.store,
        node=_tracking_node(settings),
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


def postfix_inputs(settings: Settings, config_file: Path | None = None) -> PostfixInputs:
    """What the Postfix snippets need from *settings*: routed queues, the size limit, own mail,
    the return path's pipe (and the config file it names)."""
    own = []
    email = settings.alerts.email
    if email is not None:
        own.append(OwnMail("alerts.email.smtp", email.smtp, email.from_))
    verification = settings.verification
    if verification.from_ is not None:
        own.append(OwnMail("verification.smtp", verification.smtp, verification.from_))
    notify, list_notify = resolve_notify(settings)
    if notify.sender is not None:
        own.append(OwnMail("notify.smtp", notify.smtp, notify.sender))
    for name, value in list_notify.items():
        if value.sender is not None and value != notify:
            own.append(OwnMail(f"lists.{name}.notify.smtp", value.smtp, value.sender))
    inputs = PostfixInputs(
        queues=frozenset(settings.priority.queues.values()),
        max_message_bytes=settings.limits.max_message_bytes,
        own_mail=tuple(own),
        return_path=settings.bounces.return_path,
        ingest_listen=settings.bounces.ingest_listen,
        # A list with unsubscribe splits too: every recipient needs a copy with their own token.
        fanout=any(section.bcc_in_to or section.unsubscribe is not None for section in settings.lists.values()),
        fanout_listen=settings.fanout.listen,
        fanout_reinject=settings.fanout.reinject,
        policy_listen=settings.policy.listen if settings.policy is not None else None,
    )
    return inputs if config_file is None else replace(inputs, config_file=str(config_file))


def config_path_from_env() -> Path:
    return Path(os.environ.get("SMTPPLUS_CONFIG", str(DEFAULT_CONFIG)))
