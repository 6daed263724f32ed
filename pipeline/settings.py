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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
