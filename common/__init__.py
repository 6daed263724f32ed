"""The base layer: settings, message envelope, telemetry, health checks and Kafka administration."""
