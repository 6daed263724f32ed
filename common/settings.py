"""One typed settings object, read from the environment (prefix ``PIPELINE_``)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

JWT_SECRET_FILE = ".cache/jwt-secret"
"""Where ``infra/setup.sh`` writes this installation's random HS256 secret (mode 0600, outside git)."""


class Settings(BaseSettings):
    """Everything a process of the pipeline needs to know about its surroundings.

    Every field can be set as ``PIPELINE_<FIELD>`` (``PIPELINE_KAFKA_BOOTSTRAP=127.0.0.1:9092``).
    """

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis of the query side")
    schema_registry_url: str = Field(
        default="http://127.0.0.1:8081/apis/ccompat/v7",
        description="the schema registry's Confluent-compatible API: values name their writer schema by its id "
        "there (memory: a registry inside the process, for tests that run everything in one process)",
    )
    topic_replication_factor: int = Field(default=1, ge=1, description="replicas per topic partition")
    topic_min_insync_replicas: int = Field(default=1, ge=1, description="min.insync.replicas per topic")
    client_id: str = Field(default="pipeline", description="client.id sent to the broker")
    delivery_timeout_s: float = Field(default=30.0, gt=0, description="how long a publish waits for its ack")
    service_name: str = Field(default="cli", description="ce_source of the events this process publishes")

    # workers (streams/)
    table_store: str = Field(default="memory://", description="Faust table store: memory:// or rocksdb://")
    data_dir: str = Field(default=".cache/faust", description="where Faust workers keep local table state")
    worker_log_level: str = Field(default="warning", description="log level of Faust workers")
    saga_timeout_s: float = Field(default=30.0, gt=0, description="a saga not terminal after this is cancelled")
    admission_hold_s: float = Field(
        default=10.0, gt=0, description="an order waits this long at most for a user event its sender saw"
    )
    deadline_sweep_s: float = Field(default=1.0, gt=0, description="how often workers look for passed deadlines")
    stall_timeout_s: float = Field(
        default=30.0, gt=0, description="a worker with waiting input and no progress for this long stops"
    )
    watchdog_interval_s: float = Field(default=5.0, gt=0, description="how often a worker checks its own progress")
    stream_batch_max: int = Field(
        default=16, ge=1, description="most messages an agent takes at once from those already fetched (1: one by one)"
    )
    producer_linger_ms: int = Field(
        default=0, ge=0, le=1000, description="how long a worker's producer waits to fill a request (0: send at once)"
    )
    worker_http_host: str = Field(default="127.0.0.1", description="where a worker serves /metrics, /health…")
    worker_http_port: int = Field(default=0, ge=0, le=65535, description="worker endpoint port (0: none)")
    ready_max_lag: int = Field(default=1000, ge=0, description="a worker is ready only with less lag than this")
    worker_memory_limit_mb: float = Field(
        default=1024, gt=0, description="health: a worker's resident memory above this warns (MiB)"
    )
    otel_exporter: str | None = Field(
        default=None,
        description="tracing exporters: none, console, otlp, zipkin or file:<path>, comma-separated"
        " (unset: OpenTelemetry's OTEL_TRACES_EXPORTER, else none)",
    )
    otel_endpoint: str | None = Field(default=None, description="OTLP/HTTP endpoint (default: the SDK's)")
    max_refund_attempts: int = Field(default=5, ge=1, description="refund tries before a saga needs attention")
    refund_backoff_base_s: float = Field(default=0.05, gt=0, description="first refund retry delay")
    refund_backoff_cap_s: float = Field(default=1.0, gt=0, description="longest refund retry delay")
    views_check_interval_s: float = Field(
        default=1.0, gt=0, description="how often the view service checks that Redis still holds its views"
    )
    user_snapshot_every: int = Field(default=5, ge=1, description="a user snapshot every N events of a user")

    # calling the payment provider: retries within a call, the circuit breaker, parked charges
    provider_call_attempts: int = Field(default=3, ge=1, description="tries per provider call (transient errors)")
    provider_retry_base_s: float = Field(default=0.05, gt=0, description="first backoff between tries (jittered)")
    breaker_failure_threshold: int = Field(default=5, ge=1, description="failed calls in a row that open the breaker")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="open this long, then one probe call (half-open)")
    payment_retry_interval_s: float = Field(default=1.0, gt=0, description="how often parked charges are retried")

    # the simulated payment provider (an external system: its ledger lives in a Redis database of its own)
    provider_redis_url: str | None = Field(
        default=None, description="the simulated provider's Redis (default: the query side's server, database 1)"
    )
    payment_latency_ms: float = Field(default=5.0, ge=0, description="latency of each provider call")
    payment_failure_rate: float = Field(default=0.0, ge=0, le=1, description="share of charges declined")
    refund_failure_rate: float = Field(default=0.0, ge=0, le=1, description="share of refund calls that fail")
    payment_seed: int = Field(default=7, description="seed that makes provider outcomes deterministic")
    payment_slow_s: float = Field(default=5.0, ge=0, description="latency of a charge with the tok_slow token")

    # e-mail delivery of notices by the notifications worker; off while smtp_host is unset
    smtp_host: str | None = Field(
        default=None, description="mail server the notices are e-mailed through; unset: no e-mail is sent"
    )
    smtp_port: int = Field(default=25, ge=1, le=65535, description="its port (465 with smtp_tls=tls, 587 starttls)")
    smtp_from: str = Field(
        default="order-pipeline@localhost", description="From address; its domain ends every Message-ID"
    )
    smtp_username: str | None = Field(default=None, description="login at the mail server, if it wants one")
    smtp_password: SecretStr = Field(default=SecretStr(""), description="password of smtp_username")
    smtp_tls: Literal["auto", "starttls", "tls", "none"] = Field(
        default="auto",
        description="auto: STARTTLS when the server offers it; starttls: required; tls: implicit TLS; none: plain",
    )
    smtp_timeout_s: float = Field(default=5.0, gt=0, description="longest one hand-over of a mail may take")
    smtp_attempts: int = Field(default=3, ge=1, description="tries per mail on a transient failure")
    smtp_retry_base_s: float = Field(default=0.5, gt=0, description="first backoff between tries (jittered)")
    smtp_breaker_reset_s: float = Field(
        default=10.0, gt=0, description="after a mail failed every try, others are not tried for this long"
    )
    smtp_max_age_s: float = Field(
        default=86400.0, gt=0, description="a notice older than this when read is not mailed; sent-marks kept this long"
    )

    # the HTTP API gateway (gateway/)
    gateway_host: str = Field(default="127.0.0.1", description="address the gateway listens on")
    gateway_port: int = Field(default=8080, ge=0, le=65535, description="port the gateway listens on")
    jwt_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HS256 signing secret (32+ random bytes); unset: the contents of jwt_secret_file",
    )
    jwt_secret_file: str = Field(
        default=JWT_SECRET_FILE,
        description="file holding the HS256 secret when PIPELINE_JWT_SECRET is unset (relative: to the working "
        "directory); infra/setup.sh writes a random one per installation",
    )
    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        default="HS256", description="the one JWT algorithm the gateway accepts (never taken from the token)"
    )
    jwt_public_key: str | None = Field(default=None, description="PEM public key that verifies RS256 tokens")
    jwt_issuer: str = Field(default="order-pipeline", description="required iss claim of bearer tokens")
    jwt_audience: str | None = Field(default=None, description="required aud claim of bearer tokens, if set")
    gateway_trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses or networks (CIDR) of the proxies whose forwarding header names "
        "the client; empty: the peer address is the client",
    )
    gateway_forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for",
        description="the header a trusted proxy appends the client to: X-Forwarded-For or Forwarded (RFC 7239)",
    )
    rate_limit_requests: int = Field(default=100, ge=1, description="requests per client per rate-limit window")
    rate_limit_window_s: float = Field(default=900.0, gt=0, description="the rate-limit window (sliding)")
    max_body_bytes: int = Field(default=64 * 1024, ge=1, description="largest request body the gateway reads")
    read_wait_max_s: float = Field(
        default=5.0, ge=0, description="longest a read waits for ?min_version / ?wait_for (read-your-writes)"
    )
    gateway_publish_timeout_s: float = Field(
        default=5.0, gt=0, description="how long a command waits for the broker's ack before the gateway answers 503"
    )
    gateway_memory_limit_mb: float = Field(
        default=512, gt=0, description="health: the gateway's resident memory above this warns (MiB)"
    )

    @model_validator(mode="before")
    @classmethod
    def _jwt_secret_from_file(cls, data: Any) -> Any:
        """An unset (or empty) ``jwt_secret`` is read from ``jwt_secret_file`` when that file can be read."""
        if not isinstance(data, dict) or _secret_given(data.get("jwt_secret")):
            return data
        secret = read_secret_file(str(data.get("jwt_secret_file") or JWT_SECRET_FILE))
        return {**data, "jwt_secret": secret} if secret else data

    @model_validator(mode="after")
    def _mail_within_the_watchdog(self) -> Settings:
        """A mail server that hangs must not hold the notifications worker past its watchdog's patience."""
        if self.smtp_host and "@" not in self.smtp_from:
            raise ValueError(f"smtp_from {self.smtp_from!r} is not an e-mail address")
        if self.smtp_host and self.smtp_worst_case_s >= self.stall_timeout_s:
            raise ValueError(
                f"smtp_attempts x (smtp_timeout_s + backoff) = {self.smtp_worst_case_s:.1f} s must stay under "
                f"stall_timeout_s ({self.stall_timeout_s} s), or a hanging mail server stops the notifications worker"
            )
        return self

    @property
    def smtp_retry_cap_s(self) -> float:
        """The longest backoff between two tries of one mail."""
        return 4 * self.smtp_retry_base_s

    @property
    def smtp_worst_case_s(self) -> float:
        """How long one mail may take at most: every try timing out, with the longest backoffs between them."""
        return self.smtp_attempts * self.smtp_timeout_s + (self.smtp_attempts - 1) * self.smtp_retry_cap_s

    @field_validator("gateway_forwarded_header", mode="before")
    @classmethod
    def _header_name(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value  # header names are case-insensitive

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad entry
        return value

    @property
    def provider_store(self) -> str:
        """The simulated provider's database: not the query side's, so losing the views loses no charge."""
        if self.provider_redis_url:
            return self.provider_redis_url
        parts = urlsplit(self.redis_url)
        views_db = parts.path.strip("/") or "0"
        return urlunsplit(parts._replace(path="/2" if views_db == "1" else "/1"))


def _secret_given(value: Any) -> bool:
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


def read_secret_file(path: str) -> str | None:
    """The secret in ``path`` (surrounding whitespace dropped), or None when there is no readable file."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


LIBRDKAFKA_LOGGER = "librdkafka"
"""Every confluent-kafka client logs through this logger (``logger=`` in its config), not straight to stderr,
so a process decides what it shows: the CLI shows errors only, a probe that expects failures shows nothing."""
