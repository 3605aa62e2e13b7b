"""``smtpplus-milter fanout`` as a real process: smtplib.LMTP plays Postfix's LMTP client (one
recipient per delivery), an aiosmtpd sink plays the loopback re-injection smtpd. A BCC recipient's
copy has its own To: and no Bcc:, the reply names the sink's queue id, a retry is answered from the
journal without a second copy, a refusal is 451 with nothing journaled, and a kill -9 with 50
deliveries in flight leaves each recipient with one copy once Postfix has retried."""

from __future__ import annotations

import concurrent.futures
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fanout import NAMED, SENDER, Filter, message
from tests.support.reinject_sink import ReinjectSink


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Filter]:
    with ReinjectSink() as sink:
        fanout = Filter(tmp_path, sink)
        with fanout.process:
            yield fanout


def test_bcc_recipient_gets_own_to_named_one_the_message(running: Filter) -> None:
    bob = running.deliver(message(), "bob@example.org")
    alice = running.deliver(message(), NAMED)
    first, second = running.sink.wait_for(2)
    assert bob == (250, f"2.0.0 Ok: queued as {first.queue_id}".encode())
    assert alice == (250, f"2.0.0 Ok: queued as {second.queue_id}".encode())
    assert (first.mail_from, first.rcpt_tos) == (SENDER, ("bob@example.org",))
    assert b"To: <bob@example.org>\r\n" in first.data
    assert b"Bcc" not in first.data and b"X-SMTPPlus-Fanout" not in first.data and b"Alice" not in first.data
    assert b"X-SMTPPlus-Queue: normal\r\n" in first.data and first.data.endswith(b"\r\n\r\nHello.\r\n")
    assert b"To: Alice <alice@example.net>\r\n" in second.data and b"Bcc" not in second.data
    assert running.copies("rewritten") == 1 and running.copies("unchanged") == 1
    events = {e["recipient"]: e for e in running.process.events("fanout_copy")}
    assert events["bob@example.org"]["new_queue_id"] == first.queue_id
    assert events["bob@example.org"]["queue_id"] == "4jdfvM0wYyzJVF1"
    assert events[NAMED]["result"] == "unchanged"


def test_null_sender_and_mode_each(running: Filter) -> None:
    reply = running.deliver(message(mode="each"), NAMED, sender="")
    [copy] = running.sink.wait_for(1)
    assert reply[0] == 250 and copy.mail_from == "<>"  # aiosmtpd's spelling of the null sender
    # Mode each splits whatever To: says, but a named recipient keeps the To: they were named in.
    assert b"To: Alice <alice@example.net>\r\n" in copy.data and b"Bcc" not in copy.data


def test_a_retry_is_answered_from_the_journal_without_a_second_copy(running: Filter) -> None:
    first = running.deliver(message(), "bob@example.org")
    again = running.deliver(message(), "BOB@example.org")
    assert first == again and first[0] == 250
    assert len(running.sink.messages) == 1
    assert running.journaled() == [("4jdfvM0wYyzJVF1", "bob@example.org", running.sink.messages[0].queue_id)]
    assert running.copies("replayed") == 1
    # Another message to the same recipient is another copy.
    assert running.deliver(message(queue_id="4jdfvM0wYyzJVF2"), "bob@example.org")[0] == 250
    assert len(running.sink.wait_for(2)) == 2


@pytest.mark.parametrize(
    ("rcpt_reply", "data_reply"),
    [
        pytest.param("550 5.1.1 No such user", None, id="550-at-rcpt"),
        pytest.param("451 4.3.0 Try later", None, id="451-at-rcpt"),
        pytest.param(None, "554 5.7.1 Refused", id="554-after-data"),
        pytest.param(None, "451 4.3.0 Queue full", id="451-after-data"),
    ],
)
def test_a_refused_copy_is_451_and_not_journaled(
    running: Filter, rcpt_reply: str | None, data_reply: str | None
) -> None:
    running.sink.rcpt_reply, running.sink.data_reply = rcpt_reply, data_reply
    code, text = running.deliver(message(), "bob@example.org")
    assert (code, text[:5]) == (451, b"4.3.0")
    assert running.journaled() == [] and running.sink.messages == []
    assert running.copies("deferred") == 1
    [event] = running.process.events("fanout_copy")
    assert event["result"] == "deferred" and (rcpt_reply or data_reply or "").split()[0] in event["reason"]
    # Postfix retries later; the sink takes it now (the connection kept after the refusal works).
    running.sink.rcpt_reply = running.sink.data_reply = None
    assert running.deliver(message(), "bob@example.org")[0] == 250
    assert len(running.sink.wait_for(1)) == 1 and len(running.journaled()) == 1


def test_reinjection_unreachable_is_451(tmp_path: Path) -> None:
    with ReinjectSink() as sink:
        fanout = Filter(tmp_path, sink)
    with fanout.process:  # the sink is gone: nothing listens on its port
        code, _ = fanout.deliver(message(), "bob@example.org")
        assert code == 451
        [event] = fanout.process.events("fanout_copy")
        assert "cannot reach" in event["reason"]


def test_a_reply_without_queue_id_is_accepted_without_a_link(running: Filter) -> None:
    running.sink.queue_ids = False
    assert running.deliver(message(), "bob@example.org") == (250, b"2.0.0 Ok: queued")
    [event] = running.process.events("fanout_copy")
    assert event["new_queue_id"] is None and event["reply"] == "2.0.0 Ok"
    assert running.journaled() == [("4jdfvM0wYyzJVF1", "bob@example.org", None)]


def test_second_recipient_in_one_delivery_is_452(running: Filter) -> None:
    with smtplib.LMTP(str(running.socket), timeout=30) as client:
        client.ehlo_or_helo_if_needed()
        client.mail(SENDER)
        assert client.rcpt("bob@example.org")[0] == 250
        code, text = client.rcpt("carol@example.org")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(message())[0] == 250
    [copy] = running.sink.wait_for(1)
    assert copy.rcpt_tos == ("bob@example.org",)


def test_kill_9_with_50_in_flight_then_retries_give_one_copy_each(tmp_path: Path) -> None:
    recipients = [f"r{n:02d}@example.org" for n in range(50)]
    with ReinjectSink() as sink:
        sink.rcpt_delay = 0.2  # deliveries pile up in the filter's four workers
        fanout = Filter(tmp_path, sink)
        fanout.process.start()
        answered: dict[str, tuple[int, bytes]] = {}

        def one(recipient: str) -> None:
            try:
                answered[recipient] = fanout.deliver(message(), recipient)
            except (OSError, smtplib.SMTPException):
                pass  # the filter died: Postfix keeps the message and retries

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(one, r) for r in recipients]
            sink.wait_for(8)
            fanout.process.kill()
            concurrent.futures.wait(futures)
        unanswered = [r for r in recipients if answered.get(r, (0,))[0] != 250]
        assert 0 < len(unanswered) < 50
        at_kill = {m.rcpt_tos[0] for m in sink.messages}
        fanout.process.start()
        try:
            for recipient in unanswered:
                # As Postfix does: a delivery whose connection failed is tried again later.
                for attempt in range(5):
                    try:
                        reply = fanout.deliver(message(), recipient)
                        break
                    except (OSError, smtplib.SMTPException):
                        assert attempt < 4, fanout.process.log_tail()
                        time.sleep(0.5)
                assert reply[0] == 250, reply
        finally:
            fanout.process.stop()
        counts: dict[str, int] = {}
        for copy in sink.messages:
            counts[copy.rcpt_tos[0]] = counts.get(copy.rcpt_tos[0], 0) + 1
    assert sorted(counts) == recipients
    twice = {r for r, n in counts.items() if n > 1}
    # The documented window only: the sink had taken the copy but the filter died before its
    # journal write (so before its answer).
    assert twice <= at_kill & set(unanswered), twice
    assert all(n <= 2 for n in counts.values())


def test_sighup_moves_reinjection_and_a_bad_file_keeps_the_old(tmp_path: Path) -> None:
    with ReinjectSink() as first, ReinjectSink() as second:
        fanout = Filter(tmp_path, first)
        with fanout.process:
            assert fanout.deliver(message(), "bob@example.org")[0] == 250
            config = fanout.process.config_path
            text = config.read_text()
            config.write_text(text.replace(f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"))
            fanout.process.reload()
            fanout.process.wait_for_event("config_reloaded")
            assert fanout.deliver(message(), "carol@example.org")[0] == 250
            config.write_text(text + "\nfanout: [")  # not YAML
            fanout.process.reload()
            fanout.process.wait_for_event("config_reload_failed")
            assert fanout.deliver(message(), "dave@example.org")[0] == 250
        assert [m.rcpt_tos for m in first.messages] == [("bob@example.org",)]
        assert [m.rcpt_tos for m in second.messages] == [("carol@example.org",), ("dave@example.org",)]


def test_sigterm_answers_the_deliveries_in_hand(running: Filter) -> None:
    running.sink.delay = 1.0
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(running.deliver, message(), f"r{n}@example.org") for n in range(3)]
        time.sleep(0.5)  # the three are at the sink, waiting for its answer
        assert running.process.stop() == 0
        assert [f.result()[0] for f in futures] == [250, 250, 250]
    assert len(running.journaled()) == 3


def test_a_kept_connection_the_smtpd_closed_is_replaced(tmp_path: Path) -> None:
    with ReinjectSink() as sink:
        fanout = Filter(tmp_path, sink)
        with fanout.process:
            assert fanout.deliver(message(), "bob@example.org")[0] == 250
            sink.__exit__(None, None, None)  # the smtpd restarts: the kept connection is dead
            with ReinjectSink(port=sink.port) as restarted:
                assert fanout.deliver(message(), "carol@example.org")[0] == 250
                assert [m.rcpt_tos for m in restarted.wait_for(1)] == [("carol@example.org",)]
