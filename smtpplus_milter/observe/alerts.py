"""Alerts to operators: sinks behind one small interface, sent off the mail path.

The milter calls :meth:`AlertDispatcher.submit` from libmilter's worker threads. ``submit`` does
no I/O and never blocks or raises: it de-duplicates per (kind, user, sender) within
``alerts.dedup_seconds`` and puts the alert on one bounded queue per sink (``put_nowait``; a full
queue drops the alert and counts ``smtpplus_alerts_total{result="dropped"}``).

Each sink has its own sender thread, so a webhook that hangs delays only the webhook: every
request has a timeout, failures are retried with exponential back-off up to ``alerts.attempts``
tries (then ``result="failed"``), and while a sink waits for a retry it keeps sending newer
alerts. Memory is bounded: each sink holds at most :data:`QUEUE_SIZE` queued plus as many
waiting retries, and the de-duplication table at most :data:`DEDUP_ENTRIES` keys.

Only the standard library is used: a JSON POST (urllib), one SMTP submission (:mod:`smtpplus_milter.infra.mailer`) and a
queue per thread need nothing more, and an HTTP client library would add a dependency to the
milter process for two requests.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from types import MappingProxyType
from typing import Protocol

from smtpplus_milter.config import AlertmanagerSink, AlertsSection, EmailSink, WebhookSink
from smtpplus_milter.core.session import DISABLED_USER, DISPLAY_NAME_SPOOFING, UNAUTHORIZED_SENDER
from smtpplus_milter.infra import mailer
from smtpplus_milter.observe.log import get_logger
from smtpplus_milter.observe.metrics import Metrics

log = get_logger()

QUEUE_SIZE = 1000
DEDUP_ENTRIES = 10000
MAX_BACKOFF_SECONDS = 300.0
EMAIL_TIMEOUT = 10.0
# Alertmanager resolves an alert at endsAt unless it is sent again; a repeat after the dedup
# window extends it.
MIN_ALERT_LIFETIME = timedelta(minutes=5)
# A webhook's answer is read only to finish the request; never keep more of it.
MAX_RESPONSE_BYTES = 65536

_HOST = socket.gethostname()

RESULTS = ("sent", "failed", "dropped", "suppressed")

# A recipient complained (an ARF feedback report ingest recorded): ``sender`` holds the
# complaining recipient, ``reply`` the feedback type and who reported it.
COMPLAINT = "complaint"

# A sending limit refused a message of ``user`` (``field``: the limit; ``reply``: the 450 reply).
SENDING_LIMIT = "sending_limit"
# The sending-limit store could not answer (``reply``: what it said; ``action``: tempfail or allow).
LIMIT_STORE = "limit_store_error"

# A doctor check failed (``field``: the check; ``sender``: "CHECK SUBJECT", the de-duplication key;
# ``reply``: what was found; ``shown``: the fix).
DOCTOR_FAIL = "doctor_fail"

ALERTNAMES = MappingProxyType(
    {
        DOCTOR_FAIL: "SMTPPlusDoctorFail",
        SENDING_LIMIT: "SMTPPlusSendingLimitReached",
        LIMIT_STORE: "SMTPPlusLimitStoreUnavailable",
        UNAUTHORIZED_SENDER: "SMTPPlusUnauthorizedSender",
        DISABLED_USER: "SMTPPlusDisabledUserAttempt",
        DISPLAY_NAME_SPOOFING: "SMTPPlusDisplayNameSpoofing",
        COMPLAINT: "SMTPPlusComplaint",
    }
)


@dataclass(frozen=True)
class Alert:
    """One thing an operator should know about (a :class:`~smtpplus_milter.core.session.Notice`, sent)."""

    kind: str  # unauthorized_sender | disabled_user | display_name_spoofing
    user: str
    sender: str
    field: str  # envelope_from | header_from | header_sender, comma-joined when several
    mode: str  # block | alert (authorization.mode at the time)
    action: str  # rejected | delivered
    reply: str  # the SMTP reply the client got, or "" when the message was delivered
    queue_id: str | None
    at: float = dataclasses.field(default_factory=time.time)  # wall clock: becomes startsAt
    host: str = dataclasses.field(default_factory=lambda: _HOST)
    # display_name_spoofing: the other address the display name or comment shows.
    shown: str = ""

    @property
    def alertname(self) -> str:
        return ALERTNAMES.get(self.kind, "SMTPPlusAlert")

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.user.lower(), self.sender.lower())

    @property
    def summary(self) -> str:
        if self.kind == DOCTOR_FAIL:
            return f"doctor: {self.sender} fails: {self.reply}"
        if self.kind == SENDING_LIMIT:
            return f"SMTP+ user {self.user} reached sending limit {self.field}: {self.reply}"
        if self.kind == LIMIT_STORE:
            verb = "mail is deferred" if self.action == "tempfail" else "mail goes out uncounted"
            return f"the sending-limit store cannot be reached ({self.reply}); {verb} (on_store_error: {self.action})"
        if self.kind == COMPLAINT:
            return f"{self.sender} complained about mail of SMTP+ user {self.user} ({self.reply})"
        if self.kind == DISABLED_USER:
            return f"disabled SMTP+ user {self.user} tried to send as {self.sender or '<>'}"
        if self.kind == DISPLAY_NAME_SPOOFING:
            return (
                f"SMTP+ user {self.user} sent as {self.sender} ({self.field}) with another address "
                f"in its display name or comment: {self.shown}; {self.action}"
            )
        verb = "refused" if self.action == "rejected" else "delivered anyway (alert mode)"
        return f"SMTP+ user {self.user} used unauthorized sender {self.sender} ({self.field}); {verb}"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["alertname"] = self.alertname
        data["summary"] = self.summary
        data["time"] = datetime.fromtimestamp(self.at, UTC).isoformat()
        del data["at"]
        return data


class AlertSink(Protocol):
    """Sends one alert or raises; bounds its own time with a timeout."""

    name: str

    def send(self, alert: Alert) -> None: ...


class SinkError(Exception):
    """A sink answered, but not with success."""


def _post_json(url: str, payload: object, timeout: float) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "smtpplus-milter"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(MAX_RESPONSE_BYTES)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise SinkError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    if not 200 <= status < 300:
        raise SinkError(f"{url} answered HTTP {status}")


class Webhook:
    """POST the alert as one JSON object."""

    name = "webhook"

    def __init__(self, config: WebhookSink) -> None:
        self.url = config.url
        self.timeout = config.timeout

    def send(self, alert: Alert) -> None:
        _post_json(self.url, alert.as_dict(), self.timeout)


class Alertmanager:
    """``POST {url}/api/v2/alerts`` with a list of one alert.

    Labels identify the alert (Alertmanager groups and de-duplicates by them, also across relay
    hosts that share one Alertmanager), so nothing per message or per host is a label; those are
    annotations.
    """

    name = "alertmanager"

    def __init__(self, config: AlertmanagerSink, lifetime: timedelta = MIN_ALERT_LIFETIME) -> None:
        self.url = config.url.rstrip("/") + "/api/v2/alerts"
        self.timeout = config.timeout
        self.lifetime = lifetime

    def payload(self, alert: Alert) -> list[dict[str, object]]:
        starts = datetime.fromtimestamp(alert.at, UTC)
        labels = {"alertname": alert.alertname, "user": alert.user, "sender": alert.sender or "<>"}
        if alert.kind == COMPLAINT:
            labels = {"alertname": alert.alertname, "user": alert.user, "recipient": alert.sender}
        if alert.kind == SENDING_LIMIT:  # sender holds the limit's name (one alert per user and limit)
            labels = {"alertname": alert.alertname, "user": alert.user, "limit": alert.sender}
        if alert.kind == LIMIT_STORE:
            labels = {"alertname": alert.alertname}
        if alert.kind == DOCTOR_FAIL:  # one alert per check and subject, whichever host runs the doctor
            check, _, subject = alert.sender.partition(" ")
            labels = {"alertname": alert.alertname, "check": check, "subject": subject}
        if alert.kind == UNAUTHORIZED_SENDER:
            labels["mode"] = alert.mode
        if alert.kind == DOCTOR_FAIL:
            description = f"{alert.reply}; fix: {alert.shown}" if alert.shown else alert.reply
        elif alert.kind == DISPLAY_NAME_SPOOFING:
            description = f"{alert.sender} is authorized; its display name or comment shows {alert.shown}"
        else:
            description = alert.reply or "delivered (authorization.mode: alert)"
        annotations = {
            "summary": alert.summary,
            "description": description,
            "field": alert.field,
            "action": alert.action,
            "queue_id": alert.queue_id or "",
            "host": alert.host,
        }
        if alert.shown:
            annotations["shown"] = alert.shown
        return [
            {
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts.isoformat(),
                "endsAt": (starts + self.lifetime).isoformat(),
            }
        ]

    def send(self, alert: Alert) -> None:
        _post_json(self.url, self.payload(alert), self.timeout)


class Email:
    """One plain SMTP submission to ``alerts.email.smtp``.

    That port must not run this milter (a Postfix listener without smtpd_milters), or an alert
    about a sender could itself be judged, refused and alerted about.
    """

    name = "email"

    def __init__(self, config: EmailSink, timeout: float = EMAIL_TIMEOUT) -> None:
        self.host, self.port = config.smtp.host, config.smtp.port
        self.sender = config.from_
        self.recipients = list(config.to)
        self.timeout = timeout

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage(policy=SMTP)
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = f"[SMTP+] {alert.summary}"
        message["Date"] = format_datetime(datetime.fromtimestamp(alert.at, UTC))
        message["Message-ID"] = make_msgid(domain=alert.host or None)
        message["Auto-Submitted"] = "auto-generated"
        lines = [
            alert.summary,
            "",
            f"alert:    {alert.alertname}",
            f"user:     {alert.user}",
            f"sender:   {alert.sender or '<>'}",
            f"field:    {alert.field}",
            *([f"shown:    {alert.shown}"] if alert.shown else []),
            f"mode:     {alert.mode}",
            f"action:   {alert.action}",
            f"reply:    {alert.reply or '-'}",
            f"queue id: {alert.queue_id or '-'}",
            f"host:     {alert.host}",
            f"time:     {datetime.fromtimestamp(alert.at, UTC).isoformat()}",
        ]
        message.set_content("\n".join(lines) + "\n")
        return message

    def send(self, alert: Alert) -> None:
        mailer.submit(
            self.host,
            self.port,
            self.message(alert),
            sender=self.sender,
            recipients=self.recipients,
            timeout=self.timeout,
        )


def sinks_from(section: AlertsSection) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    if section.webhook is not None:
        sinks.append(Webhook(section.webhook))
    if section.alertmanager is not None:
        lifetime = max(MIN_ALERT_LIFETIME, timedelta(seconds=section.dedup_seconds))
        sinks.append(Alertmanager(section.alertmanager, lifetime))
    if section.email is not None:
        sinks.append(Email(section.email))
    return sinks


@dataclass(order=True)
class _Retry:
    due: float
    order: int
    alert: Alert = dataclasses.field(compare=False)
    attempt: int = dataclasses.field(compare=False)


_STOP = object()


class SinkWorker:
    """One sink's bounded queue and its sender thread (daemon: never holds the process up)."""

    def __init__(
        self,
        sink: AlertSink,
        *,
        attempts: int,
        backoff: float,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.counter = (metrics or Metrics()).alerts
        self.name = sink.name
        self.attempts = attempts
        self.backoff = backoff
        self.queue_size = queue_size
        self.clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._retries: list[_Retry] = []
        self._order = itertools.count()
        self._deadline: float | None = None  # set by stop(): last moment to keep trying
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)
        for result in RESULTS:  # every series exists from the start, so rate() and alerts see 0
            self.counter.labels(sink=self.name, result=result)
        self._thread.start()

    def offer(self, alert: Alert) -> None:
        """Never blocks: a full queue drops the alert (and counts it)."""
        if self._deadline is not None:
            self.counter.labels(sink=self.name, result="dropped").inc()
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.counter.labels(sink=self.name, result="dropped").inc()

    def stop(self, timeout: float) -> None:
        """Stop taking alerts; send what is queued (one try each) until *timeout*, then give up."""
        if self._deadline is None:
            self._deadline = self.clock() + timeout
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the thread sees the deadline instead

    def join(self, timeout: float) -> bool:
        self._thread.join(max(timeout, 0))
        return not self._thread.is_alive()

    def backoff_for(self, attempt: int) -> float:
        """Delay after the *attempt*-th failed try: backoff, 2x, 4x ... capped."""
        return float(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))

    def _run(self) -> None:
        while True:
            stopping = self._deadline is not None
            if self._deadline is not None and self.clock() >= self._deadline:
                self._abandon()
                return
            # While stopping, waiting retries get their last try at once.
            wait: float | None = None
            if self._retries:
                wait = 0.0 if stopping else max(0.0, self._retries[0].due - self.clock())
            if self._deadline is not None:
                remaining = max(0.0, self._deadline - self.clock())
                wait = remaining if wait is None else min(wait, remaining)
            try:
                item = self._queue.get(timeout=wait) if wait is None or wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if isinstance(item, Alert):
                self._attempt(item, 1)
            while self._retries and (self._deadline is not None or self._retries[0].due <= self.clock()):
                retry = heapq.heappop(self._retries)
                self._attempt(retry.alert, retry.attempt)
            if self._deadline is not None and not self._retries and self._queue.empty():
                return

    def _attempt(self, alert: Alert, attempt: int) -> None:
        try:
            self.sink.send(alert)
        except Exception as exc:  # every failure of a sink is retried or counted, never raised
            final = attempt >= self.attempts or self._deadline is not None
            log.warning(
                "alert_send_failed",
                sink=self.name,
                alertname=alert.alertname,
                user=alert.user,
                sender=alert.sender,
                attempt=attempt,
                error=str(exc) or type(exc).__name__,
                gave_up=final,
            )
            if final:
                self.counter.labels(sink=self.name, result="failed").inc()
            elif len(self._retries) >= self.queue_size:
                self.counter.labels(sink=self.name, result="dropped").inc()
            else:
                due = self.clock() + self.backoff_for(attempt)
                heapq.heappush(self._retries, _Retry(due, next(self._order), alert, attempt + 1))
            return
        self.counter.labels(sink=self.name, result="sent").inc()
        log.info("alert_sent", sink=self.name, alertname=alert.alertname, user=alert.user, sender=alert.sender)

    def _abandon(self) -> None:
        lost = len(self._retries)
        self._retries.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            lost += isinstance(item, Alert)
        if lost:
            self.counter.labels(sink=self.name, result="failed").inc(lost)
            log.warning("alerts_abandoned", sink=self.name, count=lost, reason="stopping")


def _signature(section: AlertsSection) -> tuple[object, ...]:
    return (section.webhook, section.alertmanager, section.email, section.attempts, section.backoff_seconds)


class AlertDispatcher:
    """De-duplicates alerts and hands them to one :class:`SinkWorker` per configured sink."""

    def __init__(
        self,
        sinks: Sequence[AlertSink] = (),
        *,
        dedup_seconds: float = 300,
        attempts: int = 5,
        backoff: float = 2.0,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        # smtpplus_alerts_total lives here; without one given, a private set (tests).
        self.metrics = metrics = metrics or Metrics()
        self.dedup_seconds = dedup_seconds
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._signature: tuple[object, ...] | None = None
        self._stopped = False
        self.workers = [
            SinkWorker(sink, attempts=attempts, backoff=backoff, queue_size=queue_size, clock=clock, metrics=metrics)
            for sink in sinks
        ]

    @classmethod
    def from_config(cls, section: AlertsSection, metrics: Metrics | None = None) -> AlertDispatcher:
        """A dispatcher for the config's ``alerts:`` section."""
        dispatcher = cls(
            sinks_from(section),
            dedup_seconds=section.dedup_seconds,
            attempts=section.attempts,
            backoff=section.backoff_seconds,
            metrics=metrics,
        )
        dispatcher._signature = _signature(section)
        return dispatcher

    @property
    def sink_names(self) -> list[str]:
        return [worker.name for worker in self.workers]

    def submit(self, alert: Alert) -> None:
        """Queue *alert* for every sink. O(1), no I/O; never blocks, never raises."""
        try:
            with self._lock:
                workers = self.workers
                if not workers or self._stopped:
                    return
                if self._duplicate(alert.key):
                    for worker in workers:
                        self.metrics.alerts.labels(sink=worker.name, result="suppressed").inc()
                    return
            for worker in workers:
                worker.offer(alert)
        except Exception:  # an alert is never worth a message: log and carry on
            log.exception("alert_submit_failed")

    def _duplicate(self, key: tuple[str, str, str]) -> bool:
        if self.dedup_seconds <= 0:
            return False
        now = self.clock()
        # Keys are in order of when they were (re)started, so expired ones are at the front.
        while self._seen:
            first_key, first_at = next(iter(self._seen.items()))
            if now - first_at < self.dedup_seconds:
                break
            del self._seen[first_key]
        if key in self._seen:
            return True
        self._seen[key] = now
        if len(self._seen) > DEDUP_ENTRIES:
            self._seen.popitem(last=False)
        return False

    def reconfigure(self, section: AlertsSection) -> None:
        """Apply a reloaded ``alerts:`` section; unchanged sinks keep their queues and retries."""
        with self._lock:
            self.dedup_seconds = section.dedup_seconds
            signature = _signature(section)
            if signature == self._signature or self._stopped:
                return
            old, self.workers = (
                self.workers,
                [
                    SinkWorker(
                        sink,
                        attempts=section.attempts,
                        backoff=section.backoff_seconds,
                        clock=self.clock,
                        metrics=self.metrics,
                    )
                    for sink in sinks_from(section)
                ],
            )
            self._signature = signature
        # Old workers finish what they hold for a short while in their own threads; a reload
        # never waits for a slow sink.
        for worker in old:
            worker.stop(timeout=5.0)
        log.info("alerts_reconfigured", sinks=self.sink_names)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking alerts; let the sinks send what is queued for up to *timeout* seconds."""
        with self._lock:
            self._stopped = True
            workers = list(self.workers)
        for worker in workers:
            worker.stop(timeout)
        # A sink in the middle of a request can take its own timeout longer than that.
        deadline = time.monotonic() + timeout + 1.0
        for worker in workers:
            worker.join(deadline - time.monotonic())
