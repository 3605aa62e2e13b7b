"""Milter down: the client gets a 4xx and nothing is delivered; back up, the retry goes through once."""

from __future__ import annotations

import os
import time

import pytest

from lab.stack import Stack, make_message

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="private Postfix instances need root"),
]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_milter_down_tempfails_then_retry_delivered_once(how: str) -> None:
    with Stack() as stack:
        assert stack.milter is not None and stack.postfix is not None
        message = make_message(from_="info@yourcompany.com", subject=f"retry-{how}")
        if how == "stop":
            stack.milter.stop()
        else:
            stack.milter.kill()
        down = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com")
        assert not down.accepted
        # Postfix answers 454 4.3.0 at STARTTLS on the submission port when no milter answers.
        assert 400 <= down.code < 500, down
        time.sleep(1.0)
        assert stack.sink.messages == []
        assert stack.postfix.queue_ids() == []

        stack.milter.start()
        again = stack.send(message, login="shop-frontend", mail_from="info@yourcompany.com")
        assert again.accepted, again
        stack.sink.wait_for(1, timeout=30)
        time.sleep(1.0)
        assert [m.data.count(f"Subject: retry-{how}".encode()) for m in stack.sink.messages] == [1]
        assert stack.postfix.queue_ids() == []
