"""The watchdog's look at the broker: its group's committed offsets and the sources' end offsets, read in a
few batched requests (one metadata request a minute, one ListOffsets per leader), as the lag it exports."""

from __future__ import annotations

import asyncio
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from common.admin import admin_client
from common.settings import Settings
from streams.watchdog import Watchdog


def test_the_watchdog_reads_committed_and_end_offsets_of_every_source_partition(settings: Settings) -> None:
    source, group = f"watchdog-{uuid.uuid4().hex[:8]}", f"watchdog-group-{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)
    admin.create_topics([NewTopic(source, num_partitions=3, replication_factor=1)])[source].result(timeout=30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for partition, count in ((0, 5), (1, 2)):
        for i in range(count):
            producer.produce(source, key=f"k{i}", value=b"v", partition=partition)
    assert producer.flush(30) == 0
    committer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    committer.commit(offsets=[TopicPartition(source, 0, 3)], asynchronous=False)
    committer.close()

    watchdog = Watchdog(settings, group, [source], busy_for=lambda: 0.0, ready=lambda: True)
    committed, ends = watchdog._offsets()
    assert ends == {(source, 0): 5, (source, 1): 2, (source, 2): 0}
    assert committed == {(source, 0): 3}

    assert asyncio.run(watchdog.check()) is False  # within its first stall timeout nothing is judged stalled
    assert watchdog.lag == {source: 2 + 2}

    producer.produce(source, key="k", value=b"v", partition=2)
    assert producer.flush(30) == 0
    _, ends = watchdog._offsets()  # the partition list is cached, the end offsets are not
    assert ends[(source, 2)] == 1
