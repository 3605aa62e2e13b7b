"""``smtpplus-milter run``: the milter daemon in the foreground.

The process around it (socket probe, pid file, signals, drain) is :class:`smtpplus_milter.daemon.Daemon`'s;
this module only builds the milter service from the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smtpplus_milter.cli.common import load_or_report
from smtpplus_milter.config import Config
from smtpplus_milter.daemon import Daemon, StartupFailed

# On SIGTERM, queued alerts get this long to go out before the process exits.
ALERTS_DRAIN_SECONDS = 5.0


class MilterService:
    """The milter as a :class:`~smtpplus_milter.daemon.Service`: libmilter, alerts and metrics."""

    def __init__(self, config: Config) -> None:
        # Imported here so check-config works without libmilter loaded.
        import Milter

        from smtpplus_milter.observe import metrics
        from smtpplus_milter.observe.alerts import AlertDispatcher
        from smtpplus_milter.services.milter import FLAGS, ConfigHolder, factory_for

        settings = config.settings
        self.config = config
        listen = settings.metrics.listen
        if listen is not None:
            try:
                metrics.serve(listen)
            except OSError as exc:
                raise StartupFailed(f"cannot serve metrics on {listen}: {exc.strerror}") from None
        # Alerts go out from threads of their own; the mail path only queues them.
        self.alerts = AlertDispatcher.from_config(settings.alerts)
        self.holder = ConfigHolder(config, self.alerts)
        self.milter_class = factory_for(self.holder)
        Milter.factory = self.milter_class
        Milter.set_flags(FLAGS)

    def serve(self) -> None:
        import Milter

        milter = self.config.settings.milter
        Milter.runmilter("smtpplus", str(milter.socket), milter.timeout)

    def stop(self) -> None:
        import milter as libmilter

        libmilter.stop()

    def reload(self) -> None:
        self.holder.reload()

    def busy(self) -> int:
        return self.milter_class.active_connections()

    def close(self) -> None:
        self.alerts.stop(ALERTS_DRAIN_SECONDS)

    def details(self) -> Mapping[str, Any]:
        listen = self.config.settings.metrics.listen
        return {
            "config": str(self.config.path),
            "users": len(self.config.directory.users),
            "metrics": str(listen) if listen is not None else None,
            "alert_sinks": self.alerts.sink_names,
        }


def main(path: Path, pid_file: Path | None = None) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    from smtpplus_milter.observe import log as logsetup

    logsetup.configure(cache=True)
    daemon = Daemon(
        log=logsetup.get_logger(),
        socket=config.settings.milter.socket,
        pid_file=pid_file,
        drain_seconds=config.settings.milter.timeout,
        warnings=config.warnings,
    )
    return daemon.run(lambda: MilterService(config))
