"""Every Prometheus metric the milter exports, defined once.

The names and labels are a contract: the shipped rules, the dashboard and operators rely on them.
"""

from __future__ import annotations

from types import MappingProxyType

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from smtpplus_milter import __version__
from smtpplus_milter.config.values import HostPort


class Metrics:
    """Every metric, registered on a registry of its own.

    One instance per running process (built with its runtime); tests build their own, so their
    counts never mix with another test's.
    """

    def __init__(self) -> None:
        # The *_created series double the scrape size and nothing in deploy/prometheus uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "smtpplus_messages",
            "Messages seen from SMTP+ users, by final result",
            ["user", "result"],
            registry=registry,
        )
        self.unauthorized = Counter(
            "smtpplus_unauthorized",
            "Messages with a sender the SMTP+ user may not use",
            ["user", "mode"],
            registry=registry,
        )
        self.spoofing = Counter(
            "smtpplus_display_name_spoofing",
            "Messages whose authorized From:/Sender: shows another address in its display name or a comment",
            ["user"],
            registry=registry,
        )
        self.priority = Counter("smtpplus_priority", "Messages by effective priority", ["effective"], registry=registry)
        self.queue = Counter("smtpplus_queue", "Messages by Postfix queue chosen", ["queue"], registry=registry)
        self.footer = Counter("smtpplus_footer", "Header/footer injection results", ["result"], registry=registry)
        self.message_bytes = Histogram(
            "smtpplus_message_bytes",
            "Size of messages from SMTP+ users",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
            registry=registry,
        )
        self.processing = Histogram(
            "smtpplus_processing_seconds",
            "Time from MAIL FROM to the milter's final answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.alerts = Counter("smtpplus_alerts", "Alerts by sink and result", ["sink", "result"], registry=registry)
        self.reloads = Counter("smtpplus_config_reloads", "Config reloads by result", ["result"], registry=registry)
        # smtpplus_tracking_spooled is the follower's (FollowerMetrics): it reads the spool, and the
        # milter, which only appends, could not count what the follower has taken without reading it.
        self.tracking_lost = Counter(
            "smtpplus_tracking_lost",
            "Tracking records that could not be kept (the spool was full or unwritable)",
            registry=registry,
        )
        self.suppressed = Counter(
            "smtpplus_suppressed",
            "Recipients kept from SMTP+ messages by the suppression list, by user and reason",
            ["user", "reason"],
            registry=registry,
        )
        self.refund_requests = Counter(
            "smtpplus_limit_refund_requests",
            "Refunds the milter asked of the policy daemon (messages refused after the end-of-data "
            "check counted them), by result",
            ["result"],
            registry=registry,
        )
        for result in ("refunded", "unknown", "failed"):
            self.refund_requests.labels(result=result)
        self.build_info = Gauge("smtpplus_build_info", "Build information", ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)


class FollowerMetrics:
    """The log follower's metrics (``smtpplus-milter follow``), on a registry of its own.

    The follower is a process of its own with its own ``tracking.metrics_listen``, so its series never
    mix with the milter's.
    """

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "smtpplus_deliveries",
            "Delivery attempts read from Postfix's log for tracked messages, by SMTP+ user and status",
            ["user", "status"],
            registry=registry,
        )
        self.lag = Gauge(
            "smtpplus_follower_lag_seconds",
            "Now minus the time of the last log line the follower read (0 at the end of the file)",
            registry=registry,
        )
        self.lines = Counter("smtpplus_follower_lines", "Log lines the follower read", registry=registry)
        self.notifications = Counter(
            "smtpplus_notifications",
            "Bounce and complaint notices by kind and result (sent, failed: tried again later)",
            ["kind", "result"],
            registry=registry,
        )
        self.complaints = Counter(
            "smtpplus_complaints",
            "Complaints (ARF reports) recorded about this relay host's messages since the follower started",
            ["user"],
            registry=registry,
        )
        # The web endpoint counts one_click and page in its own process; mailto: ones are recorded
        # by ingest (short-lived), so this process counts them from the store like complaints.
        self.unsubscribes = Counter(
            "smtpplus_unsubscribes",
            "Unsubscribes by mail (mailto:) recorded for this relay host's list messages since the follower started",
            ["list", "source"],
            registry=registry,
        )
        self.bounces = Counter(
            "smtpplus_bounces",
            "Bounced delivery attempts by SMTP+ user and class (hard, soft, blocked)",
            ["user", "type"],
            registry=registry,
        )
        self.store_errors = Counter(
            "smtpplus_follower_store_errors",
            "Writes to the tracking store that failed (the batch is retried with back-off)",
            registry=registry,
        )
        self.tracking_spooled = Gauge(
            "smtpplus_tracking_spooled",
            "Tracking records of accepted messages waiting in the milter's spool for the store",
            registry=registry,
        )
        self.spool_skipped = Counter(
            "smtpplus_tracking_spool_skipped",
            "Spool lines the follower could not read (a partial line left by a crash mid-write), skipped",
            registry=registry,
        )
        self.build_info = Gauge("smtpplus_build_info", "Build information", ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)


class FanoutMetrics:
    """The fanout filter's metrics (``smtpplus-milter fanout``, on ``fanout.metrics_listen``)."""

    # rewritten: own To:; unchanged: a recipient named in To:/Cc:; passed: unreadable, sent on as
    # it came; replayed: a retry answered from the journal; deferred: 451 to Postfix.
    RESULTS = ("rewritten", "unchanged", "passed", "replayed", "deferred")

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.copies = Counter(
            "smtpplus_fanout_copies",
            "Per-recipient deliveries the fanout filter answered, by result",
            ["result"],
            registry=registry,
        )
        for result in self.RESULTS:
            self.copies.labels(result=result)  # every series from the start (rate() needs a zero)
        self.build_info = Gauge("smtpplus_build_info", "Build information", ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)


class PreemptMetrics:
    """The preemption component's metrics (``smtpplus-milter preempt``, ``priority.preempt.metrics_listen``)."""

    # high/normal/low: messages of that SMTP+ queue in incoming, active or deferred, plus those
    # preemption holds; incoming/active/deferred/hold: Postfix's own queues (hold: ours and the
    # operator's); held: on hold by preemption.
    QUEUES = ("high", "normal", "low", "incoming", "active", "deferred", "hold", "held")

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.messages = Gauge(
            "smtpplus_queue_messages",
            "Messages in Postfix's queue, by SMTP+ queue and by Postfix queue",
            ["queue"],
            registry=registry,
        )
        for queue in self.QUEUES:
            self.messages.labels(queue=queue)
        self.paused = Gauge(
            "smtpplus_queue_paused",
            "1 while new deliveries of this SMTP+ queue are paused for high mail",
            ["queue"],
            registry=registry,
        )
        for queue in ("normal", "low"):
            self.paused.labels(queue=queue)
        self.preempt_seconds = Counter(
            "smtpplus_preempt_seconds", "Seconds the paused queues spent paused for high mail", registry=registry
        )
        self.preemptions = Counter("smtpplus_preemptions", "Pauses started (high mail arrived)", registry=registry)
        self.held = Counter("smtpplus_preempt_held_messages", "Messages put on hold by preemption", registry=registry)
        self.released = Counter(
            "smtpplus_preempt_released_messages", "Messages preemption released from hold", registry=registry
        )
        self.errors = Counter(
            "smtpplus_preempt_errors",
            "Failed steps (postsuper, postkick, the state file, a queue scan); retried on the next scan",
            ["step"],
            registry=registry,
        )
        for step in ("hold", "release", "kick", "state", "scan"):
            self.errors.labels(step=step)
        self.build_info = Gauge("smtpplus_build_info", "Build information", ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)


class PolicyMetrics:
    """The policy daemon's own metrics (``smtpplus-milter policyd``, on ``policy.metrics_listen``).

    They join the milter's set (:class:`Metrics`) in one registry: the daemon reports the
    refusals it makes (unknown user, unauthorized sender, suppressed recipient) with the milter's
    metric names, since a message refused here never reaches the milter.
    """

    STAGES = ("rcpt", "end_of_message", "other")
    RESULTS = ("dunno", "accepted", "refused", "suppressed", "too_many_recipients", "limited", "store_error")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limited = Counter(
            "smtpplus_limited",
            "Messages (and recipients past recipients_per_message) refused by a sending limit, by user and limit",
            ["user", "limit"],
            registry=registry,
        )
        self.requests = Counter(
            "smtpplus_policy_requests",
            "Policy requests answered, by stage and result",
            ["stage", "result"],
            registry=registry,
        )
        # The children, made once: labels() on every request costs more than the rest of the
        # bookkeeping (bench/policyd.py --micro).
        self.request_counts = MappingProxyType(
            {
                (stage, result): self.requests.labels(stage=stage, result=result)
                for stage in self.STAGES
                for result in self.RESULTS
            }
        )
        self.store_errors = Counter(
            "smtpplus_limit_store_errors",
            "Times the sending-limit store could not answer, by what was done (sending_limits.on_store_error)",
            ["action"],
            registry=registry,
        )
        for action in ("tempfail", "allow"):
            self.store_errors.labels(action=action)
        self.refunds = Counter(
            "smtpplus_limit_refunds",
            "Counted messages taken back because a milter refused them after the end-of-data check, by result",
            ["result"],
            registry=registry,
        )
        for result in ("refunded", "unknown", "failed"):
            self.refunds.labels(result=result)
        self.connections = Gauge("smtpplus_policy_connections", "Open policy connections", registry=registry)
        self.refused_connections = Counter(
            "smtpplus_policy_refused_connections",
            "Connections closed at once: policy.max_connections were open",
            registry=registry,
        )
        self.protocol_errors = Counter(
            "smtpplus_policy_protocol_errors",
            "Connections closed because the peer broke the policy protocol (too long, malformed)",
            registry=registry,
        )
        self.seconds = Histogram(
            "smtpplus_policy_seconds",
            "Time to answer one policy request, by stage",
            ["stage"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 2.5),
            registry=registry,
        )
        self.stage_seconds = MappingProxyType({stage: self.seconds.labels(stage=stage) for stage in self.STAGES})


class WebMetrics:
    """The unsubscribe endpoint's metrics (``smtpplus-milter web``, on ``web.metrics_listen``)."""

    # one_click: a receiver's RFC 8058 POST; page: the confirm button of our page. (mailto ones
    # are recorded by ingest, not by this process.)
    SOURCES = ("one_click", "page")

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.unsubscribes = Counter(
            "smtpplus_unsubscribes",
            "Recipients unsubscribed from a list (counted once: a repeated request is not), by list and source",
            ["list", "source"],
            registry=registry,
        )
        self.build_info = Gauge("smtpplus_build_info", "Build information", ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)


def serve_metrics(listen: HostPort, registry: CollectorRegistry) -> None:
    """Serve /metrics of *registry* on *listen* (``metrics.listen``) in a daemon thread."""
    start_http_server(listen.port, addr=listen.host, registry=registry)
