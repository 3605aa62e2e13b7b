"""The install guide's steps (deploy/README-install.md), done idempotently: :class:`Setup`.

This module owns putting the milter beside a Postfix and a Dovecot: /etc/smtpplus, the Dovecot
snippet and passwd-file, the socket directory (tmpfiles) and the systemd unit, and the main.cf and
master.cf changes plus the lookup tables that ``postfix-config`` generates. Creating the user and
the venv is deploy/install.sh's job (it then runs ``smtpplus-milter setup``).

Every change is reported ("main.cf: smtpd_milters = ... (was: ...)"), everything already right as
"unchanged: ...", so a second run reports only "unchanged". Postfix is changed only through
``postconf -c DIR`` (``-e``, ``-M``, ``-P``), so every path can point at a private instance. An
``smtpd_milters`` that names other milters but not ours is refused without ``force``: a DKIM
signer listed before us would sign what we then change. Nothing is started or reloaded. Lines go
to the caller's ``out`` and ``warn``; nothing here prints.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from smtpplus_milter.config import Settings, postfix_inputs
from smtpplus_milter.infra.files import FileProblem, Ownership, replace_atomically

SOURCE_GUESS = Path(__file__).resolve().parents[2]
OUR_MILTER = "unix:smtpplus/milter.sock"
POSTCONF_TIMEOUT = 30.0
# Debian's own base for a new main.cf (what its postinst copies); the upstream proto otherwise.
MAIN_CF_PROTOS = (Path("/usr/share/postfix/main.cf.debian"), Path("/usr/share/postfix/main.cf.dist"))
MASTER_CF_PROTOS = (Path("/usr/share/postfix/master.cf.dist"),)

# The guide's §7 main.cf settings that do not depend on the config (smtpd_milters is computed).
MAIN_CF_FIXED = MappingProxyType(
    {
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_sasl_tls_security_options": "noanonymous",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
        "milter_connect_timeout": "10s",
        "milter_command_timeout": "30s",
        "milter_content_timeout": "120s",
        "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    }
)

SUBMISSION_PARAMS = MappingProxyType(
    {
        "syslog_name": "postfix/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_tls_auth_only": "yes",
        "smtpd_reject_unlisted_recipient": "no",
        "smtpd_client_restrictions": "",
        "smtpd_helo_restrictions": "",
        "smtpd_sender_restrictions": "",
        "smtpd_recipient_restrictions": "",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
        "milter_macro_daemon_name": "ORIGINATING",
    }
)


def merged_restrictions(check: str, existing: str) -> str:
    """*check* first in the restriction list *existing* (kept as it is when *check* is already in it)."""
    items = [item.strip() for item in existing.replace("\n", " ").split(",") if item.strip()]
    if "{" in existing:  # per-item settings: left to the operator, who is told by the warnings
        return existing if check in existing else ", ".join([check, existing.strip()])
    if check in items:
        return ", ".join(items)
    return ", ".join([check, *items])


MASTER_FIELDS = ("private", "unprivileged", "chroot", "wakeup", "process_limit", "command")


class SetupError(Exception):
    """A step cannot be done; the message says what to do about it. Exit 1."""


@dataclass
class Service:
    """One master.cf entry: ``name/type``, its fields after the type, and its ``-o`` parameters."""

    name: str
    type: str
    fields: tuple[str, ...]
    params: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    def line(self) -> str:
        return " ".join((self.name, self.type, *self.fields))


def parse_master_cf(text: str) -> list[Service]:
    """The entries of a master.cf fragment as ``postfix-config`` prints it."""
    services: list[Service] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            words = raw.split(None, 1)
            if not services or words[0] != "-o" or len(words) != 2 or "=" not in words[1]:
                raise ValueError(f"master.cf line {raw.strip()!r}: expected '-o name=value' after a service")
            name, _, value = words[1].partition("=")
            services[-1].params[name] = value
            continue
        words = raw.split()
        if len(words) < 8:
            raise ValueError(f"master.cf line {raw!r}: a service needs 8 fields")
        services.append(Service(words[0], words[1], (*words[2:7], " ".join(words[7:]))))
    return services


def _normal(value: str) -> str:
    return " ".join(value.split())


def _without_options(command: str) -> str:
    # postconf -F shows the -o parameters as part of the command; they are compared one by one.
    words = command.split()
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "-o":
            skip = True
        else:
            kept.append(word)
    return " ".join(kept)


def milter_list(value: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", value.strip()) if item]


@dataclass
class Options:
    postfix_dir: Path
    dovecot_dir: Path
    etc: Path
    socket_dir: Path
    source: Path
    milter_socket: str = OUR_MILTER
    sasl_path: str = "private/auth"
    submission_service: str = "submission"
    tls_cert: str | None = None
    tls_key: str | None = None
    nexthops: dict[str, str] = field(default_factory=dict)
    chroot: bool = True
    user: bool = True
    systemd: bool = True
    systemd_dir: Path = Path("/etc/systemd/system")
    tmpfiles_dir: Path = Path("/etc/tmpfiles.d")
    force: bool = False
    dry_run: bool = False


def config_path(options: Options) -> Path:
    """The config file setup reads: the installed one, or on a first run the shipped example it becomes."""
    installed = options.etc / "smtpplus.yaml"
    return installed if installed.exists() else options.source / "deploy" / "smtpplus.yaml"


class Setup:
    def __init__(
        self, options: Options, *, out: Callable[[str], None], warn: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.out = out
        # A separate channel, so that a second run's report (out) is only "unchanged" lines.
        self.warn = warn or (lambda text: out(f"WARNING: {text}"))
        self.changed = 0

    # --- reporting ------------------------------------------------------------------------

    def change(self, text: str) -> None:
        self.changed += 1
        self.out(f"{'would change' if self.options.dry_run else 'changed'}: {text}")

    def unchanged(self, text: str) -> None:
        self.out(f"unchanged: {text}")

    # --- helpers --------------------------------------------------------------------------

    def _group(self, name: str) -> int:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise SetupError(f"group {name} does not exist (install the Debian package that creates it)") from None

    def _service_group(self) -> int:
        if not self.options.user:
            return 0
        try:
            return self._group("smtpplus")
        except SetupError:
            if self.options.dry_run:
                return 0  # deploy/install.sh --dry-run: the user would have been created first
            raise SetupError(
                "user smtpplus does not exist: create it first (deploy/install.sh does, guide step 2), "
                "or give --no-user to own everything by root"
            ) from None

    def _service_user(self) -> int:
        if not self.options.user:
            return 0
        return pwd.getpwnam("smtpplus").pw_uid

    def _ensure_dir(self, path: Path, mode: int, uid: int, gid: int) -> None:
        what = f"directory {path} ({uid}:{gid} {mode:04o})"
        try:
            info = path.stat()
        except FileNotFoundError:
            self.change(f"created {what}")
            if not self.options.dry_run:
                path.mkdir(parents=True)
                os.chown(path, uid, gid)
                path.chmod(mode)
            return
        if (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (mode, uid, gid):
            self.unchanged(what)
            return
        self.change(f"{what} (was {info.st_uid}:{info.st_gid} {info.st_mode & 0o7777:04o})")
        if not self.options.dry_run:
            os.chown(path, uid, gid)
            path.chmod(mode)

    def _install_file(self, path: Path, data: bytes, ownership: Ownership, *, keep_existing: bool = False) -> None:
        """Write *path* if its content differs; *keep_existing*: an existing file is the operator's."""
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise SetupError(f"cannot read {path}: {exc.strerror}") from None
        if current is not None and (keep_existing or current == data):
            self.unchanged(f"{path}{' (exists, left as it is)' if keep_existing and current != data else ''}")
            return
        self.change(f"{'wrote' if current is None else 'replaced'} {path}")
        if self.options.dry_run:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(path, data, new_file=ownership)
        except FileProblem as exc:
            raise SetupError(str(exc)) from None

    def _source_file(self, relative: str) -> bytes:
        path = self.options.source / relative
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SetupError(
                f"cannot read {path} ({exc.strerror}): give --source, the smtpplus-milter source tree"
            ) from None

    def _run(self, command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT, check=False)
        except FileNotFoundError:
            raise SetupError(f"{command[0]} not found: is the Debian package installed?") from None
        except subprocess.TimeoutExpired:
            raise SetupError(f"{' '.join(command)} did not finish within {POSTCONF_TIMEOUT:.0f}s") from None
        # postconf only warns (exit 0) about a service name it does not know: that must not pass.
        if done.returncode != 0 or "warning: unmatched" in done.stderr:
            raise SetupError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr.strip()}")
        return done.stdout

    def postconf(self, *args: str) -> str:
        return self._run(["postconf", "-c", str(self.options.postfix_dir), *args])

    # --- the steps ------------------------------------------------------------------------

    def run(self, settings: Settings) -> None:
        """Every step, with *settings* from :func:`config_path`'s file."""
        # Everything that can refuse is decided before the first change.
        self._ensure_postfix_base()
        plan = self._postfix_plan(settings)
        self._etc()
        self._dovecot()
        self._socket_dir()
        self._apply_postfix(plan)

    def _etc(self) -> None:
        gid = self._service_group()
        self._ensure_dir(self.options.etc, 0o750, 0, gid)
        for name in ("smtpplus.yaml", "users.yaml"):
            # An existing config is the operator's: never overwritten.
            self._install_file(
                self.options.etc / name,
                self._source_file(f"deploy/{name}"),
                Ownership(0o640, 0, gid),
                keep_existing=True,
            )

    def _dovecot(self) -> None:
        directory = self.options.dovecot_dir
        dovecot_gid = self._group("dovecot")
        passwd = directory / "smtpplus.passwd"
        self._install_file(passwd, b"", Ownership(0o640, 0, dovecot_gid), keep_existing=True)
        snippet = self._source_file("deploy/dovecot/10-smtpplus-auth.conf").decode("utf-8")
        snippet = snippet.replace("/etc/dovecot/smtpplus.passwd", str(passwd))
        self._install_file(directory / "conf.d" / "10-smtpplus-auth.conf", snippet.encode(), Ownership(0o644, 0, 0))
        # System accounts (PAM) must not be able to log in to the relay.
        auth = directory / "conf.d" / "10-auth.conf"
        try:
            text = auth.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        disabled = re.sub(r"(?m)^!include auth-system\.conf\.ext", "#!include auth-system.conf.ext", text)
        if disabled == text:
            self.unchanged(f"{auth} (no active '!include auth-system.conf.ext')")
            return
        self.change(f"{auth}: commented out '!include auth-system.conf.ext' (PAM logins)")
        if not self.options.dry_run:
            replace_atomically(auth, disabled.encode("utf-8"))

    def _socket_dir(self) -> None:
        if self.options.systemd:
            self._install_file(
                self.options.tmpfiles_dir / "smtpplus-milter.conf",
                self._source_file("systemd/smtpplus-milter.tmpfiles"),
                Ownership(0o644, 0, 0),
            )
            self._install_file(
                self.options.systemd_dir / "smtpplus-milter.service",
                self._source_file("systemd/smtpplus-milter.service"),
                Ownership(0o644, 0, 0),
            )
            if not self.options.dry_run:
                self._run(["systemd-tmpfiles", "--create", str(self.options.tmpfiles_dir / "smtpplus-milter.conf")])
                self._run(["systemctl", "daemon-reload"])
        # With systemd, tmpfiles made it already (then this prints "unchanged").
        if not self.options.dry_run or not self.options.systemd:
            self._ensure_dir(self.options.socket_dir, 0o2750, self._service_user(), self._group("postfix"))

    # --- Postfix --------------------------------------------------------------------------

    def _ensure_postfix_base(self) -> None:
        # Debian's "No configuration" leaves no main.cf, and postconf -e cannot start from nothing.
        directory = self.options.postfix_dir
        for name, protos in (("main.cf", MAIN_CF_PROTOS), ("master.cf", MASTER_CF_PROTOS)):
            target = directory / name
            if target.exists():
                continue
            proto = next((path for path in protos if path.exists()), None)
            if proto is None:
                raise SetupError(f"{target} does not exist and no Postfix proto ({protos[0]}) to start from")
            self.change(f"{target} created from {proto}")
            if not self.options.dry_run:
                directory.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(proto, target)
                target.chmod(0o644)

    def _current_main_cf(self) -> dict[str, str]:
        if not (self.options.postfix_dir / "main.cf").exists():
            return {}  # dry run before the base exists
        current = {}
        for line in self.postconf("-n").splitlines():
            name, sep, value = line.partition(" = ")
            if sep:
                current[name] = value
            elif line.endswith(" ="):
                current[line[:-2]] = ""
        return current

    def _current_master_cf(self) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        fields: dict[str, dict[str, str]] = {}
        params: dict[str, dict[str, str]] = {}
        if not (self.options.postfix_dir / "master.cf").exists():
            return fields, params
        for option, target in (("-F", fields), ("-P", params)):
            for line in self.postconf(option).splitlines():
                key, _, value = line.partition(" =")
                name, _, rest = key.rpartition("/")
                value = value.strip()
                if option == "-F" and rest == "command":
                    value = _without_options(value)
                target.setdefault(name, {})[rest] = value
        return fields, params

    def _postfix_plan(self, settings: Settings) -> tuple[dict[str, str], list[Service], dict[str, str], list[str]]:
        from smtpplus_milter.admin.postfix import QUEUE_DIRECTORY, generate

        options = self.options
        current = self._current_main_cf()
        ours = options.milter_socket
        existing = milter_list(current.get("smtpd_milters", ""))
        others = [milter for milter in existing if milter != ours]
        if others and ours not in existing and not options.force:
            raise SetupError(
                f"smtpd_milters is already set to {current['smtpd_milters']!r}, without {ours}. Nothing was "
                f"changed. Give --force to put {ours} first and keep the others after it (a DKIM signer "
                "must come after smtpplus, which changes what it signs)"
            )
        milters = ", ".join([ours, *others])
        if "{" in current.get("smtpd_milters", ""):
            # Per-milter settings ({ inet:host:port, connect_timeout=... }): splitting and joining
            # the list would break them, so such a list is only accepted with ours already first.
            if existing[:1] != [ours]:
                raise SetupError(
                    f"smtpd_milters {current['smtpd_milters']!r} uses {{ }} per-milter settings; put {ours} "
                    "first in it by hand (postconf -e), then run setup again. Nothing was changed."
                )
            milters = current["smtpd_milters"]
        main_cf = {
            **MAIN_CF_FIXED,
            "smtpd_sasl_path": options.sasl_path,
            "smtpd_milters": milters,
        }
        if options.tls_cert:
            main_cf["smtpd_tls_cert_file"] = options.tls_cert
        if options.tls_key:
            main_cf["smtpd_tls_key_file"] = options.tls_key
        non_smtpd = milter_list(current.get("non_smtpd_milters", ""))
        if ours in non_smtpd:
            # Local submissions have no login and are not SMTP+ traffic.
            main_cf["non_smtpd_milters"] = ", ".join(milter for milter in non_smtpd if milter != ours)
        inputs = postfix_inputs(settings)
        snippets = generate(
            inputs,
            postfix_dir=str(options.postfix_dir),
            nexthops=options.nexthops,
            relayhost=current.get("relayhost", ""),
            chroot=options.chroot,
            queue_directory=self.postconf("-h", "queue_directory").strip() if inputs.policy_listen else QUEUE_DIRECTORY,
        )
        for warning in snippets.warnings:
            self.warn(warning)
        policy_check = snippets.main_cf.get("smtpd_end_of_data_restrictions")
        main_cf.update(snippets.main_cf)
        if policy_check is not None:
            # The policy daemon's check goes FIRST into the restriction lists the operator already
            # has (a permit_* before it would skip it); nothing of theirs is dropped.
            for name in ("smtpd_recipient_restrictions", "smtpd_end_of_data_restrictions"):
                main_cf[name] = merged_restrictions(policy_check, current.get(name, ""))
        main_cf.update(snippets.local_listener_main_cf)
        mailbox = current.get("mailbox_size_limit", "")
        wanted = int(main_cf["message_size_limit"])
        if "mailbox_size_limit" not in main_cf and mailbox.isdigit() and 0 < int(mailbox) < wanted:
            # Postfix does not start with mailbox_size_limit below message_size_limit.
            main_cf["mailbox_size_limit"] = str(wanted)
        chroot = "y" if options.chroot else "n"
        submission_params = dict(SUBMISSION_PARAMS)
        if policy_check is not None:
            # The submission service empties smtpd_recipient_restrictions: the RCPT check goes there.
            submission_params["smtpd_recipient_restrictions"] = policy_check
        submission = Service(
            options.submission_service, "inet", ("n", "-", chroot, "-", "-", "smtpd"), submission_params
        )
        services = [submission, *parse_master_cf(snippets.master_cf)]
        listeners = [service.key for service in parse_master_cf(snippets.local_listener)]
        services += parse_master_cf(snippets.local_listener)
        return main_cf, services, snippets.files, listeners

    def _apply_postfix(self, plan: tuple[dict[str, str], list[Service], dict[str, str], list[str]]) -> None:
        main_cf, services, files, listeners = plan
        directory = self.options.postfix_dir
        current = self._current_main_cf()
        updates = []
        for name, value in main_cf.items():
            if name in current and _normal(current[name]) == _normal(value):
                self.unchanged(f"main.cf: {name} = {value}")
                continue
            was = current[name] if name in current else "(not set)"
            self.change(f"main.cf: {name} = {value} (was: {was})")
            updates.append(f"{name}={value}")
        if updates and not self.options.dry_run:
            self.postconf("-e", *updates)
        fields, params = self._current_master_cf()
        for service in services:
            have = fields.get(service.key)
            wanted = dict(zip(MASTER_FIELDS, service.fields, strict=True))
            replaced = have is None or any(_normal(have.get(k, "")) != _normal(v) for k, v in wanted.items())
            if replaced:
                self.change(
                    f"master.cf: {'added' if have is None else 'replaced'} service {service.key}: {service.line()}"
                )
                if not self.options.dry_run:
                    self.postconf("-M", f"{service.key}={service.line()}")
            else:
                self.unchanged(f"master.cf: service {service.key}")
            # -M replaces the whole entry, its -o parameters included.
            old = {} if replaced else params.get(service.key, {})
            for name, value in service.params.items():
                if name in old and _normal(old[name]) == _normal(value):
                    self.unchanged(f"master.cf: {service.key}/{name} = {value}")
                    continue
                self.change(f"master.cf: {service.key}/{name} = {value}")
                if not self.options.dry_run:
                    self.postconf("-P", f"{service.key}/{name}={value}")
        for name, text in files.items():
            self._install_file(directory / name, text.encode("utf-8"), Ownership(0o644, 0, 0))
        if not self.options.dry_run:
            self._check_listeners(listeners)

    def _check_listeners(self, listeners: list[str]) -> None:
        """The alert/verification listener must exist and run no milter, or alerts get judged by us."""
        for key in listeners:
            line = self.postconf("-P", f"{key}/smtpd_milters").strip()
            if line != f"{key}/smtpd_milters =":
                raise SetupError(
                    f"master.cf service {key} must run no milter (smtpd_milters empty), postconf says: {line!r}"
                )
            self.out(f"checked: {key} runs no milter")
