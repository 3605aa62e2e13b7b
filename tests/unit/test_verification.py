"""Verification codes and tokens: expiry, single use, lockout, hashing, the state file."""

from __future__ import annotations

import dataclasses
import hmac
import json
import stat
from pathlib import Path

import pytest

from smtpplus_milter.core import verification
from smtpplus_milter.core.verification import MAX_FAILURES, Outcome, State, normalize_code
from smtpplus_milter.infra.files import FileProblem
from smtpplus_milter.infra.state import StateFile

LOGIN = "wp-site"
ADDRESS = "info@example.com"
HOUR = 3600.0
T0 = 1_700_000_000.0


def started(ttl_hours: int = 24) -> tuple[State, str]:
    state = State()
    return state, state.start_sender(LOGIN, ADDRESS, ttl_hours=ttl_hours, now=T0)


def test_code_is_random_digits_and_stored_only_hashed(tmp_path: Path) -> None:
    codes = {started()[1] for _ in range(20)}
    assert len(codes) == 20 and all(len(code) == 8 and code.isdigit() for code in codes)
    state, code = started()
    path = tmp_path / "verification.json"
    with StateFile(path).edit() as saved:
        saved.attempts.update(state.attempts)
    text = path.read_text()
    assert code not in text and format(int(code)) not in text
    (record,) = json.loads(text)["attempts"]
    assert record["digest"] and record["salt"] and record["token"] is None


@pytest.mark.parametrize(
    ("after_hours", "outcome"),
    [
        pytest.param(0, Outcome.CONFIRMED, id="at-once"),
        pytest.param(23.99, Outcome.CONFIRMED, id="just-before-expiry"),
        pytest.param(24, Outcome.EXPIRED, id="at-expiry"),
        pytest.param(100, Outcome.EXPIRED, id="long-after"),
    ],
)
def test_expiry_follows_the_clock(after_hours: float, outcome: Outcome) -> None:
    state, code = started()
    assert state.confirm(LOGIN, ADDRESS, code, now=T0 + after_hours * HOUR).outcome is outcome


def test_ttl_is_configurable() -> None:
    state, code = started(ttl_hours=1)
    assert state.confirm(LOGIN, ADDRESS, code, now=T0 + 1.5 * HOUR).outcome is Outcome.EXPIRED


def test_code_works_once() -> None:
    state, code = started()
    assert state.confirm(LOGIN, ADDRESS, code, now=T0).outcome is Outcome.CONFIRMED
    assert state.confirm(LOGIN, ADDRESS, code, now=T0).outcome is Outcome.NOT_STARTED


def test_code_with_spaces_and_dashes_is_accepted() -> None:
    state, code = started()
    assert normalize_code(f" {code[:4]}-{code[4:]} ") == code
    assert state.confirm(LOGIN, ADDRESS, f"{code[:4]} {code[4:]}", now=T0).outcome is Outcome.CONFIRMED


def test_code_is_bound_to_user_and_address() -> None:
    state, code = started()
    attempt = state.get(LOGIN, "sender", ADDRESS)
    assert attempt is not None
    # The same salt and digest filed under another user or address do not accept the code.
    for login, address in (("other-user", ADDRESS), (LOGIN, "sales@example.com")):
        copy = dataclasses.replace(attempt, login=login, entry=address)
        state.attempts[copy.key] = copy
        assert state.confirm(login, address, code, now=T0).outcome is Outcome.WRONG
    assert state.confirm(LOGIN, ADDRESS, code, now=T0).outcome is Outcome.CONFIRMED


def test_five_wrong_codes_void_the_attempt() -> None:
    state, code = started()
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    for tries_left in range(MAX_FAILURES - 1, 0, -1):
        result = state.confirm(LOGIN, ADDRESS, wrong, now=T0)
        assert (result.outcome, result.tries_left) == (Outcome.WRONG, tries_left)
    assert state.confirm(LOGIN, ADDRESS, wrong, now=T0).outcome is Outcome.VOIDED
    # The right code no longer helps, and the record says why.
    assert state.confirm(LOGIN, ADDRESS, code, now=T0).outcome is Outcome.VOIDED
    attempt = state.get(LOGIN, "sender", ADDRESS)
    assert attempt is not None and attempt.voided and attempt.digest is None
    assert "voided" in verification.describe(attempt, T0)


def test_new_code_replaces_a_voided_or_old_one_and_keeps_the_age() -> None:
    state, first = started()
    second = state.start_sender(LOGIN, ADDRESS, ttl_hours=24, now=T0 + HOUR)
    if first != second:
        assert state.confirm(LOGIN, ADDRESS, first, now=T0 + HOUR).outcome is Outcome.WRONG
    attempt = state.get(LOGIN, "sender", ADDRESS)
    assert attempt is not None and attempt.started == T0 and attempt.expires == T0 + 25 * HOUR
    assert state.confirm(LOGIN, ADDRESS, second, now=T0 + 2 * HOUR).outcome is Outcome.CONFIRMED


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(verification.hmac, "compare_digest", spy)
    state, code = started()
    state.confirm(LOGIN, ADDRESS, "00000000" if code != "00000000" else "11111111", now=T0)
    state.confirm(LOGIN, ADDRESS, code, now=T0)
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_domain_token_is_stable_until_dropped_and_matches_only_itself() -> None:
    state = State()
    token = state.start_domain(LOGIN, "example.com", now=T0).token
    assert token and state.start_domain(LOGIN, "example.com", now=T0 + HOUR).token == token
    assert state.token_matches(LOGIN, "example.com", f"smtpplus-verify={token}")
    assert not state.token_matches(LOGIN, "example.com", f"smtpplus-verify={token}x")
    assert not state.token_matches("other", "example.com", f"smtpplus-verify={token}")
    assert (
        verification.txt_record("example.com", token) == f'_smtpplus-verify.example.com TXT "smtpplus-verify={token}"'
    )
    state.drop(LOGIN, "domain", "example.com")
    assert state.start_domain(LOGIN, "example.com", now=T0).token != token


def test_state_file_is_0600_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "verification.json"
    with StateFile(path).edit() as state:
        state.start_sender(LOGIN, ADDRESS, ttl_hours=24, now=T0)
        state.start_domain(LOGIN, "example.com", now=T0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = StateFile(path).read()
    assert set(again.attempts) == {(LOGIN, "sender", ADDRESS), (LOGIN, "domain", "example.com")}
    # A failing edit writes nothing.
    before = path.read_text()
    with pytest.raises(RuntimeError), StateFile(path).edit() as state:
        state.drop_user(LOGIN)
        raise RuntimeError("boom")
    assert path.read_text() == before
    assert not list(tmp_path.glob(".verification.json.*.tmp"))


def test_corrupt_state_file_is_reported_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "verification.json"
    path.write_text("{not json")
    with pytest.raises(FileProblem, match="move it away"):
        StateFile(path).read()
