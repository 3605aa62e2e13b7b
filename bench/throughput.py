"""Throughput benchmark: authenticated submissions through a private Postfix, without and with the milter.

    python bench/throughput.py [--messages N] [--repeat R] [--quick] [--noop] [--json FILE]

Everything is real and on loopback (needs root, Postfix, Dovecot): one private Postfix with
Dovecot SASL from :class:`lab.stack.Stack`, relaying to Postfix's own C
``smtp-sink``; ``smtpplus-milter run`` twice, on a unix socket and on TCP. Postfix gets one
extra smtpd listener per scenario ("bench listeners", added to its master.cf), identical except
for ``smtpd_milters``: none, the unix-socket milter, the TCP milter (and, with ``--noop``, a
pymilter milter of the same shape that does nothing: ``bench/noop_milter.py``; with ``--modes
none,unix,policy``, the unix milter plus ``check_policy_service`` at RCPT and end of data, answered
by ``smtpplus-milter policyd`` with limits nothing reaches; its CPU is counted in the server's). The listeners
allow AUTH without TLS on loopback, so TLS cost stays out of a measurement of milter overhead;
by default the passwords are stored ``{PLAIN}`` so SHA512-CRYPT hashing (several ms of Dovecot
CPU per login) does not hide it either (``--crypt-auth`` keeps the production hashes).

The load comes from ``bench/loadgen.py`` (asyncio, raw SMTP) in its own process: N concurrent
sessions, each EHLO, AUTH PLAIN as ``shop-frontend``, K messages of 4 KB from its authorized
sender ``info@yourcompany.com`` (envelope and From:), QUIT. Scenarios are {no milter, milter
unix, milter TCP} x {concurrency 10, 50} x {1, 10 messages per session}; all run in one
invocation, interleaved (the three modes of one load shape back to back, their order rotated
each repeat) so slow drifts and noise hit every side alike. Between rounds the Postfix queue is
drained. The table shows the median of the repeats; the ratio is the median of the per-repeat
ratios against the no-milter round of the same repeat and load shape.

CPU is read from /proc per process: the milter (``MilterProcess.pid``), every Postfix process of
the instance, Dovecot, smtp-sink and the load generator; peak RSS is the milter's VmHWM. A run
with any failed submission or undelivered message is invalid and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import Milter
import yaml

# The lab is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.harness import LOOPBACK, free_port
from lab.milter_process import FollowerProcess, MilterProcess, prepare_socket_dir
from lab.stack import DEPLOY, Stack, deep_merge
from smtpplus_milter.infra.store import open_store
from smtpplus_milter.infra.store.base import Suppression
from smtpplus_milter.infra.suppression_file import NAME as SNAPSHOT_NAME
from tests.support import postgres

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
NOOP_MILTER = HERE / "noop_milter.py"
MILTER_VARIANT = HERE / "milter_variant.py"
LOGIN = "shop-frontend"
SENDER = "info@yourcompany.com"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

MODE_LABELS = {
    "none": "no milter",
    "unix": "milter unix",
    "inet": "milter TCP",
    "footer": "milter unix + footer",
    "tracking": "milter unix + tracking (SQLite)",
    "tracking-pg": "milter unix + tracking (PostgreSQL)",
    "tracking-supp": "milter unix + tracking (SQLite) + 10,000 suppressed",
    "noop": "no-op milter unix",
    "lean": "lean no-op milter unix",
    "policy": "milter unix + policyd",
}
NOOP_MODES = {"noop": [], "lean": ["--lean"]}
VARIANT_PREFIX = "v:"  # v:timing = smtpplus-milter on a unix socket with bench/milter_variant.py changes
# rev:e83ef40 = smtpplus-milter as it was at that git revision (its package extracted with git archive),
# so an earlier version and this one are measured side by side in one run.
REVISION_PREFIX = "rev:"


TRACKING_MODES = ("tracking", "tracking-pg", "tracking-supp")
# tracking-supp: this many suppressed addresses (none of them a recipient the benchmark sends to),
# so the milter answers every RCPT and looks each recipient up.
SUPPRESSED = 10_000
TCP_SUFFIX = "@tcp"  # lean@tcp, v:cache@tcp: an extra milter on TCP instead of a unix socket


def mode_label(mode: str) -> str:
    base, tcp, _ = mode.partition(TCP_SUFFIX)
    if base.startswith(VARIANT_PREFIX):
        label = f"milter unix [{base[len(VARIANT_PREFIX) :]}]"
    elif base.startswith(REVISION_PREFIX):
        label = f"milter unix @{base[len(REVISION_PREFIX) :]}"
    else:
        label = MODE_LABELS[base]
    return label.replace("unix", "TCP") if tcp else label


def known_mode(mode: str) -> bool:
    base, tcp, rest = mode.partition(TCP_SUFFIX)
    if rest or (tcp and base in ("none", "unix", "inet", "footer", "policy", *TRACKING_MODES)):
        return False
    return base.startswith((VARIANT_PREFIX, REVISION_PREFIX)) or base in MODE_LABELS


def package_at(revision: str, target: Path) -> Path:
    """Extract the smtpplus_milter package as it was at *revision* into *target*; return it for PYTHONPATH."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", "--format=tar", revision, "smtpplus_milter"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


# --- /proc -----------------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of one process, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, in seconds; None if it is gone."""
    times = cpu_times(pid)
    return None if times is None else times[0] + times[1]


def status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_of(pids: Iterable[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        seconds = cpu_seconds(pid)
        if seconds is not None:
            found[pid] = seconds
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots; a process that appeared meanwhile counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, irq) jiffies of the whole machine, from /proc/stat.

    irq is hard + soft interrupt time: loopback TCP is processed there, and no process is
    charged for it.
    """
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return float(total - idle), float(total), float(values[5] + values[6])


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 0.5) -> float:
    """Wait (up to max_wait s) until the machine is nearly idle between rounds; return the wait.

    Between rounds the rig itself is idle, so CPU in use then belongs to someone else (other
    test runs on a shared machine) and would also steal from the next round.
    """
    started = time.monotonic()
    while True:
        before = machine_cpu()
        time.sleep(window)
        after = machine_cpu()
        busy_cpus = (after[0] - before[0]) / CLOCK_TICKS / window
        waited = time.monotonic() - started
        if busy_cpus < threshold or waited >= max_wait:
            return waited


# --- the rig ---------------------------------------------------------------------------------


@dataclass
class Mode:
    name: str
    port: int
    milter_spec: str  # as Postfix writes it in smtpd_milters; "" for none
    pid: int | None = None  # the milter process


def bench_listener(port: int, name: str, milter: str, *, policy: bool = False) -> str:
    """A submission-like smtpd: AUTH required to relay, but offered without TLS, on loopback only.

    *policy*: smtpd asks the policy daemon at RCPT and at end of data (the main.cf lines that
    ``postfix-config`` prints, which the lab wrote); every other listener asks nobody.
    """
    restrictions = "" if policy else "  -o smtpd_recipient_restrictions=\n  -o smtpd_end_of_data_restrictions=\n"
    return f"""\
{LOOPBACK}:{port} inet n - n - - smtpd
  -o syslog_name=postfix/bench-{name}
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
{restrictions}  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
  -o smtpd_milters={milter}
"""


def wait_for_banner(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as client:
                if client.makefile("rb").readline(512).startswith(b"220"):
                    client.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SMTP banner on {LOOPBACK}:{port} within {timeout}s")
        time.sleep(0.05)


class Rig:
    """The private Postfix + Dovecot + milters + smtp-sink; stop() undoes everything start() did."""

    def __init__(self, *, extra: list[str], crypt_auth: bool) -> None:
        self.extra = extra  # footer, noop, lean, v:... (and @tcp) modes: further milters started here
        self.footer_milter: MilterProcess | None = None
        self.tracking_milters: dict[str, MilterProcess] = {}  # by mode: tracking, tracking-pg
        # The milter only spools; each tracking mode's follower moves its spool into its store.
        self.tracking_followers: dict[str, FollowerProcess] = {}
        self.pg_server: postgres.Server | None = None
        self.writer_cpu: dict[str, tuple[float, int]] = {}  # mode: (writer thread CPU s, records spooled)
        # mode: the highest follower lag and spool backlog seen while the run went on (sampled).
        self.follower_peak: dict[str, tuple[float, float]] = {}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._cleanup = contextlib.ExitStack()
        self.crypt_auth = crypt_auth
        self.sink_port = free_port()
        self.sink: subprocess.Popen[bytes] | None = None
        self.stack: Stack | None = None
        self.inet_milter: MilterProcess | None = None
        self.extra_milters: list[subprocess.Popen[bytes]] = []
        self.modes: dict[str, Mode] = {}

    def start(self) -> Rig:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        smtp_sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        # smtp-sink: Postfix's C test server, one process, event driven. Never -M: it exits after
        # the Nth message before replying, so Postfix retries and delivers that one twice.
        self.sink = subprocess.Popen(
            [smtp_sink, "-u", "postfix", "-4", "-m", "512", f"{LOOPBACK}:{self.sink_port}", "1024"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_banner(self.sink_port)
        settings: dict[str, Any] = {"lists": {"shop": {"header": None, "footer": None}}}
        if "policy" in self.extra:
            # Limits far above what a run sends: the cost of asking and counting, nothing refused.
            settings["sending_limits"] = {
                "messages_per_hour": 10**12,
                "recipients_per_day": 10**12,
                "bytes_per_day": 10**15,
            }
        self.stack = stack = Stack(
            milter="unix",
            # Authorization and priority only: the "footer" mode adds the example list's footer.
            settings=settings,
            # policy: smtpplus-milter policyd beside Postfix, asked by the "policy" listener only.
            policy={} if "policy" in self.extra else None,
            postfix_main_cf={
                "relayhost": f"[{LOOPBACK}]:{self.sink_port}",
                # Processes live through the whole run: no fork/exec noise, and their CPU stays
                # readable in /proc until the end of each round.
                "max_use": "100000",
                "max_idle": "600s",
            },
        )
        stack.start()
        assert stack.postfix is not None and stack.milter is not None and stack.milter_spec is not None
        if not self.crypt_auth:
            # Dovecot rereads the passwd-file when it changes; the scheme prefix overrides
            # SHA512-CRYPT per line. Same owner and mode as the lab writes.
            text = "".join(f"{login.lower()}:{{PLAIN}}{password}\n" for login, password in stack.passwords.items())
            stack.passwd_path.write_text(text, encoding="utf-8")
        # The second milter: the same config but on TCP (and its own metrics port).
        inet_spec = f"inet:{free_port()}@{LOOPBACK}"
        inet_settings = deep_merge(
            stack.settings, {"milter": {"socket": inet_spec}, "metrics": {"listen": f"{LOOPBACK}:{free_port()}"}}
        )
        inet_config = stack.etc / "smtpplus-inet.yaml"
        inet_config.write_text(yaml.safe_dump(inet_settings, sort_keys=False), encoding="utf-8")
        self.inet_milter = MilterProcess(inet_config, inet_spec, stack.workdir / "milter-inet.log")
        self.inet_milter.start()
        port, _, host = inet_spec[5:].partition("@")
        self.modes["none"] = Mode("none", free_port(), "")
        self.modes["unix"] = Mode("unix", free_port(), stack.milter_spec, stack.milter.pid)
        self.modes["inet"] = Mode("inet", free_port(), f"inet:{host}:{port}", self.inet_milter.pid)
        if "policy" in self.extra:
            # The same unix milter, and Postfix also asks smtpplus-milter policyd (Stack.policyd).
            self.modes["policy"] = Mode("policy", free_port(), stack.milter_spec, stack.milter.pid)
        if "footer" in self.extra:
            # The same milter with the shipped example's list footer (text and HTML) for shop-frontend.
            footer_dir = stack.workdir / "milter-footer"
            prepare_socket_dir(footer_dir)
            footer_spec = f"unix:{footer_dir}/milter.sock"
            example = yaml.safe_load((DEPLOY / "smtpplus.yaml").read_text(encoding="utf-8"))
            footer_settings = deep_merge(
                stack.settings,
                {
                    "milter": {"socket": footer_spec},
                    "metrics": {"listen": f"{LOOPBACK}:{free_port()}"},
                    "lists": {"shop": example["lists"]["shop"]},
                },
            )
            footer_config = stack.etc / "smtpplus-footer.yaml"
            footer_config.write_text(yaml.safe_dump(footer_settings, sort_keys=False), encoding="utf-8")
            self.footer_milter = MilterProcess(footer_config, footer_spec, stack.workdir / "milter-footer.log")
            self.footer_milter.start()
            self.modes["footer"] = Mode("footer", free_port(), footer_spec, self.footer_milter.pid)
        if "tracking" in self.extra:
            # The same milter recording every accepted message into a SQLite store (tracking on).
            self._start_tracking("tracking", f"sqlite:///{stack.workdir}/tracking.db")
        if "tracking-supp" in self.extra:
            url = f"sqlite:///{stack.workdir}/tracking-supp.db"
            store = open_store(url)
            try:
                store.migrate()
                now = datetime.now(UTC)
                store.suppress(
                    Suppression("global", f"gone{n}@suppressed.example", "manual", now) for n in range(SUPPRESSED)
                )
            finally:
                store.close()
            self._start_tracking("tracking-supp", url)
            snapshot = stack.workdir / "tracking-supp-spool" / SNAPSHOT_NAME
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not snapshot.exists():
                time.sleep(0.2)  # the follower writes it within its first duty cycle
        if "tracking-pg" in self.extra:
            # The same into PostgreSQL: a private server of our own (tests/support/postgres.py;
            # fsync off there, which only spares the server's disk, not the milter's CPU).
            self.pg_server = self._cleanup.enter_context(postgres.private_server())
            self._start_tracking("tracking-pg", self.pg_server.create_database())
        for number, name in enumerate(n for n in self.extra if n not in (*TRACKING_MODES, "footer", "policy")):
            base, tcp, _ = name.partition(TCP_SUFFIX)
            if tcp:
                tcp_port = free_port()
                spec, postfix_spec = f"inet:{tcp_port}@{LOOPBACK}", f"inet:{LOOPBACK}:{tcp_port}"
            else:
                socket_dir = stack.workdir / f"extra-{number}"
                prepare_socket_dir(socket_dir)
                spec = postfix_spec = f"unix:{socket_dir}/milter.sock"
            env = dict(os.environ)
            if base.startswith((VARIANT_PREFIX, REVISION_PREFIX)):
                config = stack.etc / f"smtpplus-extra-{number}.yaml"
                settings = deep_merge(
                    stack.settings, {"milter": {"socket": spec}, "metrics": {"listen": f"{LOOPBACK}:{free_port()}"}}
                )
                config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
                if base.startswith(VARIANT_PREFIX):
                    command = [str(MILTER_VARIANT), base[len(VARIANT_PREFIX) :], "-c", str(config)]
                else:
                    revision = base[len(REVISION_PREFIX) :]
                    env["PYTHONPATH"] = str(package_at(revision, stack.workdir / f"rev-{number}"))
                    command = ["-m", "smtpplus_milter", "run", "-c", str(config)]
            else:
                command = [str(NOOP_MILTER), *NOOP_MODES[base], spec]
            with (stack.workdir / f"extra-{number}.log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, *command],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=env.get("PYTHONPATH"),  # python -m puts the working directory first on sys.path
                )
            self.extra_milters.append(process)
            # MilterProcess only as a probe of the socket (it never starts anything here).
            probe = MilterProcess(stack.config_path, spec, stack.workdir / "unused.log")
            deadline = time.monotonic() + 20
            while not probe.answers():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not open {spec}")
                time.sleep(0.05)
            self.modes[name] = Mode(name, free_port(), postfix_spec, process.pid)
        master_cf = stack.postfix.config_dir / "master.cf"
        extra = "".join(
            bench_listener(mode.port, f"m{number}", mode.milter_spec, policy=mode.name == "policy")
            for number, mode in enumerate(self.modes.values())
        )
        master_cf.write_text(master_cf.read_text(encoding="utf-8") + extra, encoding="utf-8")
        stack.postfix.reload()
        for mode in self.modes.values():
            wait_for_banner(mode.port)

    def _start_tracking(self, name: str, store_url: str) -> None:
        assert self.stack is not None
        stack = self.stack
        socket_dir = stack.workdir / f"milter-{name}"
        prepare_socket_dir(socket_dir)
        spec = f"unix:{socket_dir}/milter.sock"
        follower_port = free_port()
        settings = deep_merge(
            stack.settings,
            {
                "milter": {"socket": spec},
                "metrics": {"listen": f"{LOOPBACK}:{free_port()}"},
                "tracking": {
                    "store": store_url,
                    "node": "bench",
                    "spool_dir": str(stack.workdir / f"{name}-spool"),
                    "maillog": str(stack.workdir / "postfix" / "postfix.log"),
                    "metrics_listen": f"{LOOPBACK}:{follower_port}",
                },
            },
        )
        config = stack.etc / f"smtpplus-{name}.yaml"
        config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        follower = FollowerProcess(config, follower_port, stack.workdir / f"follower-{name}.log")
        self.tracking_followers[name] = follower
        follower.start()
        process = MilterProcess(config, spec, stack.workdir / f"milter-{name}.log")
        self.tracking_milters[name] = process
        process.start()
        self.modes[name] = Mode(name, free_port(), spec, process.pid)

    def start_sampling(self) -> None:
        """Read every tracking follower's lag and spool backlog twice a second until stop()."""
        if not self.tracking_followers:
            return

        def sample() -> None:
            while not self._sampling.wait(0.5):
                for name, follower in list(self.tracking_followers.items()):
                    try:
                        text = follower.metrics_text()
                    except OSError:
                        continue
                    lag = _gauge(text, "smtpplus_follower_lag_seconds")
                    spooled = _gauge(text, "smtpplus_tracking_spooled")
                    old_lag, old_spooled = self.follower_peak.get(name, (0.0, 0.0))
                    self.follower_peak[name] = (max(old_lag, lag), max(old_spooled, spooled))

        self._sampler = threading.Thread(target=sample, name="follower-sampler", daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)

    def _stop_tracking(self, name: str) -> None:
        """Stop a tracking milter and keep what its writer thread said it cost (before the logs go);
        then its follower, once it has drained the spool (or after 30 s)."""
        process = self.tracking_milters[name]
        process.stop()
        for event in process.events("tracking_writer_stopped")[-1:]:
            self.writer_cpu[name] = (float(event["cpu_seconds"]), int(event["spooled"]))
        follower = self.tracking_followers[name]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "smtpplus_tracking_spooled 0.0" not in follower.metrics_text():
            time.sleep(0.2)
        follower.stop()

    def stop(self) -> None:
        errors: list[BaseException] = []
        for process in self.extra_milters:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        for stop in (
            self.footer_milter.stop if self.footer_milter else None,
            *(functools.partial(self._stop_tracking, name) for name in self.tracking_milters),
            self.inet_milter.stop if self.inet_milter else None,
            self.stack.stop if self.stack else None,
        ):
            if stop is None:
                continue
            try:
                stop()
            except BaseException as exc:
                errors.append(exc)
        try:
            self._cleanup.close()  # the private PostgreSQL, after the milters that wrote to it
        except BaseException as exc:
            errors.append(exc)
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            try:
                self.sink.wait(10)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait(5)
        if errors:
            raise errors[0]

    def check_decisions(self, submitted: dict[str, int]) -> list[str]:
        """Did the real milters authorize every message they saw (not bypass, not reject)?"""
        assert self.stack is not None
        problems = []
        # Only the two real milters log per message; the no-op and variant ones are not checked.
        for name, process in (
            ("unix", self.stack.milter),
            ("inet", self.inet_milter),
            ("footer", self.footer_milter),
            *self.tracking_milters.items(),
        ):
            if process is None or name not in submitted:
                continue
            expected = submitted[name] + (submitted.get("policy", 0) if name == "unix" else 0)
            events = process.events("message")
            authorized = [
                e
                for e in events
                if e.get("decision") == "accepted"
                and e.get("user") == LOGIN
                and any("authorized (authorized_domains yourcompany.com)" in r for r in e.get("reasons", []))
            ]
            if name == "footer":
                authorized = [e for e in authorized if (e.get("footer") or {}).get("result") == "added"]
            if len(authorized) != expected or len(events) != expected:
                problems.append(
                    f"milter {name}: {expected} messages submitted, {len(events)} message events, "
                    f"{len(authorized)} of them authorized for {LOGIN}"
                )
        if "policy" in submitted and self.stack.policy_metrics_port is not None:
            # Postfix really asked: one accepted END-OF-MESSAGE per message, and nothing refused.
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.stack.policy_metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            counted = re.findall(r"^smtpplus_policy_requests_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M)
            by_labels = {labels: float(value) for labels, value in counted}
            accepted = sum(v for k, v in by_labels.items() if 'stage="end_of_message"' in k and '"accepted"' in k)
            other = sum(v for k, v in by_labels.items() if '"accepted"' not in k and '"dunno"' not in k)
            if accepted != submitted["policy"] or other:
                problems.append(
                    f"policyd: {submitted['policy']} messages submitted, {accepted:.0f} counted at end of data, "
                    f"{other:.0f} other answers ({by_labels})"
                )
        return problems

    # --- measuring ------------------------------------------------------------------------

    def server_pids(self) -> dict[str, list[int]]:
        assert self.stack is not None and self.stack.postfix is not None and self.sink is not None
        return {
            "postfix": self.stack.postfix.pids(),
            "dovecot": self.stack.dovecot.pids(),
            "sink": [self.sink.pid],
        }

    def round(
        self, mode: Mode, concurrency: int, per_session: int, messages: int, serial: int, quiet_wait: float = 0.0
    ) -> dict[str, Any]:
        assert self.stack is not None and self.stack.postfix is not None
        waited = wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
        job = {
            "port": mode.port,
            "login": LOGIN,
            "password": self.stack.passwords[LOGIN],
            "sender": SENDER,
            "recipient": "someone@example.org",
            "concurrency": concurrency,
            "messages": messages,
            "per_session": per_session,
            "serial_start": serial,
        }
        pids_before = self.server_pids()
        before = {name: cpu_of(pids) for name, pids in pids_before.items()}
        milter_before = cpu_times(mode.pid) if mode.pid else None
        policyd_pid = self.stack.policyd.pid if mode.name == "policy" and self.stack.policyd else None
        policyd_before = cpu_seconds(policyd_pid) if policyd_pid else None
        machine_before = machine_cpu()
        wall_started = time.monotonic()
        client = subprocess.run(
            [sys.executable, str(LOADGEN)], input=json.dumps(job), capture_output=True, text=True, timeout=600
        )
        milter_after = cpu_times(mode.pid) if mode.pid else None
        policyd_after = cpu_seconds(policyd_pid) if policyd_pid else None
        if client.returncode != 0:
            raise RuntimeError(f"bench/loadgen.py failed (exit {client.returncode}):\n{client.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(client.stdout)
        drain_started = time.monotonic()
        self.stack.postfix.wait_for_empty_queue(timeout=300)
        result["drain_s"] = time.monotonic() - drain_started
        # Accepted *and delivered*: a burst without the milter partly waits in the queue, and
        # that delivery work falls after the client's timed window.
        result["sustained_msgs_per_s"] = result["ok"] / (result["elapsed"] + result["drain_s"])
        machine_after = machine_cpu()
        result["wall_s"] = time.monotonic() - wall_started
        pids_after = self.server_pids()
        for name, pids in pids_after.items():
            result[f"{name}_cpu_s"] = cpu_delta(before[name], cpu_of(pids))
        result["machine_busy_cpus"] = (machine_after[0] - machine_before[0]) / CLOCK_TICKS
        result["irq_cpu_s"] = (machine_after[2] - machine_before[2]) / CLOCK_TICKS
        result["quiet_wait_s"] = waited
        if mode.pid is not None and milter_before is not None and milter_after is not None:
            result["milter_user_s"] = milter_after[0] - milter_before[0]
            result["milter_sys_s"] = milter_after[1] - milter_before[1]
            result["milter_cpu_s"] = result["milter_user_s"] + result["milter_sys_s"]
            result["milter_hwm_kb"] = status_kb(mode.pid, "VmHWM")
            result["milter_threads"] = _threads(mode.pid)
        if policyd_before is not None and policyd_after is not None:
            result["policyd_cpu_s"] = policyd_after - policyd_before
        # CPU used by processes outside the rig during the round (other work on the machine).
        ours = sum(
            result.get(k, 0.0)
            for k in (
                "postfix_cpu_s",
                "dovecot_cpu_s",
                "sink_cpu_s",
                "milter_cpu_s",
                "policyd_cpu_s",
                "client_cpu_s",
                "irq_cpu_s",
            )
        )
        result["foreign_cpu_s"] = max(0.0, result["machine_busy_cpus"] - ours)
        result["mode"] = mode.name
        result["concurrency"] = concurrency
        result["per_session"] = per_session
        return result


def _threads(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    mode: str
    concurrency: int
    per_session: int
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return self.concurrency, self.per_session

    def label(self) -> str:
        per = "1 msg/session" if self.per_session == 1 else f"{self.per_session} msgs/session"
        return f"{mode_label(self.mode)}, c{self.concurrency}, {per}"

    def server_ms(self) -> list[float]:
        """Per round: CPU ms per message of everything but the client (Postfix, Dovecot, sink, milter, policyd)."""
        return [
            sum(
                r.get(k, 0.0) for k in ("postfix_cpu_s", "dovecot_cpu_s", "sink_cpu_s", "milter_cpu_s", "policyd_cpu_s")
            )
            / r["ok"]
            * 1000
            for r in self.rounds
            if r["ok"]
        ]

    def median(self, name: str, per_message: bool = False, scale: float = 1000.0) -> float | None:
        """Median over the rounds; per_message: divided by the messages (seconds -> ms by default)."""
        values = []
        for result in self.rounds:
            value = result.get(name)
            if value is None:
                continue
            values.append(value / result["ok"] * scale if per_message and result["ok"] else value)
        return statistics.median(values) if values else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=None, help="messages per round (default 3000, quick 800)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller rounds: about 2 minutes")
    parser.add_argument(
        "--modes",
        default="none,unix,inet",
        help="comma-separated subset of none,unix,inet,noop,lean,v:VARIANTS,rev:REVISION (default: the first 3). "
        "policy is milter unix plus check_policy_service (smtpplus-milter policyd) at RCPT and end of data; "
        "noop and lean are bench/noop_milter.py without and with --lean; v:timing is smtpplus-milter with the "
        "changes of bench/milter_variant.py; rev:e83ef40 is smtpplus-milter as of that git revision; all on a "
        "unix socket, or on TCP with @tcp appended (lean@tcp)",
    )
    parser.add_argument("--noop", action="store_true", help="add the no-op milter (unix socket) as a fourth mode")
    parser.add_argument("--concurrency", default="10,50", help="comma-separated concurrencies (default 10,50)")
    parser.add_argument("--per-session", default="1,10", help="comma-separated messages per session (default 1,10)")
    parser.add_argument("--crypt-auth", action="store_true", help="keep SHA512-CRYPT password hashes (production)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each round, wait up to this many seconds for other work on the machine to stop (default 5)",
    )
    parser.add_argument("--report", type=Path, help="print the tables of a --json file of an earlier run; run nothing")
    parser.add_argument("--json", type=Path, help="also write every round's raw figures to this file")
    args = parser.parse_args(argv)
    args.messages = args.messages or (800 if args.quick else 3000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    modes = [m for m in args.modes.split(",") if m]
    if args.noop and "noop" not in modes:
        modes.append("noop")
    unknown = {m for m in modes if not known_mode(m)}
    if unknown or "none" not in modes:
        parser.error(f"--modes: need 'none' (the baseline); unknown: {', '.join(sorted(unknown)) or '-'}")
    args.mode_list = modes
    args.concurrency_list = [int(c) for c in args.concurrency.split(",")]
    args.per_session_list = [int(k) for k in args.per_session.split(",")]
    return args


def check_postfix_limits(rig: Rig, concurrency: list[int]) -> None:
    assert rig.stack is not None and rig.stack.postfix is not None
    config_dir = str(rig.stack.postfix.config_dir)
    output = subprocess.run(
        ["postconf", "-c", config_dir, "-h", "default_process_limit"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(output) < max(concurrency):
        raise SystemExit(f"default_process_limit = {output} would cap concurrency {max(concurrency)}")


def versions() -> str:
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.split()[0]
    return (
        f"Postfix {postfix}, Dovecot {dovecot}, pymilter {getattr(Milter, '__version__', '?')}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def paired_ratio(scenario: Scenario, base: Scenario | None, name: str) -> float | None:
    """Median over the repeats of this scenario's figure / the no-milter one of the same repeat."""
    if base is None:
        return None
    pairs = [r[name] / b[name] for r, b in zip(scenario.rounds, base.rounds, strict=False) if b.get(name)]
    return statistics.median(pairs) if pairs else None


def report(scenarios: list[Scenario], modes: list[str]) -> tuple[str, bool]:
    """The results as two Markdown tables, and whether the run is valid."""
    baseline = {s.key: s for s in scenarios if s.mode == "none"}
    lines = [
        "| scenario | msgs/s | ratio vs no milter | sustained msgs/s | sustained ratio | milter CPU ms/msg "
        "| milter peak RSS MB | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu_lines = [
        "| scenario | Postfix | Dovecot | sink | milter user+sys | server total | server CPU ratio | client "
        "| machine busy | p50 latency ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    valid = True
    for scenario in sorted(scenarios, key=lambda s: (s.concurrency, s.per_session, modes.index(s.mode))):
        failures = sum(r["failed"] for r in scenario.rounds)
        valid &= failures == 0
        base = baseline.get(scenario.key)
        ratio = paired_ratio(scenario, base, "msgs_per_s")
        sustained_ratio = paired_ratio(scenario, base, "sustained_msgs_per_s")
        hwm = scenario.median("milter_hwm_kb")
        lines.append(
            f"| {scenario.label()} | {fmt(scenario.median('msgs_per_s'), '.0f')} | "
            f"{fmt(ratio, '.2f')}x | {fmt(scenario.median('sustained_msgs_per_s'), '.0f')} | "
            f"{fmt(sustained_ratio, '.2f')}x | {fmt(scenario.median('milter_cpu_s', per_message=True), '.2f')} | "
            f"{fmt(hwm / 1024 if hwm else None, '.1f')} | {failures} |"
        )
        server = scenario.server_ms()
        base_server = base.server_ms() if base is not None else []
        capacity = statistics.median(base_server) / statistics.median(server) if server and base_server else None
        busy = [r["machine_busy_cpus"] / r["wall_s"] for r in scenario.rounds if r["wall_s"] > 0]

        def ms(name: str, scenario: Scenario = scenario) -> str:
            return fmt(scenario.median(name, per_message=True), ".2f")

        milter_split = "-" if scenario.mode == "none" else f"{ms('milter_user_s')}+{ms('milter_sys_s')}"
        cpu_lines.append(
            f"| {scenario.label()} | {ms('postfix_cpu_s')} | {ms('dovecot_cpu_s')} | {ms('sink_cpu_s')} | "
            f"{milter_split} | "
            f"{fmt(statistics.median(server) if server else None, '.2f')} | {fmt(capacity, '.2f')}x | "
            f"{ms('client_cpu_s')} | "
            f"{fmt(statistics.median(busy) if busy else None, '.2f')} CPUs | "
            f"{fmt(scenario.median('latency_ms_p50'), '.1f')} |"
        )
    by_key = {(s.mode, s.key): s for s in scenarios}
    footer_lines = []
    policy_lines = []
    for scenario in sorted(scenarios, key=lambda s: (s.concurrency, s.per_session)):
        auth = by_key.get(("unix", scenario.key))
        if scenario.mode == "footer" and auth is not None:
            ratio = paired_ratio(scenario, auth, "msgs_per_s")
            footer_lines.append(f"- {scenario.label()}: {fmt(ratio, '.2f')}x of authorization-only (milter unix)")
        if scenario.mode == "policy" and auth is not None:
            ratio = paired_ratio(scenario, auth, "msgs_per_s")
            sustained = paired_ratio(scenario, auth, "sustained_msgs_per_s")
            policy_lines.append(
                f"- {scenario.label()}: {fmt(ratio, '.2f')}x of milter only (sustained {fmt(sustained, '.2f')}x); "
                f"policyd CPU {fmt(scenario.median('policyd_cpu_s', per_message=True), '.2f')} ms/msg"
            )
    text = (
        "\n".join(lines)
        + ("\n\nFooter injection vs authorization only, same run:\n" + "\n".join(footer_lines) if footer_lines else "")
        + (
            "\n\ncheck_policy_service (RCPT and end of data) + milter vs milter only, same run:\n"
            + "\n".join(policy_lines)
            if policy_lines
            else ""
        )
        + "\n\nmsgs/s: accepted messages per second of the client's timed window; sustained: the same messages"
        " over that window plus the wait until the queue was empty (accepted and delivered)."
        + "\n\nCPU ms per message (median of the rounds); server CPU ratio = server total without the milter"
        " / with it (the throughput ratio of a CPU-bound relay whose clients are elsewhere):\n\n" + "\n".join(cpu_lines)
    )
    return text, valid


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def report_file(path: Path) -> int:
    saved = json.loads(path.read_text(encoding="utf-8"))
    modes: list[str] = saved["args"]["mode_list"]
    scenarios: dict[tuple[str, int, int], Scenario] = {}
    for result in saved["rounds"]:
        if "sustained_msgs_per_s" not in result:  # files written before that figure existed
            result["sustained_msgs_per_s"] = result["ok"] / (result["elapsed"] + result["drain_s"])
        key = (result["mode"], result["concurrency"], result["per_session"])
        scenarios.setdefault(key, Scenario(*key)).rounds.append(result)
    table, valid = report(list(scenarios.values()), modes)
    print(f"# {saved['versions']}\n\n{table}")
    return 0 if valid else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report_file(args.report)
    if os.geteuid() != 0:
        print("bench/throughput.py must run as root (private Postfix and Dovecot)", file=sys.stderr)
        return 2
    shapes = [(c, k) for c in args.concurrency_list for k in args.per_session_list]
    scenarios = {(m, c, k): Scenario(m, c, k) for m in args.mode_list for c, k in shapes}
    print(f"# {versions()}", flush=True)
    print(
        f"# {args.messages} messages per round, {args.repeat} repeat(s), modes {','.join(args.mode_list)}, "
        f"{'SHA512-CRYPT' if args.crypt_auth else 'PLAIN'} passwords, "
        f"client loop {'uvloop' if importlib.util.find_spec('uvloop') else 'asyncio'}",
        flush=True,
    )
    started = time.monotonic()
    rig = Rig(extra=[m for m in args.mode_list if m not in ("none", "unix", "inet")], crypt_auth=args.crypt_auth)
    # A plain kill (or a closed terminal) must still stop Postfix, Dovecot and the milters.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    serial = 0
    submitted = 0
    per_mode: dict[str, int] = dict.fromkeys(args.mode_list, 0)
    problems: list[str] = []
    try:
        rig.start()
        check_postfix_limits(rig, args.concurrency_list)
        # Warm-up, not counted: smtpd processes, Dovecot's auth, the milters' worker threads.
        for mode in args.mode_list:
            for concurrency in args.concurrency_list:
                warm = rig.round(rig.modes[mode], concurrency, 1, concurrency * 4, serial)
                serial += concurrency * 4
                submitted += warm["ok"]
                per_mode[mode] += warm["ok"]
                if warm["failed"]:
                    raise RuntimeError(f"warm-up of {mode} failed: {warm['failures']}")
        rig.start_sampling()  # the followers' lag and spool backlog while the rounds run
        for repeat in range(args.repeat):
            for concurrency, per_session in shapes:
                shift = repeat % len(args.mode_list)
                order = args.mode_list[shift:] + args.mode_list[:shift]
                for mode in order:
                    result = rig.round(
                        rig.modes[mode], concurrency, per_session, args.messages, serial, args.quiet_wait
                    )
                    serial += args.messages
                    submitted += result["ok"]
                    per_mode[mode] += result["ok"]
                    result["repeat"] = repeat
                    scenarios[(mode, concurrency, per_session)].rounds.append(result)
                    print(
                        f"  r{repeat + 1} {Scenario(mode, concurrency, per_session).label():45} "
                        f"{result['msgs_per_s']:7.1f} msgs/s  failed {result['failed']}"
                        + (
                            f"  milter {result['milter_cpu_s'] / max(result['ok'], 1) * 1000:.2f} ms/msg"
                            if "milter_cpu_s" in result
                            else ""
                        )
                        + f"  other load {result['foreign_cpu_s'] / result['wall_s']:.2f} CPUs"
                        + (f"  {result['failures'][:2]}" if result["failures"] else ""),
                        flush=True,
                    )
        assert rig.stack is not None and rig.stack.postfix is not None
        log = rig.stack.postfix.log_text()
        delivered = log.count("status=sent")
        undelivered = log.count("status=deferred") + log.count("status=bounced")
        problems = rig.check_decisions(per_mode)
    finally:
        rig.stop_sampling()
        rig.stop()
    elapsed = time.monotonic() - started
    table, valid = report(list(scenarios.values()), args.mode_list)
    if delivered != submitted or undelivered or problems:
        valid = False
    print()
    print(table)
    print()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    for name, (lag, spooled) in rig.follower_peak.items():
        print(f"{mode_label(name)}: follower lag at most {lag:.2f} s, spool backlog at most {spooled:.0f} records")
    for name, (cpu, stored) in rig.writer_cpu.items():
        # Over the whole run (warm-up included): the part of the milter's CPU the tracking writer took.
        print(
            f"{mode_label(name)}: tracking writer thread {cpu * 1000 / max(stored, 1):.3f} ms/record ({stored} spooled)"
        )
    print(
        f"{submitted} messages submitted, {delivered} delivered to the sink, {undelivered} deferred/bounced; "
        f"run took {elapsed:.0f} s. {'VALID' if valid else 'INVALID: failures or lost messages'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "versions": versions(),
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "rounds": [r for s in scenarios.values() for r in s.rounds],
                },
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )
    return 0 if valid else 1


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


if __name__ == "__main__":
    sys.exit(main())
