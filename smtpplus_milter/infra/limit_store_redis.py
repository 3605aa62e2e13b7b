"""The shared sending-limit store: the counters on a Redis server, for several relay hosts.

Every :meth:`RedisLimitStore.admit` is ONE round trip: a Lua script, run atomically by the server,
that does exactly the integer arithmetic of :func:`smtpplus_milter.core.limits.admit` (check,
then count if allowed) and remembers the answer per token, reading the clock with Redis's own
``TIME`` so that every relay host judges by the same clock. redis-py's ``register_script`` sends
``EVALSHA`` and, after a Redis restart (``NOSCRIPT``), loads the script again by itself.

Keys (the ``{login}`` braces are a Redis Cluster hash tag: a user's keys stay on one node):

* ``smtpplus:limits:{LOGIN}:usage``: a hash ``tat day rcpt bytes``; it expires two days and an hour
  after the last count, when neither the hour's rate nor the day's counters can matter any more.
* ``smtpplus:limits:{LOGIN}:answer:TOKEN``: the first answer for a queue id (verdict, what the
  message counted, its interval and day, whether it was refunded), kept for TOKEN_SECONDS:
  Postfix may send the same policy request twice and the second must count nothing.

A login or token with characters outside a small safe set is percent-encoded in the key, so no
login can forge another's key (e.g. one containing ``}:answer:``).

Every redis-py error becomes :class:`LimitStoreError` naming the server (never the URL's password).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from smtpplus_milter.core.limits import LIMIT_NAMES, LimitName, Limits, Message, Usage, Verdict, micros
from smtpplus_milter.infra.limit_store import TOKEN_SECONDS, LimitStore, LimitStoreError, MemoryLimitStore

# The usage hash outlives both windows: the TAT is at most an hour ahead of the last count, and
# the day's counters only matter on that UTC day.
USAGE_SECONDS = 2 * 86_400 + 3600
# Lua numbers are doubles: integers are exact up to 2**53 (about 9.0e15). Limits go up to 10**15
# (config/ says so); the script's largest values are a TAT (now, about 1.8e15, plus at most one
# hour's tolerance = interval * messages_per_hour <= 3.6e9 + 10**15) plus one interval, and a day
# counter (<= 10**15) plus one message's recipients or bytes: all well below 2**53.
MAX_LIMIT = 10**15
# A message's own counts are capped before they reach the script: anything above every limit is
# refused the same way, and the cap keeps the sums exact.
_MAX_ASKED = 2 * MAX_LIMIT

_SAFE = "@.-_+="

# ARGV: 1 messages_per_hour, 2 recipients_per_day, 3 bytes_per_day, 4 interval_us,
# 5 message recipients, 6 message bytes, 7 now_us ("" = the server's TIME), 8 answer ttl s,
# 9 usage ttl s. recipients_per_message is decided in Python before the script (it needs no state,
# and a refused message counts nothing) -- but the answer must still be remembered, so it is
# passed as 10 (1: over the per-message limit).
# Returns {limit or "", retry_after, permanent (0/1)}, all as strings (exact integers).
_ADMIT = r"""
local DAY = 86400000000
local function fmt(n) return string.format('%.0f', n) end
local function floordiv(a, b) return (a - math.fmod(a, b)) / b end  -- a >= 0: exact
local function secs_up(us) return floordiv(us + 999999, 1000000) end

local answer = redis.call('HMGET', KEYS[2], 'limit', 'retry', 'permanent')
if answer[2] then
  return {answer[1], answer[2], answer[3]}
end

local mph = tonumber(ARGV[1])
local rpd = tonumber(ARGV[2])
local bpd = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
local rcpt = tonumber(ARGV[5])
local size = tonumber(ARGV[6])
local now
if ARGV[7] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[7])
end
local today = floordiv(now, DAY)

local u = redis.call('HMGET', KEYS[1], 'tat', 'day', 'rcpt', 'bytes')
local tat = tonumber(u[1]) or 0
local day = tonumber(u[2]) or 0
local used_rcpt = tonumber(u[3]) or 0
local used_bytes = tonumber(u[4]) or 0
if day ~= today then used_rcpt = 0; used_bytes = 0 end

local best_limit, best_retry, best_perm = '', 0, 0
local function refuse(name, retry, perm)
  -- The longest wait names the limit, a permanent refusal first; a tie keeps the earlier name.
  if best_limit == '' or perm > best_perm or (perm == best_perm and retry > best_retry) then
    best_limit, best_retry, best_perm = name, retry, perm
  end
end

if ARGV[10] == '1' then
  best_limit, best_retry, best_perm = 'recipients_per_message', 0, 1
else
  if interval == 0 then
    refuse('messages_per_hour', 3600, 1)
  else
    local tolerance = interval * mph
    local new_tat = math.max(tat, now) + interval
    if new_tat - now > tolerance then
      refuse('messages_per_hour', math.max(1, secs_up(new_tat - tolerance - now)), 0)
    end
  end
  local until_midnight = math.max(1, secs_up((today + 1) * DAY - now))
  if used_rcpt + rcpt > rpd then
    refuse('recipients_per_day', until_midnight, (rcpt > rpd) and 1 or 0)
  end
  if used_bytes + size > bpd then
    refuse('bytes_per_day', until_midnight, (size > bpd) and 1 or 0)
  end
end

if best_limit == '' then
  local new_tat = tat
  if interval > 0 then new_tat = math.max(tat, now) + interval end
  redis.call('HSET', KEYS[1], 'tat', fmt(new_tat), 'day', fmt(today),
    'rcpt', fmt(used_rcpt + rcpt), 'bytes', fmt(used_bytes + size))
  redis.call('EXPIRE', KEYS[1], ARGV[9])
end
redis.call('HSET', KEYS[2], 'limit', best_limit, 'retry', fmt(best_retry), 'permanent', fmt(best_perm),
  'rcpt', fmt(rcpt), 'bytes', fmt(size), 'interval', fmt(interval), 'day', fmt(today), 'refunded', '0')
redis.call('EXPIRE', KEYS[2], ARGV[8])
return {best_limit, fmt(best_retry), fmt(best_perm)}
"""

# Takes back an allowed, not yet refunded answer exactly as core.limits.uncount does. Returns 1 or 0.
_REFUND = r"""
local a = redis.call('HMGET', KEYS[2], 'limit', 'refunded', 'rcpt', 'bytes', 'interval', 'day')
if not a[2] or a[1] ~= '' or a[2] ~= '0' then return 0 end
redis.call('HSET', KEYS[2], 'refunded', '1')
local u = redis.call('HMGET', KEYS[1], 'tat', 'day', 'rcpt', 'bytes')
if not u[1] then return 1 end
local function fmt(n) return string.format('%.0f', n) end
local tat = math.max(0, tonumber(u[1]) - tonumber(a[5]))
redis.call('HSET', KEYS[1], 'tat', fmt(tat))
if u[2] == a[6] then
  redis.call('HSET', KEYS[1], 'rcpt', fmt(math.max(0, tonumber(u[3]) - tonumber(a[3]))),
    'bytes', fmt(math.max(0, tonumber(u[4]) - tonumber(a[4]))))
end
return 1
"""


def usage_key(key: str) -> str:
    return f"smtpplus:limits:{{{quote(key, safe=_SAFE)}}}:usage"


def answer_key(key: str, token: str) -> str:
    return f"smtpplus:limits:{{{quote(key, safe=_SAFE)}}}:answer:{quote(token, safe=_SAFE)}"


def server_name(url: str) -> str:
    """The URL without its user and password: what an error message may show."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path}"


class RedisLimitStore:
    """``sending_limits.store: redis://...``: the counters on one Redis server, shared by every host.

    *clock*: for tests only. None: the script reads the Redis server's clock and ``now`` is ignored;
    a callable (e.g. ``lambda now: now``): given ``now``, its result (seconds since the epoch) is
    sent to the script instead, so the results can be compared exactly with
    :func:`smtpplus_milter.core.limits.admit`. redis-py's client holds a connection pool shared by
    threads; connect and read timeouts are *timeout* seconds.
    """

    def __init__(self, url: str, *, timeout: float = 1.0, clock: Callable[[float], float] | None = None) -> None:
        self._url = url
        self._server = server_name(url)
        self._password = urlsplit(url).password
        self._clock = clock
        self._timeout = timeout
        # One client, with one connection of its own, per thread (the policy daemon serves each
        # Postfix connection in a thread): no pool to check a connection out of and back into on
        # every call, which cost more than the call itself (bench/policyd.py). RESP2, whose reply
        # parser is cheaper than RESP3's.
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        try:
            # The scripts are registered on a client that never connects by itself (each call names
            # the thread's client), so a Redis that is down does not stop the daemon from starting.
            registry = redis.Redis.from_url(url)
            self._admit = registry.register_script(_ADMIT)
            self._refund = registry.register_script(_REFUND)
        except (redis.exceptions.RedisError, ValueError) as error:
            raise LimitStoreError(self._describe(error)) from None

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            # One retry, only for a broken connection (e.g. one from before a Redis restart): an
            # admit is idempotent per token, so resending it is safe. A timeout is not retried, so
            # the caller hears of a hanging server within *timeout*.
            client = redis.Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
                retry_on_timeout=False,
                single_connection_client=True,
                protocol=2,
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(weakref.ref(client))
        return client

    def _describe(self, error: Exception) -> str:
        text = str(error) or type(error).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"sending-limit store {self._server}: {text}"

    def admit(self, key: str, limits: Limits, message: Message, token: str, now: float) -> Verdict:
        for name in LIMIT_NAMES:
            value = getattr(limits, name)
            if value > MAX_LIMIT:
                raise ValueError(f"{name} {value} is above {MAX_LIMIT}, the most the Redis store counts exactly")
        now_arg = "" if self._clock is None else str(micros(self._clock(now)))
        over = message.recipients > limits.recipients_per_message
        args = (
            limits.messages_per_hour,
            limits.recipients_per_day,
            limits.bytes_per_day,
            limits.interval_us,
            min(message.recipients, _MAX_ASKED),
            min(message.bytes, _MAX_ASKED),
            now_arg,
            int(TOKEN_SECONDS),
            USAGE_SECONDS,
            1 if over else 0,
        )
        try:
            limit, retry, permanent = self._admit(
                keys=[usage_key(key), answer_key(key, token)], args=args, client=self._client()
            )
        except redis.exceptions.RedisError as error:
            raise LimitStoreError(self._describe(error)) from None
        name = limit.decode()
        if name and name not in LIMIT_NAMES:
            raise LimitStoreError(f"sending-limit store {self._server}: unknown limit {name!r} in a stored answer")
        verdict_limit: LimitName | None = next((n for n in LIMIT_NAMES if n == name), None)
        return Verdict(verdict_limit, int(retry), permanent=permanent == b"1")

    def refund(self, key: str, token: str, now: float) -> bool:
        try:
            done = self._refund(keys=[usage_key(key), answer_key(key, token)], args=(), client=self._client())
        except redis.exceptions.RedisError as error:
            raise LimitStoreError(self._describe(error)) from None
        return bool(done)

    def usage(self, key: str) -> Usage:
        """What *key* has used (for status and tests)."""
        try:
            tat, day, rcpt, size = self._client().hmget(usage_key(key), "tat", "day", "rcpt", "bytes")
        except redis.exceptions.RedisError as error:
            raise LimitStoreError(self._describe(error)) from None
        if tat is None:
            return Usage()
        return Usage(int(tat), int(day), int(rcpt), int(size))

    def health(self) -> None:
        """None when the server answers a PING; else raises :class:`LimitStoreError`."""
        try:
            self._client().ping()
        except redis.exceptions.RedisError as error:
            raise LimitStoreError(self._describe(error)) from None

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for ref in clients:
            client = ref()
            if client is not None:
                client.close()


def open_limit_store(store: str, *, timeout: float = 1.0) -> LimitStore:
    """The store ``sending_limits.store`` names: ``memory``, or a ``redis://``/``rediss://`` URL."""
    if store == "memory":
        return MemoryLimitStore()
    if store.startswith(("redis://", "rediss://")):
        return RedisLimitStore(store, timeout=timeout)
    raise ValueError(f"unknown sending-limit store {store!r}: give memory or a redis:// or rediss:// URL")
