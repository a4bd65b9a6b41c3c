"""Running the ingest service as a process: configuration, online store, ops server, signals.

Kept apart from `service.py` so that the loop can be driven in-process by tests and
benchmarks while `anomaly ingest` gets a process that shuts down cleanly on SIGTERM
(a pod being stopped) by checkpointing its state and leaving the consumer group.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from services.common.config import PlatformConfig
from services.common.heap import freeze_startup_heap
from services.common.ops_server import OpsServer
from services.ingest.online_writer import OnlineSink
from services.ingest.service import IngestService

log = logging.getLogger(__name__)


def build_online_sink(config: PlatformConfig) -> OnlineSink:
    """The Feast online-store writer for the configured store (SQLite or Redis)."""
    from services.common.feast_store import OnlineFeatureWriter, apply, open_store

    apply(config.feast)  # idempotent: registers the feature view on a fresh store
    return OnlineFeatureWriter(open_store(config.feast), config.feast)


def run_ingest(config: PlatformConfig, *, online_store: bool = True) -> None:
    """Serve until SIGTERM/SIGINT; exceptions from the loop propagate (exit non-zero)."""
    stop_requested = threading.Event()
    service: IngestService | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()
        if service is not None:
            service.stop()

    # Installed first: a pod can be stopped while it is still starting (Feast import, restore).
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sink = build_online_sink(config) if online_store and config.ingest.write_online_store else None
    service = IngestService(config, online_sink=sink)
    if stop_requested.is_set():
        service.stop()
    ops = OpsServer(
        config.ingest.ops_host, config.ingest.ops_port, live=service.live, ready=service.ready
    ).start()
    log.info(
        "ingest starting",
        extra={
            "bootstrap": config.kafka.bootstrap_servers,
            "events_topic": config.kafka.topics.events.name,
            "online_store": config.feast.online_store.type if sink else "off",
            "ops_port": ops.port,
        },
    )
    freeze_startup_heap()
    try:
        service.run()
    finally:
        ops.stop()
        log.info("ingest stopped", extra={"batches": service.batches})
