"""A private redis-server for the sending-limit store tests (lab/redis.py), removed afterwards.

The server runs in a temporary directory on a free loopback port and is stopped (killed if it
hangs) when the ``with`` block ends, also when the test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lab.redis import REDIS_SERVER, RedisServer


def available() -> str | None:
    """Why a private server cannot be started here, or None if it can."""
    if not Path(REDIS_SERVER).exists():
        return f"{REDIS_SERVER} is missing: install Debian's redis-server package (deploy/bootstrap.sh does)"
    return None


@contextlib.contextmanager
def private_redis(*, password: str | None = None) -> Iterator[RedisServer]:
    workdir = Path(tempfile.mkdtemp(prefix="smtpplus-redis-"))
    try:
        with RedisServer(workdir, password=password) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
