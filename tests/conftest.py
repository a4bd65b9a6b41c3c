"""Fixtures shared by all tests: one real Kafka broker per session, unique topics per test.

The broker is assembled from Maven Central and started by `scripts/local_kafka.py` on a
free port, so tests never touch a developer's broker on 9092 and need nothing installed
by hand beyond Java and Maven.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Before any test module imports `feast` itself: Feast's metrics module switches
# prometheus_client to multi-process mode for the whole process when it is imported first
# (two service instances in one test would then share their counters). This package
# imports Feast inside a guard that keeps prometheus_client in-process.
import services.common.feast_store  # noqa: F401
from services.common.config import PlatformConfig
from services.common.config.model import KafkaConfig, TopicsConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_kafka import LocalKafka, free_port  # noqa: E402
from local_redis import LocalRedis  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell may export ANOMALY_* variables; tests must not see them."""
    for key in list(os.environ):
        if key.startswith("ANOMALY_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real single-node KRaft broker, wiped at the end of the session."""
    broker = LocalKafka(port=free_port(), wipe_on_exit=True)
    with broker:
        yield broker.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One private redis-server (Debian's, installed if missing); tests isolate by key prefix
    (Feast project name)."""
    server = LocalRedis(port=free_port(), home=tmp_path_factory.mktemp("redis"), wipe_on_exit=True)
    with server:
        server.start()
        yield server


TopicsFactory = Callable[[], PlatformConfig]


@pytest.fixture
def platform_config(kafka_bootstrap: str) -> TopicsFactory:
    """Configurations with unique topic names, so tests never see each other's data."""

    def make() -> PlatformConfig:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        defaults = TopicsConfig()
        topics = TopicsConfig.model_validate(
            {
                name: spec.model_copy(update={"name": f"{prefix}.{spec.name}", "partitions": 4})
                for name, spec in defaults
                if name != "replication_factor"
            }
        )
        return PlatformConfig(
            kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap, topics=topics),
        )

    return make
