"""Pure message rewriting: bytes in, bytes out.

Nothing here talks to libmilter, reads configuration or counts metrics. The milter adapter hands
over the top-level headers and the body, and gets back a value describing the new body and the
top-level header changes, which it applies with ``replacebody``/``chgheader``.

- :mod:`smtpplus_milter.mime.rawparts` finds where each MIME part lies in the body, as byte
  offsets, and refuses malformed structure.
- :mod:`smtpplus_milter.mime.convert` turns a text banner into HTML and back.
- :mod:`smtpplus_milter.mime.footer` decides which parts get the header and footer text and
  splices the rewritten parts between the untouched bytes.
"""
