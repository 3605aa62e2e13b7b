"""A mailto: unsubscribe through ``smtpplus-milter ingest`` as Postfix's pipe runs it (a process,
the message on stdin) against a real SQLite store: a valid u+TOKEN suppresses the recipient for
the list, a repeat is a duplicate, a forged token is kept in quarantine; exit 0 each time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtpplus_milter.core.tokens import make_mail_unsubscribe_token, make_unsubscribe_token
from smtpplus_milter.infra.store import open_store
from tests.support.ingest import KEY, NODE, QID, RECIPIENT, RETURN_PATH, ingest_config

MAIL = b"From: Bob <bob@example.net>\r\nTo: unsubscribe\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"


def _ingest(config: Path, recipient: str) -> tuple[int, dict[str, object]]:
    command = [sys.executable, "-m", "smtpplus_milter", "ingest", "-c", str(config), "--recipient", recipient]
    done = subprocess.run(command, input=MAIL, capture_output=True, timeout=60, check=False)
    events = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    [event] = [item for item in events if str(item.get("event", "")).startswith("report_")]
    return done.returncode, event


def _suppressed(config: Path) -> list[tuple[str, str, str, str]]:
    store = open_store(f"sqlite:///{config.parent}/t.db")
    try:
        return [(item.scope, item.address, item.reason, item.created_by) for item in store.suppressions()]
    finally:
        store.close()


def test_a_mailto_unsubscribe_is_recorded_once(tmp_path: Path) -> None:
    config = ingest_config(tmp_path)
    token = make_unsubscribe_token("shop-frontend", "shop", RECIPIENT, KEY)
    address = f"u+{token}@{RETURN_PATH}"
    code, event = _ingest(config, address)
    assert code == 0
    assert (event["event"], event["status"], event["kind"], event["list"]) == (
        "report_ingested",
        "recorded",
        "unsubscribe",
        "shop",
    )
    assert _suppressed(config) == [("list:shop", RECIPIENT, "unsubscribe", "ingest")]
    code, event = _ingest(config, f"U+{token.upper()}@{RETURN_PATH}")  # a mailer that upper-cases the local part
    assert code == 0 and (event["event"], event["status"]) == ("report_ingested", "duplicate")
    assert len(_suppressed(config)) == 1


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(make_unsubscribe_token("shop-frontend", "shop", RECIPIENT, b"x" * 32), "not ours", id="other-key"),
        pytest.param(make_unsubscribe_token("shop-frontend", "shop", RECIPIENT, KEY)[:-3], "not ours", id="truncated"),
        pytest.param("zzzz", "not ours", id="garbage"),
    ],
)
def test_a_forged_unsubscribe_is_quarantined(tmp_path: Path, token: str, reason: str) -> None:
    config = ingest_config(tmp_path)
    code, event = _ingest(config, f"u+{token}@{RETURN_PATH}")
    assert code == 0 and event["event"] == "report_quarantined" and reason in str(event["reason"])
    assert Path(str(event["kept"])).exists()
    assert _suppressed(config) == []


def test_the_short_mailto_token_names_the_message_and_its_recipient(tmp_path: Path) -> None:
    # What the List-Unsubscribe header's mailto: carries: node, queue id and a tag of the recipient
    # (a local part has 64 octets); user and list come from the recorded message.
    config = ingest_config(tmp_path)
    token = make_mail_unsubscribe_token(NODE, QID, RECIPIENT, KEY)
    assert len(f"u+{token}") <= 64
    code, event = _ingest(config, f"u+{token}@{RETURN_PATH}")
    assert code == 0 and (event["event"], event["status"]) == ("report_ingested", "recorded"), event
    [entry] = _suppressed(config)
    assert entry[1:] == (RECIPIENT, "unsubscribe", "ingest") and entry[0].startswith("list:")
    other = make_mail_unsubscribe_token(NODE, QID, "carol@example.net", KEY)  # not a recipient of QID
    code, event = _ingest(config, f"u+{other}@{RETURN_PATH}")
    assert code == 0 and event["event"] == "report_quarantined" and "no single recipient" in str(event["reason"])
