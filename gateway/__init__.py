"""The HTTP API gateway."""
