"""One typed settings object, read from the environment (prefix ``PIPELINE_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a process of the pipeline needs to know about its surroundings.

    Every field can be set as ``PIPELINE_<FIELD>`` (``PIPELINE_KAFKA_BOOTSTRAP=127.0.0.1:9092``).
    """

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis of the query side")
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
    deadline_sweep_s: float = Field(default=1.0, gt=0, description="how often workers look for passed deadlines")
    stall_timeout_s: float = Field(
        default=30.0, gt=0, description="a worker with waiting input and no progress for this long stops"
    )
    watchdog_interval_s: float = Field(default=5.0, gt=0, description="how often a worker checks its own progress")
    max_refund_attempts: int = Field(default=5, ge=1, description="refund tries before a saga needs attention")
    refund_backoff_base_s: float = Field(default=0.05, gt=0, description="first refund retry delay")
    refund_backoff_cap_s: float = Field(default=1.0, gt=0, description="longest refund retry delay")

    # the simulated payment provider (an external system: its ledger lives in Redis under provider:*)
    payment_latency_ms: float = Field(default=5.0, ge=0, description="latency of each provider call")
    payment_failure_rate: float = Field(default=0.0, ge=0, le=1, description="share of charges declined")
    refund_failure_rate: float = Field(default=0.0, ge=0, le=1, description="share of refund calls that fail")
    payment_seed: int = Field(default=7, description="seed that makes provider outcomes deterministic")
    payment_slow_s: float = Field(default=5.0, ge=0, description="latency of a charge with the tok_slow token")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


LIBRDKAFKA_LOGGER = "librdkafka"
"""Every confluent-kafka client logs through this logger (``logger=`` in its config), not straight to stderr,
so a process decides what it shows: the CLI shows errors only, a probe that expects failures shows nothing."""
