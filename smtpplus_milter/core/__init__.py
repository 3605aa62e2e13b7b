"""Pure decisions: who the SMTP+ user is, which senders they may use, what to answer.

Nothing in this package does I/O, talks to the milter, reads YAML or touches metrics: it takes
values and returns values (see :mod:`smtpplus_milter.core.decision`).
"""
