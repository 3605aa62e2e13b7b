"""The tracking store: messages the milter accepted, their recipients and every delivery attempt.

``base`` holds the values and the interface; ``sql`` the logic both SQL backends share; one module
per backend (``sqlite``, ``postgres``); ``migrations/<dialect>/NNNN_name.sql`` the schema's versions.
:func:`open_store` picks the backend from the store's URL.
"""

from __future__ import annotations

from smtpplus_milter.infra.store.base import StoreProblem, TrackingStore


def open_store(url: str) -> TrackingStore:
    """The store named by ``sqlite:////abs/path.db`` or ``postgresql://...`` (``postgres://`` too)."""
    if url.startswith("sqlite:"):
        from smtpplus_milter.infra.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        from smtpplus_milter.infra.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreProblem(f"tracking store {url!r}: expected sqlite:////absolute/path.db or postgresql://user@host/db")


__all__ = ["StoreProblem", "TrackingStore", "open_store"]
