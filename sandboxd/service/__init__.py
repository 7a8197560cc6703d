"""The service: twistd options, settings, assembling the parts, the daemon, listeners, health,
metrics, instance locks and the start-up check."""
