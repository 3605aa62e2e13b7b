"""The configuration: the YAML files read, validated and turned into typed, frozen values.

Depends only on :mod:`smtpplus_milter.core`; everything else receives what this package built:
:class:`Config` (absolute paths, the users directory, the validated settings) and the small values
of :mod:`~smtpplus_milter.config.values` (endpoints, the milter socket, what Postfix needs,
bounces, suppression, notices, the token key, the policy socket and the sending limits).
"""

from smtpplus_milter.config.loader import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    ConfigProblem,
    config_path_from_env,
    load_config,
    postfix_inputs,
)
from smtpplus_milter.config.schema import AlertmanagerSink, AlertsSection, EmailSink, Settings, WebhookSink
from smtpplus_milter.config.values import (
    Bounces,
    Doctor,
    Fanout,
    HostPort,
    Notices,
    Notify,
    OwnMail,
    Policy,
    PostfixInputs,
    Preempt,
    Secret,
    SendingLimits,
    SocketSpec,
    Suppression,
    Tracking,
    Web,
)

__all__ = [
    "DEFAULT_CONFIG",
    "AlertmanagerSink",
    "AlertsSection",
    "Bounces",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Doctor",
    "EmailSink",
    "Fanout",
    "HostPort",
    "Notices",
    "Notify",
    "OwnMail",
    "Policy",
    "PostfixInputs",
    "Preempt",
    "Secret",
    "SendingLimits",
    "Settings",
    "SocketSpec",
    "Suppression",
    "Tracking",
    "Web",
    "WebhookSink",
    "config_path_from_env",
    "load_config",
    "postfix_inputs",
]
