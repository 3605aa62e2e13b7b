"""The session's side of per-recipient copies: when the fanout tag is added, and where."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpplus_milter.config.loader import ConfigError
from smtpplus_milter.config.rules import rules_of
from smtpplus_milter.core.fanout import TAG, Tag
from smtpplus_milter.core.priority import QUEUE_HEADER, HeaderEdit
from smtpplus_milter.core.session import MAX_NAMED_BYTES, Action, EndOfMessage, MessageSession, Rules
from smtpplus_milter.core.suppression import Entry
from smtpplus_milter.core.tracking import MAX_RECIPIENTS
from tests.support import builders

CRM = builders.user("crm", domains=["shop.example"], list="crm", priority=1)
NEWS = builders.user("news", domains=["shop.example"], list="news")
LONE = builders.user("lone", domains=["shop.example"])
QUEUE_ID = "4jdfvM0wYyzJVF1"


def rules(**changes: object) -> Rules:
    base = builders.rules(builders.directory(CRM, NEWS, LONE))
    return replace(base, fanout={"crm": "bcc"}, **changes)  # type: ignore[arg-type]


def send(
    login: str,
    headers: list[tuple[str, str]],
    recipients: list[str],
    *,
    rules_: Rules | None = None,
    queue_id: str | None = QUEUE_ID,
) -> tuple[MessageSession, EndOfMessage]:
    """One whole message as the milter drives it; the end of message's answer."""
    session = MessageSession(rules_ or rules())
    assert session.mail_from(login, "<info@shop.example>").action is Action.CONTINUE
    for rcpt in recipients:
        session.recipient(rcpt)
    session.header("From", "info@shop.example")
    for name, value in headers:
        session.header(name, value)
    assert session.end_of_headers().action is Action.CONTINUE
    end = session.end_of_message(queue_id)
    session.accept()
    return session, end


def _tags(end: EndOfMessage) -> list[HeaderEdit]:
    return [edit for edit in end.edits if edit.name == TAG and edit.action == "add"]


@pytest.mark.parametrize(
    ("headers", "recipients", "tagged"),
    [
        pytest.param([("To", "a@x.example")], ["<a@x.example>", "<c@x.example>"], True, id="one-bcc"),
        pytest.param(
            [("To", "A <A@X.example>"), ("Cc", "b@x.example")],
            ["<a@x.example>", "<b@x.example>"],
            False,
            id="all-named-in-to-and-cc-any-case",
        ),
        pytest.param([("To", "undisclosed-recipients:;")], ["<c@x.example>"], True, id="undisclosed"),
        pytest.param([], ["<c@x.example>"], True, id="no-to-at-all"),
        pytest.param(
            [("To", "team: a@x.example, b@x.example;")], ["<a@x.example>", "<b@x.example>"], False, id="group-named"
        ),
        pytest.param([("Bcc", "c@x.example")], ["<c@x.example>"], True, id="bcc-header-names-nobody"),
    ],
)
def test_the_tag_is_added_only_when_a_recipient_is_not_named(
    headers: list[tuple[str, str]], recipients: list[str], tagged: bool
) -> None:
    session, end = send("crm", headers, recipients)
    expected = [HeaderEdit("add", TAG, f"{QUEUE_ID} bcc")] if tagged else []
    assert _tags(end) == expected
    outcome = session.outcome()
    assert outcome is not None
    assert outcome.fanout == (Tag(QUEUE_ID, "bcc") if tagged else None)
    assert ("fanout" in outcome.log_fields(0.0)) is tagged


def test_the_tag_comes_after_the_queue_header() -> None:
    # Postfix runs the last FILTER its header checks matched: the fanout one must win.
    _session, end = send("crm", [("To", "a@x.example")], ["<a@x.example>", "<c@x.example>"])
    names = [edit.name for edit in end.edits if edit.action == "add"]
    assert QUEUE_HEADER in names and names.index(TAG) > names.index(QUEUE_HEADER)
    assert end.edits[-1] == HeaderEdit("add", TAG, f"{QUEUE_ID} bcc")


@pytest.mark.parametrize(
    "login",
    [
        pytest.param("news", id="list-without-bcc-in-to"),
        pytest.param("lone", id="user-without-list"),
    ],
)
def test_no_tag_for_a_list_that_does_not_split(login: str) -> None:
    session, end = send(login, [("To", "a@x.example")], ["<a@x.example>", "<c@x.example>"])
    assert _tags(end) == [] and not session.wants_recipients
    outcome = session.outcome()
    assert outcome is not None and outcome.fanout is None


def test_a_clients_own_tag_is_deleted_and_ours_added() -> None:
    headers = [("To", "a@x.example"), ("X-SMTPPlus-Fanout", "FAKE each")]
    _session, end = send("crm", headers, ["<a@x.example>"])
    assert HeaderEdit("delete", "X-SMTPPlus-Fanout", index=1) in end.edits
    assert _tags(end) == []  # every recipient is named: no copies
    _session, end = send("crm", headers, ["<a@x.example>", "<c@x.example>"])
    deleted = end.edits.index(HeaderEdit("delete", "X-SMTPPlus-Fanout", index=1))
    assert end.edits.index(HeaderEdit("add", TAG, f"{QUEUE_ID} bcc")) > deleted


@pytest.mark.parametrize(
    ("headers", "recipients"),
    [
        pytest.param(
            [("To", "a@x.example, " * (MAX_NAMED_BYTES // 13 + 1))], ["<a@x.example>"], id="to-over-the-bound"
        ),
        pytest.param([("To", "(" * 2000 + "a@x.example")], ["<a@x.example>"], id="parser-gives-up"),
        pytest.param([("To", "a@x.example")], ["<a@x.example>"] * (MAX_RECIPIENTS + 1), id="more-recipients-than-kept"),
    ],
)
def test_when_in_doubt_the_message_is_tagged(headers: list[tuple[str, str]], recipients: list[str]) -> None:
    # The filter decides per copy, and a named recipient's copy goes on unchanged.
    _session, end = send("crm", headers, recipients)
    assert _tags(end) == [HeaderEdit("add", TAG, f"{QUEUE_ID} bcc")]


def test_no_queue_id_no_tag_and_a_reason() -> None:
    session, end = send("crm", [("To", "a@x.example")], ["<c@x.example>"], queue_id=None)
    assert _tags(end) == []
    outcome = session.outcome()
    assert outcome is not None and "no queue id from Postfix" in " ".join(outcome.decision.reasons)


def test_dropped_recipients_do_not_count() -> None:
    # suppression.action drop: the suppressed address is removed, so it needs no copy.
    session = MessageSession(rules())
    session.mail_from("crm", "<info@shop.example>")
    entry = Entry(scope="global", reason="hard_bounce", since=datetime(2026, 12, 1, tzinfo=UTC))
    session.recipient("<a@x.example>")
    session.recipient("<c@x.example>", {"c@x.example": [entry]}, drop=True)
    session.header("From", "info@shop.example")
    session.header("To", "a@x.example")
    session.end_of_headers()
    end = session.end_of_message(QUEUE_ID)
    assert end.drop == ("<c@x.example>",) and _tags(end) == []


def test_bcc_in_to_reaches_the_rules(tmp_path: Path) -> None:
    lists = {"shop": {"bcc_in_to": True}, "news": {}, "crm": {"bcc_in_to": False}}
    assert rules_of(builders.config_with(tmp_path, settings={"lists": lists})).fanout == {"shop": "bcc"}
    with pytest.raises(ConfigError, match="bcc_in_to"):
        builders.config_with(tmp_path, settings={"lists": {"shop": {"bcc_in_to": "sometimes"}}})


@pytest.mark.parametrize(
    ("login", "recipients", "deleted"),
    [
        pytest.param("crm", ["<a@x.example>", "<c@x.example>"], True, id="split"),
        pytest.param("crm", ["<a@x.example>"], True, id="splitting-list-all-named"),
        pytest.param("news", ["<a@x.example>", "<c@x.example>"], False, id="list-that-does-not-split"),
    ],
)
def test_a_splitting_list_never_lets_a_bcc_header_leave(login: str, recipients: list[str], deleted: bool) -> None:
    headers = [("To", "a@x.example"), ("Bcc", "c@x.example"), ("BCC", "d@x.example")]
    _session, end = send(login, headers, recipients)
    removed = [edit for edit in end.edits if edit.action == "delete" and edit.name.lower() == "bcc"]
    # Last first, so the index of the one still to go never shifts.
    assert removed == ([HeaderEdit("delete", "BCC", index=2), HeaderEdit("delete", "Bcc", index=1)] if deleted else [])
