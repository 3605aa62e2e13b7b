"""``verification.json``, the state of verification attempts, on disk.

Read and written only under its lock (:func:`smtpplus_milter.infra.files.locked`), replaced
atomically, mode 0600. What the state means is :mod:`smtpplus_milter.core.verification`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from smtpplus_milter.core.verification import State, StateProblem
from smtpplus_milter.infra.files import FileProblem, Ownership, locked, read_text, replace_atomically


class StateFile:
    """``verification.json``: read and written only under its lock, replaced atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> State:
        return _parse(read_text(self.path, missing_ok=True), self.path)

    @contextlib.contextmanager
    def edit(self) -> Iterator[State]:
        """Lock, read, let the caller change the state, write it back if it changed.

        An exception in the body writes nothing.
        """
        with locked(self.path):
            old = read_text(self.path, missing_ok=True)
            state = _parse(old, self.path)
            yield state
            new = state.render()
            if new != (old or State().render()):
                replace_atomically(
                    self.path, new.encode("utf-8"), new_file=Ownership(0o600, os.geteuid(), os.getegid())
                )


def _parse(text: str | None, path: Path) -> State:
    try:
        return State.parse(text, path)
    except StateProblem as exc:
        raise FileProblem(str(exc)) from None
