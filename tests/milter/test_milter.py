"""The pymilter adapter driven through Milter.testctx.TestCtx (no mail server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest

from smtpplus_milter.core import session as core_session
from smtpplus_milter.core.session import INTERNAL_ERROR_REPLY
from smtpplus_milter.services.runtime import Runtime
from tests.support.builders import config_with, write_config
from tests.support.milterctx import Session
from tests.support.observe import events, metric_value


@pytest.fixture
def holder(tmp_path: Path) -> Runtime:
    return Runtime(config_with(tmp_path))


def test_negotiation_skips_unused_steps(holder: Runtime) -> None:
    session = Session(holder, "shop-frontend")
    protocol = session.ctx._protocol
    for flag in (Milter.P_NOCONNECT, Milter.P_NOHELO, Milter.P_NR_RCPT, Milter.P_NR_HDR, Milter.P_NR_BODY):
        assert protocol & flag, hex(flag)
    for flag in (Milter.P_NOMAIL, Milter.P_NORCPT, Milter.P_NODATA, Milter.P_NOEOH, Milter.P_NOHDRS, Milter.P_NOBODY):
        assert not protocol & flag, hex(flag)


def test_authorized_message_passes(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    before = metric_value(holder, "smtpplus_messages_total", user="shop-frontend", result="accepted")
    session = Session(holder, "shop-frontend")
    stage, rc = session.message("info@yourcompany.com", [("From", "Shop <info@yourcompany.com>"), ("Subject", "Order")])
    assert (stage, rc) == ("eom", Milter.CONTINUE)
    assert session.reply is None
    # The only change to an ordinary message is the queue header; the body is never touched.
    assert session.ctx.edits == [("add", "X-SMTPPlus-Queue", -1, "normal")]
    assert not session.ctx._bodyreplaced
    [event] = events(logs, "message")
    assert event["decision"] == "accepted" and event["user"] == "shop-frontend" and event["queue_id"] == "4XyZ1abc"
    assert event["senders"]["header_from"] == ["Shop <info@yourcompany.com>"]
    assert any("authorized_domains yourcompany.com" in reason for reason in event["reasons"])
    assert metric_value(holder, "smtpplus_messages_total", user="shop-frontend", result="accepted") == before + 1


def test_unauthorized_envelope_rejected_at_mail_from(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(holder, "shop-frontend")
    assert session.message("x@evil.net", [("From", "info@yourcompany.com")]) == ("envfrom", Milter.REJECT)
    assert session.reply == ("550", "5.7.1", "<x@evil.net>: sender not authorized for SMTP+ user shop-frontend")
    [event] = events(logs, "message")
    assert event["decision"] == "rejected" and event["reply"].startswith("550 5.7.1 <x@evil.net>")
    [alert] = events(logs, "unauthorized_sender")
    assert (alert["field"], alert["sender"], alert["action"]) == ("envelope_from", "x@evil.net", "rejected")


def test_unauthorized_from_rejected_at_end_of_headers(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(holder, "shop-frontend")
    stage, rc = session.message("info@yourcompany.com", [("From", '"info@yourcompany.com" <x@evil.net>')])
    assert (stage, rc) == ("eoh", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("550", "5.7.1")
    assert session.reply[2].startswith("<x@evil.net>: sender not authorized for SMTP+ user shop-frontend")
    assert len(events(logs, "message")) == 1


def test_nul_in_mail_from_or_header_is_not_authorized(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    # libmilter hands values over as C strings: the half after a NUL may be what gets delivered.
    session = Session(holder, "shop-frontend")
    assert session.message("<@relay\x00:info@yourcompany.com>", []) == ("envfrom", Milter.REJECT)
    session.ctx._abort = lambda: None
    stage, rc = session.message(
        "info@yourcompany.com", [("From", "info@yourcompany.com\x00, ceo@bank.example"), ("Subject", "x")]
    )
    assert (stage, rc) == ("eoh", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("550", "5.7.1")
    envelope, header = events(logs, "message")
    assert any("MAIL FROM contains a NUL byte" in reason for reason in envelope["reasons"]), envelope["reasons"]
    assert any("From: contains a NUL byte" in reason for reason in header["reasons"]), header["reasons"]
    assert "\x00" not in header["senders"]["header_from"][0]  # logged as '?'


def test_latin1_display_name_is_judged_by_its_address(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    # Older mailers send the name as raw Latin-1 bytes; pymilter hands them over surrogate-escaped.
    session = Session(holder, "shop-frontend")
    headers = [("From", b"M\xfcller <info@yourcompany.com>".decode("utf-8", "surrogateescape"))]
    assert session.message("info@yourcompany.com", headers) == ("eom", Milter.CONTINUE)
    session.ctx._abort = lambda: None
    headers = [("From", b"M\xfcller <m\xfcller@yourcompany.com>".decode("utf-8", "surrogateescape"))]
    assert session.message("info@yourcompany.com", headers) == ("eoh", Milter.REJECT)
    assert [event["decision"] for event in events(logs, "message")] == ["accepted", "rejected"]


def test_second_message_in_session_judged_afresh(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(holder, "shop-frontend")
    assert session.message("x@evil.net", [])[1] == Milter.REJECT
    session.ctx._abort = lambda: None  # Postfix sends no abort between a refused MAIL and the next
    assert session.message("info@yourcompany.com", [("From", "info@yourcompany.com")]) == ("eom", Milter.CONTINUE)
    assert [event["decision"] for event in events(logs, "message")] == ["rejected", "accepted"]


@pytest.mark.parametrize("setting", ["alert", "log", "off"])
def test_display_name_spoofing_is_logged_and_counted(tmp_path: Path, logs: list[dict[str, Any]], setting: str) -> None:
    holder = Runtime(config_with(tmp_path, settings={"authorization": {"display_name_spoofing": setting}}))
    before = metric_value(holder, "smtpplus_display_name_spoofing_total", user="shop-frontend")
    session = Session(holder, "shop-frontend")
    headers = [("From", '"ceo@bank.example" <info@yourcompany.com>'), ("Subject", "Invoice")]
    assert session.message("info@yourcompany.com", headers) == ("eom", Milter.CONTINUE)  # the address decides
    [message] = events(logs, "message")
    assert message["decision"] == "accepted"
    found = events(logs, "display_name_spoofing")
    counted = metric_value(holder, "smtpplus_display_name_spoofing_total", user="shop-frontend") - before
    if setting == "off":
        assert found == [] and counted == 0
        return
    [event] = found
    assert event["log_level"] == "warning"
    assert (event["field"], event["sender"], event["shown"], event["where"], event["action"]) == (
        "header_from",
        "info@yourcompany.com",
        "ceo@bank.example",
        "display_name",
        "delivered",
    )
    assert counted == 1


def test_display_name_spoofing_metric_respects_per_user_labels(tmp_path: Path) -> None:
    holder = Runtime(config_with(tmp_path, settings={"metrics": {"listen": None, "per_user_labels": False}}))
    before = metric_value(holder, "smtpplus_display_name_spoofing_total", user="_all")
    session = Session(holder, "shop-frontend")
    assert session.message("info@yourcompany.com", [("From", "info@yourcompany.com (ceo@bank.example)")])[1] == (
        Milter.CONTINUE
    )
    assert metric_value(holder, "smtpplus_display_name_spoofing_total", user="_all") - before == 1


def test_unauthenticated_passes_untouched(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(holder, None)
    assert session.message("anyone@evil.net", [("From", "anyone@evil.net")]) == ("envfrom", Milter.ACCEPT)
    assert session.reply is None
    [event] = events(logs, "message")
    assert event["decision"] == "accepted" and event["user"] is None


def test_unknown_and_inactive_users(holder: Runtime) -> None:
    unknown = Session(holder, "somebody")
    assert unknown.message("x@yourcompany.com", []) == ("envfrom", Milter.REJECT)
    assert unknown.reply is not None and "not an SMTP+ user" in unknown.reply[2]
    inactive = Session(holder, "disabled-user")
    assert inactive.message("x@yourcompany.com", []) == ("envfrom", Milter.REJECT)
    assert inactive.reply is not None and inactive.reply[:2] == ("550", "5.7.1") and "disabled" in inactive.reply[2]


def test_alert_mode_delivers_and_logs(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    holder = Runtime(config_with(tmp_path, settings={"authorization": {"mode": "alert"}}))
    before = metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="alert")
    session = Session(holder, "shop-frontend")
    assert session.message("x@evil.net", [("From", "x@evil.net")]) == ("eom", Milter.CONTINUE)
    assert session.reply is None
    alerts = events(logs, "unauthorized_sender")
    assert [(a["field"], a["action"]) for a in alerts] == [("envelope_from", "delivered"), ("header_from", "delivered")]
    assert metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="alert") == before + 1


@pytest.mark.parametrize(
    ("policy", "expected"), [("tempfail", Milter.TEMPFAIL), ("accept", Milter.ACCEPT)], ids=["tempfail", "accept"]
)
def test_internal_error_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]], policy: str, expected: int
) -> None:
    holder = Runtime(
        config_with(tmp_path, settings={"milter": {"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": policy}})
    )

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(core_session, "decide_headers", broken)
    session = Session(holder, "shop-frontend")
    assert session.message("info@yourcompany.com", [("From", "info@yourcompany.com")]) == ("eoh", expected)
    if policy == "tempfail":
        assert session.reply == ("451", "4.3.0", INTERNAL_ERROR_REPLY.text)
    assert events(logs, "internal_error")
    assert [event["decision"] for event in events(logs, "message")] == [
        "tempfailed" if policy == "tempfail" else "accepted"
    ]


def test_error_in_noreply_callback_surfaces_at_next_answer(holder: Runtime) -> None:
    session = Session(holder, "shop-frontend")

    class Exploding(list[tuple[str, str]]):
        def append(self, item: tuple[str, str]) -> None:
            raise MemoryError("simulated")

    session.ctx._envfrom("<info@yourcompany.com>")
    session.ctx._priv.session.headers = Exploding()
    assert session.ctx._priv.header_bytes("From", b"info@yourcompany.com") in (Milter.CONTINUE, Milter.NOREPLY)
    assert session.ctx._eoh() == Milter.TEMPFAIL


def test_reload_keeps_old_config_on_error_and_snapshots_per_message(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    holder = Runtime(config_with(tmp_path))
    session = Session(holder, "shop-frontend")
    session.ctx._envfrom("<info@yourcompany.com>")
    # Remove the user's domain while the message is in flight: this message keeps the old rules.
    (tmp_path / "users.yaml").write_text("shop-frontend:\n  authorized_domains: other.example\n")
    assert holder.reload() is True
    session.ctx._priv.header_bytes("From", b"info@yourcompany.com")
    assert session.ctx._eoh() == Milter.CONTINUE
    assert Session(holder, "shop-frontend").message("info@yourcompany.com", [])[1] == Milter.REJECT
    failed_before = metric_value(holder, "smtpplus_config_reloads_total", result="failed")
    (tmp_path / "users.yaml").write_text("shop-frontend:\n  authorized_domains: a.example,b.example\n")
    assert holder.reload() is False
    assert metric_value(holder, "smtpplus_config_reloads_total", result="failed") == failed_before + 1
    assert holder.config.directory.lookup("shop-frontend").authorized_domains == {"other.example"}  # type: ignore[union-attr]
    assert path.exists()


def test_percent_in_reply_is_escaped(holder: Runtime) -> None:
    session = Session(holder, "shop-frontend")
    assert session.message("info@yourcompany.com", [("From", "100%@evil.net")])[1] == Milter.REJECT
    assert session.reply is not None and "%" not in session.reply[2].replace("%%", "")


def test_priority_rewrite_and_forged_queue_header(holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(holder, "shop-frontend")
    headers = [
        ("From", "info@yourcompany.com"),
        ("X-SMTPPlus-Queue", "high"),
        ("X-Priority", "1"),
        ("x-priority", "5"),
        ("Importance", "low"),
    ]
    assert session.message("info@yourcompany.com", headers) == ("eom", Milter.CONTINUE)
    # Two disagreeing X-Priority headers count as normal (3); the user's priority is 3.
    assert session.ctx.edits == [
        ("delete", "X-SMTPPlus-Queue", 1, ""),
        ("delete", "x-priority", 2, ""),
        ("change", "X-Priority", 1, "3 (Normal)"),
        ("add", "X-MSMail-Priority", -1, "Normal"),
        ("change", "Importance", 1, "normal"),
        ("add", "X-SMTPPlus-Queue", -1, "normal"),
    ]
    [event] = events(logs, "message")
    assert event["priority"] == {"message": 3, "user": 3, "effective": 3} and event["queue"] == "normal"
    assert any("disagree" in reason for reason in event["reasons"])


def test_user_priority_routes_high(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    users = {"vip": {"priority": 1}}
    holder = Runtime(config_with(tmp_path, users=users))
    before = metric_value(holder, "smtpplus_queue_total", queue="high")
    session = Session(holder, "vip")
    assert session.message("ceo@example.com", [("From", "ceo@example.com")]) == ("eom", Milter.CONTINUE)
    assert sorted(session.ctx.edits) == sorted(
        [
            ("add", "X-Priority", -1, "1 (Highest)"),
            ("add", "X-MSMail-Priority", -1, "High"),
            ("add", "Importance", -1, "high"),
            ("add", "X-SMTPPlus-Queue", -1, "high"),
        ]
    )
    assert metric_value(holder, "smtpplus_queue_total", queue="high") == before + 1
    assert events(logs, "message")[0]["priority"] == {"message": None, "user": 1, "effective": 1}


def test_unauthenticated_message_gets_no_queue_header(holder: Runtime) -> None:
    session = Session(holder, None)
    session.message("a@b.example", [("From", "a@b.example"), ("X-SMTPPlus-Queue", "high")])
    assert session.ctx.edits == []


FOOTER_LISTS = {
    "shop": {
        "header": {"text": "ORDER NOTICE"},
        "footer": {"text": "Example Shop, Main St 1", "html": "<p>Example Shop</p>"},
    }
}


@pytest.fixture
def footer_holder(tmp_path: Path) -> Runtime:
    return Runtime(config_with(tmp_path, settings={"lists": FOOTER_LISTS, "limits": {"max_message_bytes": 600_000}}))


def test_footer_added_to_text_body(footer_holder: Runtime, logs: list[dict[str, Any]]) -> None:
    before = metric_value(footer_holder, "smtpplus_footer_total", result="added")
    session = Session(footer_holder, "shop-frontend")
    headers = [("From", "info@yourcompany.com"), ("Content-Type", "text/plain; charset=us-ascii")]
    assert session.message("info@yourcompany.com", headers, b"Your order shipped.\r\n")[1] == Milter.CONTINUE
    assert session.new_body == b"ORDER NOTICE\r\n\r\nYour order shipped.\r\n\r\nExample Shop, Main St 1\r\n"
    [event] = events(logs, "message")
    assert event["footer"]["result"] == "added"
    assert metric_value(footer_holder, "smtpplus_footer_total", result="added") == before + 1


def test_footer_skipped_for_dkim_signed(footer_holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(footer_holder, "shop-frontend")
    headers = [("DKIM-Signature", "v=1; a=rsa-sha256; d=x"), ("From", "info@yourcompany.com")]
    assert session.message("info@yourcompany.com", headers, b"signed\r\n")[1] == Milter.CONTINUE
    assert session.new_body is None
    assert events(logs, "message")[0]["footer"]["result"] == "skipped"


def test_no_body_collected_without_a_footer(holder: Runtime) -> None:
    session = Session(holder, "shop-frontend")
    session.message("info@yourcompany.com", [("From", "info@yourcompany.com")], b"x" * 100)
    assert session.new_body is None
    assert session.ctx._priv.spool is None


def test_large_body_is_spooled_to_disk(footer_holder: Runtime) -> None:
    session = Session(footer_holder, "shop-frontend")
    body = b"".join(b"line %06d of a long order confirmation\r\n" % i for i in range(12_000))  # ~490 KB
    headers = [("From", "info@yourcompany.com"), ("Content-Type", "text/plain")]
    ctx = session.ctx
    ctx._envfrom("<info@yourcompany.com>")
    for name, value in headers:
        ctx._priv.header_bytes(name, value.encode())
    assert ctx._eoh() == Milter.CONTINUE
    for start in range(0, len(body), 65535):
        ctx._priv.body(body[start : start + 65535])
    assert ctx._priv.spool._rolled  # on disk, not in memory
    assert ctx._eom() == Milter.CONTINUE
    new = session.new_body
    assert new is not None and new.startswith(b"ORDER NOTICE\r\n\r\nline 000000") and body in new


def test_size_limit_at_mail_from(footer_holder: Runtime, logs: list[dict[str, Any]]) -> None:
    session = Session(footer_holder, "shop-frontend")
    assert session.message("info@yourcompany.com", [], params=("SIZE=700000",)) == ("envfrom", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("552", "5.3.4") and "600000" in session.reply[2]


def test_size_limit_while_receiving(footer_holder: Runtime) -> None:
    session = Session(footer_holder, "shop-frontend")
    body = b"y" * 70 + b"\r\n"
    stage, rc = session.message("info@yourcompany.com", [("From", "info@yourcompany.com")], body * 9000)
    assert (stage, rc) == ("eom", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("552", "5.3.4")
    assert session.ctx._priv.spool is None and session.new_body is None


def test_injection_budget_makes_big_rewrites_take_turns() -> None:
    import threading

    from smtpplus_milter.services.runtime import ByteBudget

    budget = ByteBudget(100)
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def second() -> None:
        with budget.reserve(80):
            order.append("second")
            inside.set()
            release.wait(2)

    with budget.reserve(80):
        waiting = threading.Thread(target=second)
        waiting.start()
        assert not inside.wait(0.2)  # 80 + 80 > 100: the second waits
        order.append("first done")
    assert inside.wait(2)
    assert order == ["first done", "second"] and budget.used == 80
    release.set()
    waiting.join(2)
    assert budget.used == 0
    # A rewrite larger than the whole budget is not refused: it waits until it is alone.
    big = ByteBudget(10)
    with big.reserve(50):
        assert big.used == 50


def test_tcp_nodelay_is_set_on_connected_sockets_only() -> None:
    import socket

    from smtpplus_milter.services.runtime import TcpNoDelay

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                TcpNoDelay().apply()
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
