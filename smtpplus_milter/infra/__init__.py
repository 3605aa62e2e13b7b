"""Adapters to the world outside the process: files, the passwd-file, the users file, DNS, mail."""
