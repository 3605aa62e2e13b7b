"""Alert sinks failing must not slow mail: throughput with failing vs healthy alert sinks, one run.

A real private Postfix + Dovecot + smtpplus-milter (lab.Stack) in ``alert`` mode, so every message
is delivered and fires an alert; each message uses a new From: address, so de-duplication never
hides the load. Three milters side by side on the same Postfix, each behind its own submission
port: one with no alert sinks; one with healthy sinks (a webhook answering 200 at once, a real
Alertmanager, an SMTP sink); one whose webhook hangs for 30 s (timeout 5 s), whose Alertmanager is
down (a closed port) and whose e-mail sink refuses connections. The rounds alternate.
Afterwards the failing milter's /metrics shows what happened to the alerts (dropped when the
bounded queue was full, failed after retries), and its resident memory.

    .venv/bin/python bench/alerts_fault.py [--messages 600] [--repeat 3]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

# The lab is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.harness import Alertmanager, Sink, free_port
from lab.milter_process import MilterProcess, prepare_socket_dir
from lab.stack import Stack, client_tls, deep_merge, make_message

SESSIONS = 10


class HangingWebhook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                time.sleep(30)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def _round(port: int, password: str, messages: int, tag: str) -> float:
    failures: list[str] = []

    def worker(offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.starttls(context=client_tls())
            client.login("shop-frontend", password)
            for index in range(offset, messages, SESSIONS):
                sender = f"visitor-{tag}-{index}@gmail.example"  # unauthorized: alert mode delivers
                try:
                    client.sendmail("info@yourcompany.com", ["someone@example.org"], make_message(from_=sender))
                except smtplib.SMTPException as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(SESSIONS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed, e.g. {failures[0]}")
    return messages / elapsed


def _metric_lines(port: int, prefix: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith(prefix)]


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class FastWebhook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def _extra_milter(stack: Stack, name: str, alerts: dict[str, object]) -> tuple[MilterProcess, int, int]:
    """Start another milter with *alerts* and a submission port whose smtpd uses it."""
    assert stack.postfix is not None
    directory = stack.workdir / f"milter-{name}"
    prepare_socket_dir(directory)
    spec = f"unix:{directory}/milter.sock"
    metrics_port = free_port()
    settings = deep_merge(
        stack.settings, {"milter": {"socket": spec}, "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    )
    settings["alerts"] = alerts
    config = stack.etc / f"smtpplus-{name}.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    milter = MilterProcess(config, spec, stack.workdir / f"milter-{name}.log")
    milter.start()
    port = free_port()
    master_cf = stack.postfix.config_dir / "master.cf"
    master_cf.write_text(
        master_cf.read_text(encoding="utf-8")
        + f"127.0.0.1:{port} inet n - n - - smtpd\n  -o syslog_name=postfix/{name}\n"
        "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        f"  -o smtpd_milters={spec}\n",
        encoding="utf-8",
    )
    return milter, port, metrics_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    hanging, fast = HangingWebhook(), FastWebhook()
    for server in (hanging, fast):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = free_port()  # nothing listens here: Alertmanager "down", e-mail sink refusing
    lists = {"shop": {"header": None, "footer": None}}
    retry = {"dedup_seconds": 300, "attempts": 3, "backoff_seconds": 1}
    with (
        Stack(settings={"authorization": {"mode": "alert"}, "lists": lists}) as stack,
        Alertmanager(stack.workdir / "alertmanager") as alertmanager,
        Sink() as mail_sink,
    ):
        assert stack.postfix is not None
        healthy, healthy_port, healthy_metrics = _extra_milter(
            stack,
            "healthy",
            {
                **retry,
                "webhook": {"url": f"http://127.0.0.1:{fast.server_address[1]}/hook", "timeout": 5},
                "alertmanager": {"url": alertmanager.url, "timeout": 5},
                "email": {
                    "to": ["ops@example.org"],
                    "smtp": f"127.0.0.1:{mail_sink.port}",
                    "from": "smtpplus@relay.test",
                },
            },
        )
        failing, failing_port, failing_metrics = _extra_milter(
            stack,
            "failing",
            {
                **retry,
                "webhook": {"url": f"http://127.0.0.1:{hanging.server_address[1]}/hook", "timeout": 5},
                "alertmanager": {"url": f"http://127.0.0.1:{closed}", "timeout": 5},
                "email": {"to": ["ops@example.org"], "smtp": f"127.0.0.1:{closed}", "from": "smtpplus@relay.test"},
            },
        )
        try:
            stack.postfix.reload()
            time.sleep(1.5)
            password = stack.passwords["shop-frontend"]
            rates: dict[str, list[float]] = {"none": [], "healthy": [], "failing": []}
            ports = {"none": stack.postfix.submission_port, "healthy": healthy_port, "failing": failing_port}
            for repeat in range(args.repeat):
                for name, port in ports.items():
                    rates[name].append(_round(port, password, args.messages, f"{name}{repeat}"))
                print(f"  r{repeat + 1}: " + ", ".join(f"{n} {r[-1]:.0f} msgs/s" for n, r in rates.items()))
            print(f"{args.messages} alert-firing messages per round, {args.repeat} rounds each, {SESSIONS} sessions")
            for name, values in rates.items():
                print(f"{name + ' sinks:':<15} median {statistics.median(values):.0f} msgs/s")
            for name in ("healthy", "failing"):
                ratio = statistics.median(b / a for a, b in zip(rates["none"], rates[name], strict=True))
                print(f"ratio {name} / no sinks: {ratio:.2f}x")
            ratio = statistics.median(b / a for a, b in zip(rates["healthy"], rates["failing"], strict=True))
            print(f"ratio failing / healthy sinks: {ratio:.2f}x (goal: about 1.0x)")
            for name, milter, port in (("healthy", healthy, healthy_metrics), ("failing", failing, failing_metrics)):
                rss, hwm = _rss_mb(milter.pid)
                print(f"{name} milter RSS {rss:.1f} MB, peak {hwm:.1f} MB")
                for line in _metric_lines(port, "smtpplus_alerts_total"):
                    if not line.endswith(" 0.0"):
                        print(f"  {line}")
        finally:
            healthy.stop()
            failing.stop()
            hanging.shutdown()
            fast.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
