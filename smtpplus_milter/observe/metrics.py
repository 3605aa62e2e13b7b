"""Every Prometheus metric the milter exports, defined once.

The names and labels are a contract: the shipped rules, the dashboard and operators rely on them.
"""

from __future__ import annotations

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

# The *_created series double the scrape size and nothing in deploy/prometheus uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "smtpplus_messages", "Messages seen from SMTP+ users, by final result", ["user", "result"], registry=REGISTRY
)
UNAUTHORIZED = Counter(
    "smtpplus_unauthorized", "Messages with a sender the SMTP+ user may not use", ["user", "mode"], registry=REGISTRY
)
SPOOFING = Counter(
    "smtpplus_display_name_spoofing",
    "Messages whose authorized From:/Sender: shows another address in its display name or a comment",
    ["user"],
    registry=REGISTRY,
)
PRIORITY = Counter("smtpplus_priority", "Messages by effective priority", ["effective"], registry=REGISTRY)
QUEUE = Counter("smtpplus_queue", "Messages by Postfix queue chosen", ["queue"], registry=REGISTRY)
FOOTER = Counter("smtpplus_footer", "Header/footer injection results", ["result"], registry=REGISTRY)
MESSAGE_BYTES = Histogram(
    "smtpplus_message_bytes",
    "Size of messages from SMTP+ users",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
    registry=REGISTRY,
)
PROCESSING = Histogram(
    "smtpplus_processing_seconds",
    "Time from MAIL FROM to the milter's final answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ALERTS = Counter("smtpplus_alerts", "Alerts by sink and result", ["sink", "result"], registry=REGISTRY)
RELOADS = Counter("smtpplus_config_reloads", "Config reloads by result", ["result"], registry=REGISTRY)
BUILD_INFO = Gauge("smtpplus_build_info", "Build information", ["version"], registry=REGISTRY)
BUILD_INFO.labels(version=__version__).set(1)

ALL_USERS = "_all"


def user_label(login: str | None, per_user: bool) -> str:
    if not per_user:
        return ALL_USERS
    return login or "_unauthenticated"


def serve(listen: HostPort) -> None:
    """Serve /metrics on *listen* (``metrics.listen``) in a daemon thread."""
    start_http_server(listen.port, addr=listen.host, registry=REGISTRY)
