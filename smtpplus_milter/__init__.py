"""smtpplus-milter: a Postfix milter that turns Postfix into an SMTP+ relay."""

from __future__ import annotations

__version__ = "0.1.0"
