"""The class of a failed delivery attempt: hard, soft or blocked (values in, values out).

A failure's class decides what the relay does about the address, and only the enhanced status code
(RFC 3463, ``class.subject.detail``) decides the class; the remote reply's text is kept for people
but never read here, since receivers word the same refusal in a hundred ways.

* **hard**: the address does not exist or is disabled: 5.1.0-5.1.4, 5.1.6, 5.1.10 (a bad, unknown
  or moved mailbox, a null MX) and 5.2.1 (mailbox disabled). Sending again will fail again.
* **soft**: it may work later: every 4.x.x, 5.2.2 (mailbox full), 5.3.4 (message too big for that
  system), every 5.4.x (routing and network trouble, e.g. a host not found), and a message that
  expired in the queue. A permanent code this table does not name (5.0.0, 5.5.x, 5.6.x...) is soft
  too: it says the message failed, not that the address is dead, so it must never suppress an
  address on its own.
* **blocked**: 5.7.x, the receiver refused for policy, reputation or spam. It says something about
  the relay or the content, not the address, so it is counted and reported, never suppressed.

A delivery (status ``sent``) has no class (``None``).
"""

from __future__ import annotations

import re

HARD = "hard"
SOFT = "soft"
BLOCKED = "blocked"
CLASSES = (HARD, SOFT, BLOCKED)

# (subject, detail) of the permanent codes that mean "this address is gone".
_HARD_5 = frozenset({(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 6), (1, 10), (2, 1)})
_CODE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")


def classify(status: str, dsn: str | None) -> str | None:
    """The class of one attempt from its status (sent, deferred, bounced, expired) and DSN code."""
    if status == "sent":
        return None
    if status == "expired":
        return SOFT
    match = _CODE.match(dsn or "")
    if match is None:
        # No usable code: a deferral is soft by nature; an unexplained bounce must not suppress.
        return SOFT
    first, subject, detail = (int(part) for part in match.groups())
    if first != 5:
        return SOFT  # 4.x.x, and a 2.x.x on a failure line (a Postfix oddity) is no reason to act
    if subject == 7:
        return BLOCKED
    if (subject, detail) in _HARD_5:
        return HARD
    # 5.2.2, 5.3.4, 5.4.x and the permanent codes the table does not name.
    return SOFT
