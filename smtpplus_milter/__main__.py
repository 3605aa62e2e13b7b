"""Allow ``python -m smtpplus_milter``."""

from __future__ import annotations

from smtpplus_milter.cli import main

raise SystemExit(main())
