"""A config and a SQLite tracking store for a real ``smtpplus-milter web`` process, and its tokens.

One recorded message of user ``shop-frontend``, list ``newsletter``, to :data:`RECIPIENT` (so an
unsubscribe also counts on it); the key :data:`KEY` in ``secret`` beside the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.harness import free_port
from lab.milter_process import WebProcess
from smtpplus_milter.core.tokens import make_unsubscribe_token
from smtpplus_milter.infra.store import TrackingStore, open_store
from smtpplus_milter.infra.store.base import Suppression
from tests.support.builders import message_record, write_config

KEY = bytes(range(32))
USER = "shop-frontend"
LIST = "newsletter"
RECIPIENT = "bob@example.net"
QID = "4jdfvM0wYyzJVF1"
ONE_CLICK = b"List-Unsubscribe=One-Click"


def token(recipient: str = RECIPIENT, list_name: str = LIST, key: bytes = KEY) -> str:
    return make_unsubscribe_token(USER, list_name, recipient, key)


def web_config(directory: Path, port: int, metrics_port: int | None = None) -> Path:
    secret = directory / "secret"
    secret.write_bytes(KEY)
    secret.chmod(0o600)
    url = f"sqlite:///{directory}/t.db"
    settings = {
        "secret_file": str(secret),
        "tracking": {"store": url, "node": "relay-1", "spool_dir": str(directory / "spool")},
        "lists": {"shop": {}, LIST: {}},
        "web": {
            "listen": f"127.0.0.1:{port}",
            "metrics_listen": f"127.0.0.1:{metrics_port}" if metrics_port else None,
        },
    }
    path = write_config(directory, settings=settings)
    store = open_store(url)
    store.migrate()
    store.record_messages([message_record(QID, user=USER, list=LIST, recipients=(RECIPIENT,))])
    store.close()
    return path


def store_of(directory: Path) -> TrackingStore:
    return open_store(f"sqlite:///{directory}/t.db")


def unsubscribed(directory: Path) -> list[Suppression]:
    """The ``list:`` suppressions the store holds now."""
    store = store_of(directory)
    try:
        return [entry for entry in store.suppressions() if entry.scope.startswith("list:")]
    finally:
        store.close()


@contextmanager
def running_web(directory: Path, *, metrics: bool = False) -> Iterator[WebProcess]:
    port = free_port()
    metrics_port = free_port() if metrics else None
    process = WebProcess(
        web_config(directory, port, metrics_port), port, directory / "web.log", metrics_port=metrics_port
    )
    with process:
        yield process
