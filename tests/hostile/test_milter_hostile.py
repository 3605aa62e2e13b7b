"""Hostile sessions against the milter adapter (TestCtx): a refusal stays a refusal, the reply
always fits, and no macro setting or failure opens the relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter import testctx

from smtpplus_milter.core.decision import MAX_REPLY_TEXT
from smtpplus_milter.services.milter import MACROS, SmtpPlusMilter
from smtpplus_milter.services.runtime import Runtime
from tests.support.builders import config_with
from tests.support.milterctx import RecordingCtx, Session
from tests.support.observe import metric_value

# libmilter refuses a reply longer than this (code, enhanced code, text, separators).
LIBMILTER_MAX_REPLY = 980

FROM_OK = [("From", "info@yourcompany.com"), ("To", "someone@example.org"), ("Subject", "x")]


class StrictReplyCtx(RecordingCtx):
    """Refuses what libmilter refuses: pymilter raises "cannot set reply" for an overlong reply."""

    def setreply(self, rcode: str, xcode: str, *msg: str) -> None:
        if len(" ".join((rcode, xcode, *msg))) + 2 > LIBMILTER_MAX_REPLY:
            raise Milter.error("cannot set reply")
        super().setreply(rcode, xcode, *msg)


class BrokenReplyCtx(RecordingCtx):
    """A reply that can never be set, whatever it says."""

    def setreply(self, rcode: str, xcode: str, *msg: str) -> None:
        raise Milter.error("cannot set reply")


class NoSymlistCtx(RecordingCtx):
    """An MTA that does not let the milter choose its macros (no SETSYMLIST offered)."""

    def _negotiate(self) -> int:
        offered = testctx.TestCtx.default_opts
        testctx.TestCtx.default_opts = [Milter.CURR_ACTS & ~Milter.SETSYMLIST, 0x1FFFFF, 0, 0]
        try:
            return super()._negotiate()  # type: ignore[no-any-return]
        finally:
            testctx.TestCtx.default_opts = offered


def _session(holder: Runtime, login: str | None, ctx_class: type[RecordingCtx], **macros: str) -> Session:
    """A Session on a context of *ctx_class*, with Postfix's macros set."""
    return Session(holder, login, "4HostileQ1d", ctx_class=ctx_class, macros=macros)


def _holder(tmp_path: Path, **settings: Any) -> Runtime:
    return Runtime(config_with(tmp_path, settings=settings or None))


LONG_LOCAL = "a" * 1500


@pytest.mark.parametrize("on_internal_error", ["tempfail", "accept"])
def test_long_envelope_sender_is_still_refused_550(tmp_path: Path, on_internal_error: str) -> None:
    holder = _holder(tmp_path, milter={"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": on_internal_error})
    before = metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="block")
    session = _session(holder, "shop-frontend", StrictReplyCtx)
    stage, rc = session.message(f"{LONG_LOCAL}@evil.example", FROM_OK)
    assert (stage, rc) == ("envfrom", Milter.REJECT)
    assert session.reply is not None
    code, xcode, text = session.reply
    assert (code, xcode) == ("550", "5.7.1")
    assert len(text) <= MAX_REPLY_TEXT
    assert text.startswith("<aaaa") and "...>: sender not authorized for SMTP+ user shop-frontend" in text
    assert metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="block") == before + 1


@pytest.mark.parametrize("on_internal_error", ["tempfail", "accept"])
def test_long_from_address_is_still_refused_550(tmp_path: Path, on_internal_error: str) -> None:
    holder = _holder(tmp_path, milter={"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": on_internal_error})
    session = _session(holder, "shop-frontend", StrictReplyCtx)
    headers = [("From", f"{LONG_LOCAL}@evil.example"), ("To", "someone@example.org"), ("Subject", "x")]
    stage, rc = session.message("info@yourcompany.com", headers)
    assert (stage, rc) == ("eoh", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("550", "5.7.1")
    assert len(session.reply[2]) <= MAX_REPLY_TEXT


@pytest.mark.parametrize("on_internal_error", ["tempfail", "accept"])
def test_a_reply_that_cannot_be_set_still_rejects(tmp_path: Path, on_internal_error: str) -> None:
    holder = _holder(tmp_path, milter={"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": on_internal_error})
    before = metric_value(holder, "smtpplus_messages_total", user="shop-frontend", result="rejected")
    session = _session(holder, "shop-frontend", BrokenReplyCtx)
    assert session.message("ceo@paypal.com", FROM_OK) == ("envfrom", Milter.REJECT)
    session = _session(holder, "shop-frontend", BrokenReplyCtx)
    spoofed = [("From", "ceo@paypal.com"), ("To", "someone@example.org"), ("Subject", "x")]
    assert session.message("info@yourcompany.com", spoofed) == ("eoh", Milter.REJECT)
    assert metric_value(holder, "smtpplus_messages_total", user="shop-frontend", result="rejected") == before + 2


def test_failure_after_a_refusal_keeps_the_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _holder(tmp_path, milter={"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": "accept"})

    def broken_report(self: SmtpPlusMilter) -> None:
        raise RuntimeError("logging failed")

    monkeypatch.setattr(SmtpPlusMilter, "_report", broken_report)
    session = _session(holder, "shop-frontend", RecordingCtx)
    assert session.message("ceo@paypal.com", FROM_OK) == ("envfrom", Milter.REJECT)


def test_internal_error_keeps_unauthorized_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Alert mode: the envelope sender is unauthorized (found at MAIL FROM), then a bug at end of
    # headers. Whatever the internal-error answer, the finding is still counted.
    holder = _holder(
        tmp_path,
        milter={"socket": f"unix:{tmp_path}/m.sock", "on_internal_error": "accept"},
        authorization={"mode": "alert"},
    )
    before = metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="alert")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug in header checks")

    monkeypatch.setattr("smtpplus_milter.core.session.decide_headers", broken)
    session = _session(holder, "shop-frontend", RecordingCtx)
    assert session.message("ceo@paypal.com", FROM_OK) == ("eoh", Milter.ACCEPT)
    assert metric_value(holder, "smtpplus_unauthorized_total", user="shop-frontend", mode="alert") == before + 1


def test_macros_are_requested_at_negotiation(tmp_path: Path) -> None:
    session = _session(_holder(tmp_path), "shop-frontend", RecordingCtx)
    for stage, names in MACROS.items():
        assert session.ctx._symlist[stage] == set(names.encode().split())
    assert b"{auth_authen}" in session.ctx._symlist[Milter.M_ENVFROM]


def test_without_our_macro_list_no_login_is_not_trusted(tmp_path: Path) -> None:
    # unauthenticated: pass, but the MTA would not take our macro list: a session without
    # {auth_authen} may be a logged-in one whose macro was configured away. Fail closed.
    session = _session(_holder(tmp_path), None, NoSymlistCtx)
    assert session.message("anyone@example.org", FROM_OK) == ("envfrom", Milter.TEMPFAIL)
    assert session.reply is not None and session.reply[:2] == ("451", "4.3.0")


def test_submission_service_refuses_sessions_without_login(tmp_path: Path) -> None:
    holder = _holder(tmp_path, submission_daemon_names=["ORIGINATING"])
    session = _session(holder, None, RecordingCtx, daemon_name="ORIGINATING")
    assert session.message("anyone@example.org", FROM_OK) == ("envfrom", Milter.REJECT)
    assert session.reply is not None and session.reply[:2] == ("530", "5.7.0")
    # Port 25 (another daemon name) keeps `unauthenticated: pass`.
    session = _session(holder, None, RecordingCtx, daemon_name="relay.test")
    assert session.message("anyone@example.org", FROM_OK) == ("envfrom", Milter.ACCEPT)
