"""What operators see: the structured log, the Prometheus metrics, alerts, and the one reporter
that turns a message's outcome into all three."""
