"""The configuration as the message core sees it: :class:`~smtpplus_milter.core.session.Rules`.

Built once per loaded config (a reload builds a new one), so no message ever reads the schema
tree: the session gets the directory, the queues, the size limit and each list's banner as
plain values.
"""

from __future__ import annotations

import socket

from smtpplus_milter.config.loader import Config
from smtpplus_milter.config.schema import Settings
from smtpplus_milter.core.session import ReturnPath, Rules
from smtpplus_milter.mime.footer import Banner


def banners(settings: Settings) -> dict[str, Banner]:
    """Each list's header/footer; lists that add nothing are left out."""
    found = {}
    for name, section in settings.lists.items():
        banner = Banner(
            header_text=section.header.text if section.header else None,
            header_html=section.header.html if section.header else None,
            footer_text=section.footer.text if section.footer else None,
            footer_html=section.footer.html if section.footer else None,
        )
        if any((banner.header_text, banner.header_html, banner.footer_text, banner.footer_html)):
            found[name] = banner
    return found


def rules_of(config: Config) -> Rules:
    settings = config.settings
    return Rules(
        directory=config.directory,
        queues=dict(settings.priority.queues),
        max_message_bytes=settings.limits.max_message_bytes,
        banners=banners(settings),
        on_internal_error=settings.milter.on_internal_error,
        display_name_spoofing=settings.authorization.display_name_spoofing,
        per_user_labels=settings.metrics.per_user_labels,
        return_path=_return_path(config),
        fanout={name: "bcc" for name, section in settings.lists.items() if section.bcc_in_to},
        unsubscribe=dict(config.unsubscribe),
        list_ids={name: section.list_id for name, section in settings.lists.items() if section.list_id is not None},
    )


def _return_path(config: Config) -> ReturnPath | None:
    domain = config.bounces.return_path
    if domain is None or config.secret is None:
        return None
    node = config.tracking.node if config.tracking is not None else socket.gethostname()
    return ReturnPath(domain, node, config.secret.key)
