"""The List-Unsubscribe headers of one recipient's copy of a list message (pure).

A list with ``lists.NAME.unsubscribe`` sends every recipient a ``List-Unsubscribe`` header naming
a link with their own token (``{url}/{TOKEN}``), and with ``mailto: true`` also the address
``u+MAILTOKEN@<bounces.return_path>`` (a short token naming the message and the recipient, since a
local part has at most 64 octets); plus ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``, which
tells a receiver it may unsubscribe with one POST of that body to the link (RFC 8058), without a
person opening the page. The token (core/tokens.py) carries the user, the list and the recipient,
signed with the relay's key, so whoever gets the request can act without a database.

Who adds them (docs/unsubscribe.md): the milter for a message with one recipient; the fanout
filter, per copy, for a message with several (each recipient needs their own token, so their own
copy). Client-supplied copies of these headers are deleted first: only ours may leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpplus_milter.core.tokens import (
    UNSUBSCRIBE_PREFIX,
    fits_local_part,
    make_mail_unsubscribe_token,
    make_unsubscribe_token,
)

ONE_CLICK = "List-Unsubscribe=One-Click"
# Replaced whenever a client sent them on a list with unsubscribe.
HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post")
LIST_ID = "List-Id"
MAILTO_PREFIX = UNSUBSCRIBE_PREFIX


def list_headers(
    url: str, mailto_domain: str | None, token: str, mail_token: str | None = None
) -> tuple[tuple[str, str], ...]:
    """``List-Unsubscribe`` (the link, then the mailto: address) and ``List-Unsubscribe-Post``.

    *url* is ``lists.NAME.unsubscribe.url`` (a trailing slash is dropped: one slash before the
    token). The mailto: form is given only when *mailto_domain* and *mail_token* are set and
    ``u+MAILTOKEN`` fits the 64 octets a local part may have (RFC 5321): a longer one could be
    refused by the recipient's own provider on the way back, while the link always works.
    """
    links = [f"<{url.rstrip('/')}/{token}>"]
    if mailto_domain is not None and mail_token is not None and fits_local_part(MAILTO_PREFIX, mail_token):
        links.append(f"<mailto:{MAILTO_PREFIX}{mail_token}@{mailto_domain}>")
    return (("List-Unsubscribe", ", ".join(links)), ("List-Unsubscribe-Post", ONE_CLICK))


def list_id_value(list_id: str) -> str:
    """The ``List-Id`` header's value for ``lists.NAME.list_id`` (RFC 2919: the id in angle brackets)."""
    return f"<{list_id}>"


@dataclass(frozen=True)
class ListUnsubscribe:
    """One list's unsubscribe settings as values: the link's base, the mailto: domain and the key.

    *mailto_domain* is ``bounces.return_path`` when the list has ``mailto: true``, else None.
    """

    url: str
    mailto_domain: str | None
    key: bytes = field(repr=False)
    node: str = ""  # tracking.node: the mailto: token names the message by node and queue id

    def headers(
        self, user: str, list_name: str, recipient: str, queue_id: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The two headers for *recipient* of *user*'s message *queue_id* to *list_name*.

        Without a queue id there is no mailto: form (the link does not need one). ValueError if
        the three do not fit a token (an address of hundreds of bytes): the caller sends the
        message without them rather than not at all.
        """
        token = make_unsubscribe_token(user, list_name, recipient.lower(), self.key)
        mail_token = None
        if self.mailto_domain is not None and queue_id:
            mail_token = make_mail_unsubscribe_token(self.node, queue_id, recipient, self.key)
        return list_headers(self.url, self.mailto_domain, token, mail_token)
