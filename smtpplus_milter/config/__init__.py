"""The configuration: the YAML files read, validated and turned into typed, frozen values.

Depends only on :mod:`smtpplus_milter.core`; everything else receives what this package built.
"""

from smtpplus_milter.config.loader import (
    DEFAULT_CONFIG,
    AlertmanagerSink,
    AlertsSection,
    Config,
    ConfigError,
    ConfigProblem,
    EmailSink,
    Settings,
    WebhookSink,
    config_path_from_env,
    load_config,
    resolve_users_path,
    split_host_port,
)

__all__ = [
    "DEFAULT_CONFIG",
    "AlertmanagerSink",
    "AlertsSection",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "EmailSink",
    "Settings",
    "WebhookSink",
    "config_path_from_env",
    "load_config",
    "resolve_users_path",
    "split_host_port",
]
