"""The whole SMTP+ path on loopback: sink <- Postfix (+ Dovecot SASL) -> smtpplus-milter.

Used by the lab demo, the end-to-end tests and the benchmarks, so all three exercise the same
real components wired the same way. Starts from the shipped example config
(``deploy/smtpplus.yaml`` + ``deploy/users.yaml``) with only the paths and ports changed.
"""

from __future__ import annotations

import copy
import os
import pwd
import secrets
import shutil
import smtplib
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.dkim import OpenDkim
from lab.harness import Dovecot, LabError, Postfix, Sink, free_port, make_workdir, remove_workdir
from lab.milter_process import (
    FanoutProcess,
    FollowerProcess,
    IngestProcess,
    MilterProcess,
    PolicydProcess,
    PreemptProcess,
    prepare_socket_dir,
)
from smtpplus_milter.config.loader import create_secret_file


def pipe_command() -> str:
    """How the pipe (as PIPE_USER) runs this checkout's ``smtpplus-milter``.

    This virtualenv's interpreter when that user may run it; else (a virtualenv over an interpreter
    under /root, as pyenv makes) the system's python3 of the same version, given the virtualenv's
    packages and the checkout on PYTHONPATH. LabError when neither can work.
    """
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["runuser", "-u", PIPE_USER, "--", "test", "-x", sys.executable], check=False).returncode == 0:
        return f"{sys.executable} -m smtpplus_milter"
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    site = next(Path(sys.prefix).glob("lib/python*/site-packages"), None)
    if not system.exists() or site is None:
        raise LabError(f"user {PIPE_USER} cannot run {sys.executable}, and there is no {system} to run instead")
    return f"/usr/bin/env PYTHONPATH={site}:{repo} {system} -m smtpplus_milter"


# The unprivileged user Postfix's pipe runs the lab's ingest as (Postfix refuses root there).
PIPE_USER = "nobody"
PIPE_IDS = (pwd.getpwnam(PIPE_USER).pw_uid, pwd.getpwnam(PIPE_USER).pw_gid)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

# A login Dovecot accepts but that is not an SMTP+ user (for unknown_user tests and the demo).
OUTSIDER = "not-in-users-file"


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass
class SendResult:
    """What the client saw: accepted, or refused at which step with which reply."""

    accepted: bool
    stage: str  # "done" | "connect" | "starttls" | "auth" | "mail" | "rcpt" | "data"
    code: int
    text: str
    # Recipients refused while others were accepted: address -> (code, reply text).
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if not self.accepted else f"accepted ({self.code} {self.text})"


def client_tls() -> ssl.SSLContext:
    # The lab's certificate is self-signed for relay.test: encrypt, but do not verify it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Stack:
    def __init__(
        self,
        workdir: Path | None = None,
        *,
        settings: dict[str, Any] | None = None,
        users: dict[str, Any] | None = None,
        milter: str | None = "unix",
        postfix_main_cf: dict[str, str] | None = None,
        cleanup: bool = True,
        priority_routing: str | None = "relayhost",
        slow_seconds: float = 0.0,
        local_listener: bool = False,
        tracking: str | None = None,
        node: str = "lab",
        follower: bool = False,
        return_path: str | None = None,
        ingest: str = "pipe",
        fanout: bool = False,
        dkim_domain: str | None = None,
        dkim_after_milter: bool = False,
        dkim_before_milter: bool = False,
        dkim_bits: int = 2048,
        preempt: dict[str, Any] | None = None,
        sink_sessions: int | None = None,
        policy: dict[str, Any] | None = None,
    ) -> None:
        """*priority_routing*: None (no transports), ``"sinks"`` (smtpplus-high/-low deliver to
        sinks of their own, ``high_sink`` / ``low_sink``) or ``"relayhost"`` (they deliver to the
        relayhost like the default transport, as postfix-config writes it for a relayhost).
        *slow_seconds* delays every delivery to the default and low sinks (backlog benchmarks).
        *local_listener* adds the milter-less loopback listener that ``postfix-config`` prints for
        alert and verification mail (on the ports the settings name).
        *tracking*: record every accepted message into this store (``"sqlite"``: a SQLite file in
        the work directory; or a store URL such as a test's PostgreSQL), as relay host *node*;
        *follower* also runs ``smtpplus-milter follow`` on the Postfix log (started after Postfix).
        *return_path*: ``bounces.return_path`` with its key, and Postfix routes that domain to the
        ``smtpplus-ingest`` pipe, which runs this virtualenv's ``ingest`` as user nobody (the
        store must then be one nobody can reach: a PostgreSQL URL over TCP). *ingest* ``"lmtp"``:
        instead of the pipe, ``bounces.ingest_listen`` on a unix socket in the work directory, served
        by ``smtpplus-milter ingest --serve`` (started before Postfix), and Postfix's LMTP client
        delivers there, as ``postfix-config`` prints it. *fanout*: run ``smtpplus-milter fanout``
        (its LMTP socket in the work directory, its journal there, the re-injection smtpd on a free
        port); Postfix gets the fanout lines ``postfix-config`` prints once some list has
        ``bcc_in_to`` (the settings say which). *dkim_domain*: a private OpenDKIM (lab/dkim.py)
        signs that domain's mail as the operator's signer in ``smtpplus_fanout_milters``: every
        copy is signed after the split; with *dkim_after_milter* also in ``smtpd_milters`` after
        smtpplus-milter, as a relay signs its mail (our headers are added before it signs);
        *dkim_before_milter* puts it before smtpplus-milter instead, the mistake ``doctor`` flags
        (our header and footer then break its signature).
        *preempt*: ``priority.preempt`` (pause low, resume after 5 s, the lab Postfix, a state file
        in the work directory, metrics on a free port; the dict overrides these) and
        ``smtpplus-milter preempt`` runs beside Postfix (started after it, stopped before it).
        *sink_sessions*: the relayhost sink serves at most that many connections at a time.
        *policy*: the ``policy:`` section (its socket and the milter's refund socket in the work
        directory, metrics on a free port; the dict overrides these): ``smtpplus-milter policyd``
        runs (started before Postfix) and Postfix asks it with the lines ``postfix-config`` prints.
        The sending limits come from *settings* (``sending_limits``)."""
        # A directory we made ourselves is removed after stop() (SMTPPLUS_LAB_KEEP=1 keeps it).
        self.cleanup = cleanup and workdir is None
        self.workdir = workdir or make_workdir("smtpplus-lab")
        self.etc = self.workdir / "etc"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.config_path = self.etc / "smtpplus.yaml"
        self.users_path = self.etc / "users.yaml"
        self.passwd_path = self.etc / "smtpplus.passwd"
        self.metrics_port = free_port()
        if milter == "unix":
            socket_dir = self.workdir / "milter"
            prepare_socket_dir(socket_dir)
            self.milter_spec: str | None = f"unix:{socket_dir}/milter.sock"
        elif milter == "inet":
            self.milter_spec = f"inet:{free_port()}@127.0.0.1"
        else:
            self.milter_spec = None
        base = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
        overrides: dict[str, Any] = {
            "milter": {"socket": self.milter_spec or f"unix:{self.workdir}/unused.sock"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "sasl": {"passwd_file": str(self.passwd_path)},
            "users_file": "users.yaml",
        }
        self.tracking_metrics_port: int | None = None
        if tracking is not None:
            self.tracking_metrics_port = free_port()
            store = f"sqlite:///{self.workdir / 'tracking.db'}" if tracking == "sqlite" else tracking
            overrides["tracking"] = {
                "store": store,
                "node": node,
                "spool_dir": str(self.workdir / "tracking-spool"),
                "maillog": str(self.workdir / "postfix" / "postfix.log"),
                "metrics_listen": f"127.0.0.1:{self.tracking_metrics_port}",
            }
        self.return_path = return_path
        self.ingest_spec: str | None = None
        if return_path is not None:
            secret = self.etc / "secret"
            create_secret_file(secret)
            os.chown(secret, *PIPE_IDS)  # the pipe's ingest reads it as nobody (root still can)
            overrides["secret_file"] = str(secret)
            bounces = {"return_path": return_path}
            if ingest == "lmtp":
                socket_dir = self.workdir / "ingest"
                prepare_socket_dir(socket_dir)
                self.ingest_spec = f"unix:{socket_dir}/ingest.sock"
                bounces["ingest_listen"] = self.ingest_spec
            overrides["bounces"] = bounces
            quarantine = self.workdir / "ingest-quarantine"
            quarantine.mkdir()
            os.chown(quarantine, *PIPE_IDS)
        self.fanout_spec: str | None = None
        if fanout:
            socket_dir = self.workdir / "fanout"
            prepare_socket_dir(socket_dir)
            self.fanout_spec = f"unix:{socket_dir}/fanout.sock"
            overrides["fanout"] = {
                "listen": self.fanout_spec,
                "reinject": f"127.0.0.1:{free_port()}",
                "journal": str(self.workdir / "fanout.db"),
            }
        self.preempt_metrics_port: int | None = None
        if preempt is not None:
            self.preempt_metrics_port = free_port()
            (self.workdir / "preempt").mkdir()
            overrides["priority"] = {
                "preempt": {
                    "pause": ["low"],
                    "resume_after_seconds": 5,
                    "postfix_config_dir": str(self.workdir / "postfix" / "etc"),
                    "state_file": str(self.workdir / "preempt" / "held.json"),
                    "metrics_listen": f"127.0.0.1:{self.preempt_metrics_port}",
                    **preempt,
                }
            }
        self.policy_spec: str | None = None
        self.policy_metrics_port: int | None = None
        if policy is not None:
            socket_dir = self.workdir / "policy"
            prepare_socket_dir(socket_dir)
            self.policy_metrics_port = free_port()
            overrides["policy"] = {
                "listen": f"unix:{socket_dir}/policy.sock",
                "refund_listen": f"unix:{socket_dir}/refund.sock",
                "metrics_listen": f"127.0.0.1:{self.policy_metrics_port}",
                **policy,
            }
            self.policy_spec = overrides["policy"]["listen"]
        self.settings = deep_merge(deep_merge(base, overrides), settings or {})
        self.write_settings(self.settings)
        if users is None:
            shutil.copyfile(DEPLOY / "users.yaml", self.users_path)
            users = yaml.safe_load(self.users_path.read_text(encoding="utf-8"))
        else:
            self.write_users(users)
        assert users is not None
        self.passwords = {login: secrets.token_urlsafe(12) for login in [*users, OUTSIDER]}
        Dovecot.write_passwd_file(self.passwd_path, self.passwords)
        self.sink = Sink(slow_seconds=slow_seconds, max_sessions=sink_sessions)
        self.priority_routing = priority_routing
        self.high_sink = Sink() if priority_routing == "sinks" else None
        self.low_sink = Sink(slow_seconds=slow_seconds) if priority_routing == "sinks" else None
        self.dovecot = Dovecot(self.workdir / "dovecot", self.passwd_path)
        self.milter = (
            MilterProcess(self.config_path, self.milter_spec, self.workdir / "milter.log") if self.milter_spec else None
        )
        self.follower = (
            FollowerProcess(self.config_path, self.tracking_metrics_port, self.workdir / "follower.log")
            if follower and self.tracking_metrics_port is not None
            else None
        )
        self.ingest = (
            IngestProcess(self.config_path, self.ingest_spec, self.workdir / "ingest.log") if self.ingest_spec else None
        )
        self.fanout = (
            FanoutProcess(self.config_path, self.fanout_spec, self.workdir / "fanout.log") if self.fanout_spec else None
        )
        self.preempt = (
            PreemptProcess(self.config_path, self.preempt_metrics_port, self.workdir / "preempt.log")
            if self.preempt_metrics_port is not None
            else None
        )
        self.policyd = (
            PolicydProcess(self.config_path, self.policy_spec, self.workdir / "policyd.log")
            if self.policy_spec
            else None
        )
        self.dkim = OpenDkim(self.workdir / "opendkim", dkim_domain, bits=dkim_bits) if dkim_domain else None
        if dkim_after_milter and dkim_before_milter:
            raise ValueError("dkim_after_milter and dkim_before_milter exclude each other")
        self.dkim_after_milter = dkim_after_milter
        self.dkim_before_milter = dkim_before_milter
        self.postfix_main_cf = postfix_main_cf or {}
        self.local_listener = local_listener
        self.postfix: Postfix | None = None

    # --- config files ---------------------------------------------------------------------

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def write_users(self, users: dict[str, Any]) -> None:
        self.users_path.write_text(yaml.safe_dump(users, sort_keys=False, allow_unicode=True), encoding="utf-8")

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Stack:
        try:
            for sink in (self.sink, self.high_sink, self.low_sink):
                if sink is not None:
                    sink.start()
            self.dovecot.start()
            if self.milter:
                self.milter.start()
            if self.ingest:
                self.ingest.start()
            if self.fanout:
                self.fanout.start()
            if self.policyd:
                self.policyd.start()
            main_cf, master_extra, files = self._routing()
            main_cf.update(self._policy_lines())
            if self.dkim:
                self.dkim.start()
                main_cf["smtpplus_fanout_milters"] = self.dkim.milter
                ours = self._postfix_milter_spec()
                if self.dkim_after_milter and ours:
                    main_cf["smtpd_milters"] = f"{ours}, {self.dkim.milter}"
                elif self.dkim_before_milter and ours:
                    main_cf["smtpd_milters"] = f"{self.dkim.milter}, {ours}"
            self.postfix = Postfix(
                self.workdir / "postfix",
                relayhost_port=self.sink.port,
                sasl_socket=self.dovecot.auth_socket,
                milter=self._postfix_milter_spec(),
                main_cf={**main_cf, **self.postfix_main_cf},
                master_cf_extra=master_extra,
            )
            for name, text in files.items():
                self.postfix.write_config_file(name, text)
            self.postfix.start()
            if self.follower:
                self.follower.start()
            if self.preempt:
                self.preempt.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _routing(self) -> tuple[dict[str, str], str, dict[str, str]]:
        """The priority transports (and the local listener, and the ingest pipe) exactly as
        ``smtpplus-milter postfix-config`` prints them."""
        from smtpplus_milter.admin.postfix import ingest_transport
        from smtpplus_milter.config import SocketSpec

        if self.return_path is not None:
            main_cf, master, files = self._routing_without_ingest()
            listen = SocketSpec.parse(self.ingest_spec) if self.ingest_spec else None
            ingest_cf, ingest_master, _ = ingest_transport(
                self.return_path, str(self.config_path), listen=listen, command=pipe_command(), user=PIPE_USER
            )
            # The lab takes unauthenticated mail for example.net: keep that beside the return path.
            ingest_cf["relay_domains"] = f"example.net, {self.return_path}"
            return {**main_cf, **ingest_cf}, master + "\n".join(ingest_master) + "\n", files
        return self._routing_without_ingest()

    def _routing_without_ingest(self) -> tuple[dict[str, str], str, dict[str, str]]:
        from smtpplus_milter.admin.postfix import generate
        from smtpplus_milter.config import load_config

        if not self.priority_routing:
            if not self.local_listener:
                return {}, "", {}
            snippets = generate(load_config(self.config_path).postfix, chroot=False)
            return dict(snippets.local_listener_main_cf), snippets.local_listener, {}

        nexthops = {}
        if self.high_sink and self.low_sink:
            nexthops = {"high": f"[127.0.0.1]:{self.high_sink.port}", "low": f"[127.0.0.1]:{self.low_sink.port}"}
        postfix_dir = self.workdir / "postfix" / "etc"
        snippets = generate(
            load_config(self.config_path).postfix,
            postfix_dir=str(postfix_dir),
            nexthops=nexthops,
            relayhost=f"[127.0.0.1]:{self.sink.port}",
            chroot=False,
        )
        if self.local_listener:
            return (
                {**snippets.main_cf, **snippets.local_listener_main_cf},
                snippets.master_cf + snippets.local_listener,
                snippets.files,
            )
        return snippets.main_cf, snippets.master_cf, snippets.files

    def _policy_lines(self) -> dict[str, str]:
        """The check_policy_service lines exactly as ``postfix-config`` prints them (none without policy)."""
        from smtpplus_milter.admin.postfix import policy_lines
        from smtpplus_milter.config import load_config

        listen = load_config(self.config_path).postfix.policy_listen
        if listen is None:
            return {}
        return dict(policy_lines(listen, queue_directory=str(self.workdir / "postfix" / "queue")).main_cf)

    def _postfix_milter_spec(self) -> str | None:
        from smtpplus_milter.admin.postfix import milter_address
        from smtpplus_milter.config import SocketSpec

        if not self.milter_spec:
            return None
        return milter_address(SocketSpec.parse(self.milter_spec))

    def stop(self) -> None:
        """Stop everything that was started, in reverse order, even if one stop fails."""
        errors: list[BaseException] = []
        for stop in (
            self.preempt.stop if self.preempt else None,
            self.follower.stop if self.follower else None,
            self.postfix.stop if self.postfix else None,
            self.milter.stop if self.milter else None,
            self.policyd.stop if self.policyd else None,
            self.ingest.stop if self.ingest else None,
            self.fanout.stop if self.fanout else None,
            self.dkim.stop if self.dkim else None,
            self.dovecot.stop,
            self.sink.stop,
            self.high_sink.stop if self.high_sink else None,
            self.low_sink.stop if self.low_sink else None,
        ):
            if stop is None:
                continue
            try:
                stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        if self.cleanup and not errors:
            remove_workdir(self.workdir)
        if errors:
            raise errors[0]

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sending --------------------------------------------------------------------------

    def send(
        self,
        message: bytes,
        *,
        login: str | None,
        mail_from: str,
        rcpt_to: list[str] | None = None,
        password: str | None = None,
        port: int | None = None,
    ) -> SendResult:
        """Submit one message as a client would (STARTTLS, AUTH when a login is given)."""
        assert self.postfix is not None
        if port is None:
            port = self.postfix.submission_port if login else self.postfix.smtp_port
        return submit(
            port,
            message,
            login=login,
            password=password if password is not None else self.passwords.get(login or ""),
            mail_from=mail_from,
            rcpt_to=rcpt_to or ["someone@example.org"],
        )


def submit(
    port: int,
    message: bytes,
    *,
    login: str | None,
    password: str | None,
    mail_from: str,
    rcpt_to: list[str],
    host: str = "127.0.0.1",
    timeout: float = 60,
) -> SendResult:
    try:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=timeout) as client:
            try:
                client.starttls(context=client_tls())
            except smtplib.SMTPResponseException as exc:
                return SendResult(False, "starttls", exc.smtp_code, _text(exc.smtp_error))
            if login:
                try:
                    client.login(login, password or "")
                except smtplib.SMTPAuthenticationError as exc:
                    return SendResult(False, "auth", exc.smtp_code, _text(exc.smtp_error))
            try:
                refused = client.sendmail(mail_from, rcpt_to, message)
            except smtplib.SMTPSenderRefused as exc:
                return SendResult(False, "mail", exc.smtp_code, _text(exc.smtp_error))
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                return SendResult(False, "rcpt", code, _text(text))
            except smtplib.SMTPDataError as exc:
                return SendResult(False, "data", exc.smtp_code, _text(exc.smtp_error))
            partly = {address: (code, _text(text)) for address, (code, text) in refused.items()}
            return SendResult(True, "done", 250, "queued", partly)
    except smtplib.SMTPConnectError as exc:
        return SendResult(False, "connect", exc.smtp_code, _text(exc.smtp_error))
    except smtplib.SMTPResponseException as exc:
        return SendResult(False, "connect", exc.smtp_code, _text(exc.smtp_error))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def make_message(
    *,
    from_: str,
    to: str = "someone@example.org",
    subject: str = "Test",
    body: str = "Hello.\r\n",
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    lines = [
        f"From: {from_}",
        f"To: {to}",
        f"Subject: {subject}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        f"Message-ID: <{secrets.token_hex(8)}@client.test>",
    ]
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")
