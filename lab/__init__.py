"""The SMTP+ lab: real Postfix, Dovecot and the milter on loopback, for the demo, tests and benchmarks."""
