"""Driving the milter adapter the way libmilter would, through pymilter's ``Milter.testctx.TestCtx``.

``Session`` is one SMTP connection with Postfix's macros; ``RecordingCtx`` records header edits as
libmilter would pass them to Postfix. Used by tests/milter, tests/hostile and bench/callback_cpu.py,
so every caller drives the adapter through the same steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import Milter
from Milter import testctx

from smtpplus_milter.services.milter import factory_for
from smtpplus_milter.services.runtime import Runtime


class RecordingCtx(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records header edits exactly as libmilter would send them to Postfix."""

    def __init__(self) -> None:
        super().__init__()
        self.edits: list[tuple[str, str, int, str]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        if not self._body:
            raise OSError("addheader outside eom")
        self.edits.append(("add", field, idx, value))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        if not self._body:
            raise OSError("chgheader outside eom")
        self.edits.append(("change" if value else "delete", field, idx, value))


class Session:
    """One SMTP connection as libmilter would drive it, with Postfix's macros.

    *ctx_class* lets a test play an MTA or libmilter that behaves differently (refuses a reply,
    offers no macro list); *macros* sets further ``{name}`` macros, e.g. ``daemon_name``.
    """

    def __init__(
        self,
        holder: Runtime,
        login: str | None,
        queue_id: str = "4XyZ1abc",
        *,
        ctx_class: type[RecordingCtx] = RecordingCtx,
        macros: Mapping[str, str] | None = None,
    ) -> None:
        Milter.factory = factory_for(holder)
        self.ctx = ctx_class()
        if login is not None:
            self.ctx._setsymval("{auth_authen}", login)
        self.ctx._setsymval("i", queue_id)
        for name, value in (macros or {}).items():
            self.ctx._setsymval("{" + name + "}", value)
        assert self.ctx._connect() == Milter.CONTINUE

    @property
    def reply(self) -> tuple[str, ...] | None:
        return self.ctx._reply  # type: ignore[no-any-return]

    def message(
        self,
        mail_from: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        params: tuple[str, ...] = (),
        recipients: Sequence[str] = ("<rcpt@example.org>",),
    ) -> tuple[str, int]:
        """Send one message (RCPT TO each of *recipients*); return the stage that answered last and its code."""
        self.ctx._reply = None
        self.ctx.edits = []
        self.ctx._bodyreplaced = False
        rc = self.ctx._envfrom(f"<{mail_from}>" if not mail_from.startswith("<") else mail_from, *params)
        if rc != Milter.CONTINUE:
            return "envfrom", rc
        for rcpt in recipients:
            rc = self.ctx._envrcpt(rcpt)
            assert rc in (Milter.CONTINUE, Milter.NOREPLY)  # no reply: Postfix never waits for it
        rc = self.ctx._data()
        if rc != Milter.CONTINUE:
            return "data", rc
        for name, value in headers:
            rc = self.ctx._priv.header_bytes(name, value.encode("utf-8", "surrogateescape"))
            assert rc in (Milter.CONTINUE, Milter.NOREPLY)
        rc = self.ctx._eoh()
        if rc != Milter.CONTINUE:
            return "eoh", rc
        for start in range(0, len(body), 65535):
            rc = self.ctx._priv.body(body[start : start + 65535])
            assert rc in (Milter.CONTINUE, Milter.NOREPLY)
        return "eom", self.ctx._eom()

    @property
    def new_body(self) -> bytes | None:
        return self.ctx._body.getvalue() if self.ctx._bodyreplaced else None

    def close(self) -> None:
        self.ctx._close()
