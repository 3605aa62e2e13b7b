"""Bounce and unsubscribe tokens: fixed outputs, round trips, and every forgery refused."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpplus_milter.core.tokens import (
    MAX_LOCAL_PART,
    MAX_QUEUE_ID,
    BounceToken,
    UnsubscribeToken,
    fits_local_part,
    make_bounce_token,
    make_unsubscribe_token,
    node_tag,
    read_bounce_token,
    read_unsubscribe_token,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
LONG_ID = "4jdfvM0wYyzJVF1"

# Fixed key -> fixed token: a change of format or MAC breaks every address already in flight.
GOLDEN_BOUNCE = "ibc5f3zunjsgm5sngb3vs6l2jjlemmn4s6ssqcc5hsgcgjq"
GOLDEN_UNSUBSCRIBE = "onug64bnmzzg63tumvxgiadomv3xg3dfor2gk4qamjxweqdfpbqw24dmmuxgg33n2vcuxzpasjrwrix7"

queue_ids = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=MAX_QUEUE_ID)
nodes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
names = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1)


def test_bounce_golden() -> None:
    assert make_bounce_token("relay-1", LONG_ID, KEY) == GOLDEN_BOUNCE
    assert read_bounce_token(GOLDEN_BOUNCE, KEY) == BounceToken(node_tag("relay-1"), LONG_ID)


def test_unsubscribe_golden() -> None:
    assert make_unsubscribe_token("shop-frontend", "newsletter", "bob@example.com", KEY) == GOLDEN_UNSUBSCRIBE
    assert read_unsubscribe_token(GOLDEN_UNSUBSCRIBE, KEY) == UnsubscribeToken(
        "shop-frontend", "newsletter", "bob@example.com"
    )


@given(node=nodes, queue_id=queue_ids)
def test_bounce_round_trip_in_any_case(node: str, queue_id: str) -> None:
    token = make_bounce_token(node, queue_id, KEY)
    assert set(token) <= set(string.ascii_lowercase + "234567")
    assert fits_local_part("b+", token)
    for spelling in (token, token.upper(), token.swapcase()):
        read = read_bounce_token(spelling, KEY)
        assert read is not None and read.queue_id == queue_id and read.is_from(node)


@given(user=names, list_name=names, recipient=names)
def test_unsubscribe_round_trip_in_any_case(user: str, list_name: str, recipient: str) -> None:
    try:
        token = make_unsubscribe_token(user, list_name, recipient, KEY)
    except ValueError as exc:  # hypothesis also finds names far longer than any real ones
        assert "too long" in str(exc)
        assert len("\0".join((user, list_name, recipient)).encode()) > 500
        return
    assert read_unsubscribe_token(token.upper(), KEY) == UnsubscribeToken(user, list_name, recipient)


def test_an_unsubscribe_token_too_long_to_read_back_is_never_made() -> None:
    with pytest.raises(ValueError, match="too long"):
        make_unsubscribe_token("u", "\x80" * 400, "r@example.org", KEY)
    assert read_unsubscribe_token(make_unsubscribe_token("u", "l" * 300, "r@example.org", KEY), KEY) is not None


def test_longest_bounce_address_fits_a_local_part() -> None:
    token = make_bounce_token("n" * 64, "Q" * MAX_QUEUE_ID, KEY)
    assert len("b+" + token) <= MAX_LOCAL_PART
    with pytest.raises(ValueError, match="not a Postfix queue id"):
        make_bounce_token("n", "Q" * (MAX_QUEUE_ID + 1), KEY)


def test_node_tag_tells_nodes_apart() -> None:
    read = read_bounce_token(make_bounce_token("relay-1", LONG_ID, KEY), KEY)
    assert read is not None and read.is_from("relay-1") and not read.is_from("relay-2")


def _flip(token: str, index: int) -> str:
    swapped = "a" if token[index] != "a" else "b"
    return token[:index] + swapped + token[index + 1 :]


BOUNCE_FORGERIES = [
    pytest.param(GOLDEN_BOUNCE, OTHER_KEY, id="wrong-key"),
    pytest.param(_flip(GOLDEN_BOUNCE, 0), KEY, id="first-char-flipped"),
    pytest.param(_flip(GOLDEN_BOUNCE, 10), KEY, id="queue-id-char-flipped"),
    pytest.param(_flip(GOLDEN_BOUNCE, len(GOLDEN_BOUNCE) - 1), KEY, id="last-char-flipped"),
    pytest.param(GOLDEN_BOUNCE[:-1], KEY, id="one-char-short"),
    pytest.param(GOLDEN_BOUNCE[:-8], KEY, id="five-bytes-short"),
    pytest.param(GOLDEN_BOUNCE + "a", KEY, id="one-char-long"),
    pytest.param(GOLDEN_BOUNCE[:20], KEY, id="truncated"),
    pytest.param("", KEY, id="empty"),
    pytest.param(GOLDEN_BOUNCE[:-1] + "1", KEY, id="not-base32"),
    pytest.param(GOLDEN_BOUNCE + "=", KEY, id="padding"),
    pytest.param("a" * 5000, KEY, id="huge"),
    # The same bytes spelled with other spare bits in the last character: one spelling only.
    pytest.param(GOLDEN_BOUNCE[:-1] + "r", KEY, id="non-canonical-last-char"),
    pytest.param(GOLDEN_UNSUBSCRIBE, KEY, id="unsubscribe-token-as-bounce"),
]


@pytest.mark.parametrize(("token", "key"), BOUNCE_FORGERIES)
def test_forged_bounce_tokens_are_refused(token: str, key: bytes) -> None:
    assert read_bounce_token(token, key) is None


@pytest.mark.parametrize(
    ("token", "key"),
    [
        pytest.param(GOLDEN_UNSUBSCRIBE, OTHER_KEY, id="wrong-key"),
        pytest.param(_flip(GOLDEN_UNSUBSCRIBE, 5), KEY, id="char-flipped"),
        pytest.param(GOLDEN_UNSUBSCRIBE[:-2], KEY, id="truncated"),
        pytest.param(GOLDEN_BOUNCE, KEY, id="bounce-token-as-unsubscribe"),
    ],
)
def test_forged_unsubscribe_tokens_are_refused(token: str, key: bytes) -> None:
    assert read_unsubscribe_token(token, key) is None


def test_every_single_character_change_is_refused() -> None:
    for index in range(len(GOLDEN_BOUNCE)):
        for char in "a2z7":
            changed = GOLDEN_BOUNCE[:index] + char + GOLDEN_BOUNCE[index + 1 :]
            if changed != GOLDEN_BOUNCE:
                assert read_bounce_token(changed, KEY) is None, changed


@pytest.mark.parametrize(
    ("call", "text"),
    [
        pytest.param(lambda: make_bounce_token("n", LONG_ID, b"short"), "at least 32", id="short-key"),
        pytest.param(lambda: make_bounce_token("n", "4jd-fv", KEY), "not a Postfix queue id", id="dash"),
        pytest.param(lambda: make_bounce_token("n", "", KEY), "not a Postfix queue id", id="empty-id"),
        pytest.param(lambda: make_bounce_token("n", "4jdé", KEY), "not a Postfix queue id", id="non-ascii"),
        pytest.param(lambda: make_unsubscribe_token("u", "", "r@x", KEY), "non-empty", id="empty-list"),
        pytest.param(lambda: make_unsubscribe_token("u\0", "l", "r@x", KEY), "no NUL", id="nul"),
        pytest.param(lambda: make_unsubscribe_token("u", "l", "r@x", b""), "at least 32", id="no-key"),
    ],
)
def test_bad_inputs_are_refused_when_making(call: object, text: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=text):
        call()


def test_fits_local_part() -> None:
    short = make_unsubscribe_token("u", "l", "r@x.example", KEY)
    long = make_unsubscribe_token("shop-frontend", "newsletter", "someone.long@example.com", KEY)
    assert fits_local_part("u+", short) and not fits_local_part("u+", long)
