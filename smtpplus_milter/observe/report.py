"""The one reporter: a message's :class:`~smtpplus_milter.core.session.Outcome` becomes the
``message`` log line, the metrics and the alerts.

Every door that decides messages reports through this, so the log fields, metric labels and
alert rules exist once. The label and alert *rules* are the core's (the outcome carries them);
this module only writes them down. It never raises into the mail path: the answer to Postfix
matters more than a log line.
"""

from __future__ import annotations

import functools

from smtpplus_milter.core.session import Outcome
from smtpplus_milter.observe.alerts import Alert, AlertDispatcher
from smtpplus_milter.observe.log import Emit, emit_now, get_logger
from smtpplus_milter.observe.metrics import Metrics

log = get_logger()


class Reporter:
    """Writes outcomes down. *emit* writes a log event (default: structlog, in this thread)."""

    def __init__(self, metrics: Metrics, alerts: AlertDispatcher | None = None, emit: Emit = emit_now) -> None:
        self.metrics = metrics
        self.alerts = alerts
        self.emit = emit

    def report(self, outcome: Outcome, elapsed: float) -> None:
        try:
            self._count(outcome, elapsed)
            self._log(outcome, elapsed)
            self._alert(outcome)
        except Exception:
            log.exception("report_failed", queue_id=outcome.queue_id)

    def _count(self, outcome: Outcome, elapsed: float) -> None:
        metrics, label = self.metrics, outcome.user_label
        metrics.messages.labels(user=label, result=outcome.verdict.value).inc()
        metrics.processing.observe(elapsed)
        if outcome.size is not None:
            metrics.message_bytes.observe(outcome.size)
        if outcome.footer is not None:
            metrics.footer.labels(result=outcome.footer.status).inc()
        if outcome.priority is not None:
            metrics.priority.labels(effective=str(outcome.priority.effective)).inc()
            metrics.queue.labels(queue=outcome.priority.queue).inc()
        if outcome.decision.unauthorized:
            metrics.unauthorized.labels(user=label, mode=outcome.mode).inc()
        if outcome.spoofing:
            metrics.spoofing.labels(user=label).inc()

    def _log(self, outcome: Outcome, elapsed: float) -> None:
        action = outcome.action
        for item in outcome.decision.unauthorized:
            self.emit(
                "warning",
                "unauthorized_sender",
                {
                    "queue_id": outcome.queue_id,
                    "user": outcome.login,
                    "field": item.field,
                    "sender": item.address,
                    "mode": outcome.mode,
                    "action": action,
                },
            )
        for found in outcome.spoofing:
            self.emit(
                "warning",
                "display_name_spoofing",
                {
                    "queue_id": outcome.queue_id,
                    "user": outcome.login,
                    "field": found.field,
                    "sender": found.address,
                    "shown": found.shown,
                    "where": found.where,
                    "action": action,
                },
            )
        # Built where the line is written (the background writer: off the mail path); an outcome
        # never changes, so building it later gives the same line.
        self.emit("info", "message", functools.partial(outcome.log_fields, elapsed))

    def _alert(self, outcome: Outcome) -> None:
        if self.alerts is None:
            return
        for notice in outcome.notices:
            self.alerts.submit(
                Alert(
                    notice.kind,
                    notice.user,
                    notice.sender,
                    notice.field,
                    outcome.mode,
                    notice.action,
                    notice.reply,
                    outcome.queue_id,
                    shown=notice.shown,
                )
            )
