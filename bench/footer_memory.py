"""Peak memory of the milter while 20 concurrent 20 MB messages get a footer.

A real private Postfix + Dovecot + smtpplus-milter (lab.Stack) with the shipped example's list
footer for shop-frontend. Twenty clients submit at once, each a 20 MB message (a short text part
and a large base64 attachment). The milter's resident memory is sampled from /proc every 20 ms;
its kernel-kept peak (VmHWM) is read at the end. Every message must arrive with the footer and
with its attachment intact.

    .venv/bin/python bench/footer_memory.py [--messages 20] [--size-mb 20]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import smtplib
import sys
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

# The lab is a folder of this repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.stack import Stack, client_tls

FOOTER = "This message was sent by the Example Shop."


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _message(index: int, size: int) -> tuple[bytes, str]:
    payload = os.urandom(size * 3 // 4 - 4096)  # base64 grows it by 4/3
    message = EmailMessage()
    message["From"] = "Shop <info@yourcompany.com>"
    message["To"] = "someone@example.org"
    message["Subject"] = f"big {index}"
    message.set_content(f"Your export number {index} is attached.\n")
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename=f"export-{index}.bin")
    return message.as_bytes(policy=policy.SMTP), hashlib.sha256(payload).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=20.0, help="message size in MB (10^6 bytes), default 20")
    args = parser.parse_args()
    size = int(args.size_mb * 1_000_000)
    print(f"building {args.messages} messages of {size / 1e6:.1f} MB ...")
    messages = [_message(index, size) for index in range(args.messages)]
    with Stack() as stack:
        assert stack.milter is not None and stack.postfix is not None
        pid = stack.milter.pid
        # One small message first, so imports and caches are warm before "idle" is read.
        warm, _ = _message(-1, 20_000)
        assert stack.send(warm, login="shop-frontend", mail_from="info@yourcompany.com").accepted
        stack.sink.wait_for(1, timeout=60)
        stack.sink.clear()
        time.sleep(0.5)
        idle_kb = _status_kb(pid, "VmRSS")
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(_status_kb(pid, "VmRSS"))
                time.sleep(0.02)

        failures: list[str] = []

        def send(data: bytes) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", stack.postfix.submission_port, timeout=300) as client:  # type: ignore[union-attr]
                    client.starttls(context=client_tls())
                    client.login("shop-frontend", stack.passwords["shop-frontend"])
                    client.sendmail("info@yourcompany.com", ["someone@example.org"], data)
            except smtplib.SMTPException as exc:
                failures.append(str(exc))

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        senders = [threading.Thread(target=send, args=(data,)) for data, _ in messages]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        accepted_s = time.monotonic() - started
        received = stack.sink.wait_for(args.messages - len(failures), timeout=600)
        done.set()
        sampler.join()
        hwm_kb = _status_kb(pid, "VmHWM")
        digests = {digest for _, digest in messages}
        intact = 0
        with_footer = 0
        for item in received:
            parsed = message_from_bytes(item.data, policy=policy.default)
            body = parsed.get_body(preferencelist=("plain",))
            with_footer += body is not None and FOOTER in body.get_content()
            for attachment in parsed.iter_attachments():
                intact += hashlib.sha256(attachment.get_content()).hexdigest() in digests
        events = [e for e in stack.milter.events("message") if e.get("footer")]
    peak_kb = max([*samples, idle_kb])
    print(
        f"{args.messages} concurrent messages of {size / 1e6:.1f} MB: accepted in {accepted_s:.1f} s, "
        f"{len(failures)} refused, {len(received)} delivered, {with_footer} with the footer, "
        f"{intact} attachments intact, footer results {sorted({e['footer']['result'] for e in events})}"
    )
    print(
        f"milter RSS idle {idle_kb / 1024:.1f} MB, peak sampled {peak_kb / 1024:.1f} MB, VmHWM {hwm_kb / 1024:.1f} MB"
    )
    print(f"peak above idle: {(max(peak_kb, hwm_kb) - idle_kb) / 1024:.1f} MB (target < 100 MB)")
    ok = not failures and with_footer == intact == args.messages
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
