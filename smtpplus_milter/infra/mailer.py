"""Handing one message to an SMTP server (plain SMTP, no AUTH), e.g. the verification code mail.

The one place that speaks SMTP (the alert e-mail sink uses it too); a failure of any kind (connection,
refusal, timeout) becomes :class:`MailProblem`, whose text is the server's or the socket's.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.message import EmailMessage


class MailProblem(Exception):
    """The message could not be handed over; the text says why (as smtplib or the socket said it)."""


def submit(
    host: str, port: int, message: EmailMessage, *, sender: str, recipients: Sequence[str], timeout: float
) -> None:
    """Submit *message* from *sender* to *recipients* through *host*:*port*."""
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as client:
            client.send_message(message, from_addr=sender, to_addrs=list(recipients))
    except (OSError, smtplib.SMTPException) as exc:
        raise MailProblem(str(exc)) from None
