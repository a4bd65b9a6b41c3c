"""The main job's broker start: empty state by default, but never at a running broker's cost."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from local_kafka import LocalKafka, free_port
from local_platform import start_broker


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics)


def _create(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the future resolves
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)


def test_a_fresh_start_wipes_only_a_broker_it_starts_itself() -> None:
    said: list[str] = []
    broker = LocalKafka(port=free_port())
    try:
        assert start_broker(broker, fresh=True, log=said.append) is True
        assert said == []  # nothing to wipe on first use
        _create(broker.bootstrap_servers, "previous-run")

        # Already answering: someone's broker, left alone even when asked for a fresh start.
        assert start_broker(broker, fresh=True, log=said.append) is False
        assert "previous-run" in _topics(broker.bootstrap_servers)
        assert said == []

        broker.stop()
        assert start_broker(broker, fresh=True, log=said.append) is True
        assert "previous-run" not in _topics(broker.bootstrap_servers)
        assert len(said) == 1 and "wiping the previous run's broker data" in said[0]
    finally:
        broker.wipe()
