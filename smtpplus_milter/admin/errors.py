"""The refusal every administration use case raises: a mistake or a state that forbids the change.

Its message is for the operator and says what to do instead; the command line prints it after
the command's name and exits 1. Nothing was written when a use case raises it.
"""

from __future__ import annotations


class Refused(Exception):
    """A user mistake or a state that forbids the change; the message says what to do instead."""
