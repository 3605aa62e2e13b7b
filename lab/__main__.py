"""``python -m lab``: the SMTP+ lab on loopback, with a guided tour.

Starts a private Postfix (submission with STARTTLS + SASL), a private Dovecot auth (passwd-file),
smtpplus-milter with the example config recording into a SQLite tracking store, the log
follower on Postfix's log, and the fanout filter (per-recipient copies for the staff list);
sends sample messages, and prints what each client saw, what arrived
at the sink, what the milter logged, and what became of each recipient (``messages show``,
``stats``). The sink answers by local part: ``unknown…`` 550 5.1.1, ``blocked…`` 550 5.7.1,
``busy…`` 450 4.2.0, anyone else 250. ``--keep`` leaves it running.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request

import yaml

from lab.stack import DEPLOY, OUTSIDER, SendResult, Stack, make_message


def _show(title: str, result: SendResult) -> None:
    mark = "ACCEPTED" if result.accepted else f"REFUSED at {result.stage.upper()}"
    print(f"  - {title}\n      {mark}: {result if not result.accepted else 'queued for delivery'}")


# The four recipients of the tracking sample and what the sink answers each of them.
OUTCOMES = {
    "ok@example.org": "delivered",
    "unknown-7@example.org": "bounced",
    "blocked-7@example.org": "bounced",
    "busy-7@example.org": "deferred",
}


def _command(stack: Stack, *args: str) -> str:
    """Run ``smtpplus-milter ARGS -c CONFIG`` as an operator would; its output."""
    command = [sys.executable, "-m", "smtpplus_milter", *args, "-c", str(stack.config_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def _json_rows(stack: Stack, *args: str) -> list[dict[str, object]]:
    command = [sys.executable, "-m", "smtpplus_milter", *args, "-c", str(stack.config_path), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    rows = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    return rows if isinstance(rows, list) else []


def _delivery_outcomes(stack: Stack) -> None:
    """Wait until the follower has seen every outcome of the tracking sample, then show it."""
    queue_id = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = _json_rows(stack, "messages", "--to", "busy-7@example.org")
        if rows:
            queue_id = str(rows[0]["queue_id"])
            recipients = rows[0]["recipients"]
            assert isinstance(recipients, list)
            states = {r["address"]: r["state"] for r in recipients}
            if states == OUTCOMES:
                break
        time.sleep(0.5)
    if queue_id is None:
        print("\nThe follower recorded nothing within 30 s; see the follower's log in the work directory.")
        return
    print(f"\nWhat became of each recipient (the follower reads {stack.postfix.log_file if stack.postfix else ''}):")
    print(f"$ smtpplus-milter messages show {queue_id} -c {stack.config_path}")
    print("  " + _command(stack, "messages", "show", queue_id).rstrip().replace("\n", "\n  "))
    print(f"\n$ smtpplus-milter stats --by user -c {stack.config_path}")
    print("  " + _command(stack, "stats", "--by", "user").rstrip().replace("\n", "\n  "))
    print(
        "\nThe hard bounce (5.1.1) suppressed its address for the user; the next message to it is refused"
        " at RCPT (the 5.7.1 block suppresses nothing):"
    )
    print(f"$ smtpplus-milter suppressions list -c {stack.config_path}")
    print("  " + _command(stack, "suppressions", "list").rstrip().replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="stay up after the tour until Ctrl-C / SIGTERM")
    args = parser.parse_args(argv)

    # The staff list has bcc_in_to: a BCC recipient of the CEO gets a copy with their own To:.
    settings = {"lists": {"staff": {"bcc_in_to": True}}}
    # preempt: bulk mail waits on hold while urgent mail goes out (docs/priority.md, "Preemption").
    # policy: smtpplus-milter policyd answers Postfix's check_policy_service (docs/limits.md); the
    # lab gives newsletter a limit of 2 messages an hour so the tour shows the third refused.
    users = yaml.safe_load((DEPLOY / "users.yaml").read_text(encoding="utf-8"))
    users["newsletter"]["sending_limits"] = {"messages_per_hour": 2}
    stack = Stack(
        cleanup=False,
        tracking="sqlite",
        follower=True,
        fanout=True,
        settings=settings,
        users=users,
        preempt={},
        policy={},
    )
    print(f"Starting the SMTP+ lab in {stack.workdir} ...")
    with stack:
        assert stack.postfix is not None and stack.milter is not None
        port = stack.postfix.submission_port
        print(
            f"  Postfix submission 127.0.0.1:{port} (STARTTLS + AUTH), port-25 role 127.0.0.1:"
            f"{stack.postfix.smtp_port}\n  Dovecot SASL {stack.dovecot.auth_socket}\n"
            f"  smtpplus-milter {stack.milter_spec}, metrics http://127.0.0.1:{stack.metrics_port}/metrics\n"
            f"  smtpplus-milter policyd {stack.policy_spec} (check_policy_service at RCPT and end of data), "
            f"metrics http://127.0.0.1:{stack.policy_metrics_port}/metrics\n"
            f"  sink (where Postfix delivers) 127.0.0.1:{stack.sink.port}\n"
            f"  tracking store {stack.settings['tracking']['store']}, follower metrics "
            f"http://127.0.0.1:{stack.tracking_metrics_port}/metrics\n"
        )
        print("Sample messages:")
        tour = [
            (
                "shop-frontend sends as info@yourcompany.com (authorized domain)",
                dict(
                    login="shop-frontend",
                    mail_from="info@yourcompany.com",
                    message=make_message(from_="Shop <info@yourcompany.com>", subject="Your order 1001"),
                ),
            ),
            (
                "shop-frontend sends one message to four recipients the sink treats differently",
                dict(
                    login="shop-frontend",
                    mail_from="info@yourcompany.com",
                    rcpt_to=list(OUTCOMES),
                    message=make_message(
                        from_="Shop <info@yourcompany.com>", to="ok@example.org", subject="Your order 1002"
                    ),
                ),
            ),
            (
                "ceo-outlook (priority 1) sends a plain message: queue high, own transport",
                dict(
                    login="ceo-outlook",
                    mail_from="ceo@yourcompany.com",
                    message=make_message(from_="ceo@yourcompany.com", subject="Board meeting moved"),
                ),
            ),
            (
                "ceo-outlook writes To: board@example.org and sends a BCC to chair@example.org (list staff,"
                " bcc_in_to): two copies, the BCC one with To: chair@example.org",
                dict(
                    login="ceo-outlook",
                    mail_from="ceo@yourcompany.com",
                    rcpt_to=["board@example.org", "chair@example.org"],
                    message=make_message(
                        from_="ceo@yourcompany.com", to="board@example.org", subject="Budget (chair in BCC)"
                    ),
                ),
            ),
            (
                "newsletter (priority 5) sends bulk mail: queue low, throttled transport",
                dict(
                    login="newsletter",
                    mail_from="news@news.yourcompany.com",
                    message=make_message(from_="news@news.yourcompany.com", subject="Weekly news"),
                ),
            ),
            (
                "newsletter sends its second message this hour (its limit: 2 an hour)",
                dict(
                    login="newsletter",
                    mail_from="news@news.yourcompany.com",
                    message=make_message(from_="news@news.yourcompany.com", subject="Weekly news, part 2"),
                ),
            ),
            (
                "newsletter sends a third: refused at end of data by smtpplus-milter policyd (messages_per_hour)",
                dict(
                    login="newsletter",
                    mail_from="news@news.yourcompany.com",
                    message=make_message(from_="news@news.yourcompany.com", subject="Weekly news, part 3"),
                ),
            ),
            (
                "shop-frontend puts a web-form visitor in From: (spoofing)",
                dict(
                    login="shop-frontend",
                    mail_from="info@yourcompany.com",
                    message=make_message(
                        from_='"info@yourcompany.com" <visitor@gmail.example>', subject="Contact form"
                    ),
                ),
            ),
            (
                "shop-frontend uses a foreign envelope sender",
                dict(
                    login="shop-frontend",
                    mail_from="bounce@evil.example",
                    message=make_message(from_="info@yourcompany.com"),
                ),
            ),
            (
                "old-crm (inactive user) tries to send",
                dict(
                    login="old-crm", mail_from="crm@yourcompany.com", message=make_message(from_="crm@yourcompany.com")
                ),
            ),
            (
                f"{OUTSIDER} (valid Dovecot login, not an SMTP+ user)",
                dict(login=OUTSIDER, mail_from="x@yourcompany.com", message=make_message(from_="x@yourcompany.com")),
            ),
            (
                "shop-frontend with a wrong password",
                dict(
                    login="shop-frontend",
                    password="wrong",
                    mail_from="info@yourcompany.com",
                    message=make_message(from_="info@yourcompany.com"),
                ),
            ),
            (
                "unauthenticated inbound mail to postmaster@example.net (port-25 role, passes untouched)",
                dict(
                    login=None,
                    mail_from="someone@elsewhere.example",
                    rcpt_to=["postmaster@example.net"],
                    message=make_message(from_="someone@elsewhere.example", to="postmaster@example.net"),
                ),
            ),
        ]
        accepted = 0
        for title, kwargs in tour:
            result = stack.send(**kwargs)  # type: ignore[arg-type]
            accepted += result.accepted
            _show(title, result)
        # The BCC sample arrives as two messages (one per recipient).
        received = stack.sink.wait_for(accepted + 1, timeout=30)
        print(f"\nDelivered to the sink: {len(received)} message(s)")
        for item in received:
            text = item.data.decode(errors="replace")
            lines = text.splitlines()
            subject = next((line for line in lines if line.lower().startswith("subject:")), "")
            priority = next((line for line in lines if line.lower().startswith("x-priority:")), "no X-Priority")
            footer = "footer added" if "Example Shop" in text else "no footer"
            to = next((line for line in lines if line.lower().startswith("to:")), "no To:")
            print(f"  - from {item.mail_from} to {', '.join(item.rcpt_tos)}: {subject} ({to}; {priority}; {footer})")
        time.sleep(0.3)
        print(f"\nThe milter's log, one `message` event per message (JSON lines in {stack.milter.log_file}):")
        for event in stack.milter.events("message"):
            print(
                f"  - user={event.get('user')} decision={event['decision']} queue={event.get('queue')} "
                f"footer={(event.get('footer') or {}).get('result')} reply={event.get('reply')}"
            )
            for reason in event.get("reasons", []):
                print(f"      {reason}")
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as response:
            metrics = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith(
                    (
                        "smtpplus_messages_total",
                        "smtpplus_unauthorized_total",
                        "smtpplus_queue_total",
                        "smtpplus_footer",
                    )
                )
            ]
        print("\nMetrics:\n  " + "\n  ".join(metrics))
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.policy_metrics_port}/metrics", timeout=5) as response:
            limited = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith("smtpplus_limited_total")
                or (line.startswith("smtpplus_policy_requests_total{") and not line.endswith(" 0.0"))
            ]
        print("\nThe policy daemon's metrics (sending limits, answers to Postfix):\n  " + "\n  ".join(limited))
        _delivery_outcomes(stack)
        print("\nPostfix's queue as SMTP+ sees it (smtpplus-milter preempt holds bulk while urgent mail waits):")
        print(f"$ smtpplus-milter queue status -c {stack.config_path}")
        print("  " + _command(stack, "queue", "status").rstrip().replace("\n", "\n  "))
        passwords = json.dumps(stack.passwords, indent=2).replace("\n", "\n  ")
        print(
            f"\nSend your own (the lab's passwords):\n  {passwords}\n"
            f"  swaks --server 127.0.0.1:{port} --tls --auth PLAIN --auth-user shop-frontend \\\n"
            f"        --auth-password '{stack.passwords['shop-frontend']}' --from info@yourcompany.com \\\n"
            "        --to someone@example.org\n"
            f"  Config: {stack.config_path} (edit, then `kill -HUP {stack.milter.pid}` reloads)\n"
        )
        if args.keep:
            print("The lab keeps running; Ctrl-C stops it.")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                while stack.milter.alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            print("Run `bash deploy/lab.sh --keep` to keep the lab up and try it yourself.")
    print(f"Lab stopped; nothing is left running. Its files and logs stay in {stack.workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
