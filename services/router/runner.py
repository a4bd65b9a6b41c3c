"""Running the routing service as a process: doors, alert delivery, signals.

The stream door runs in its own thread with its own event loop and its own model clients
(gRPC channels belong to the loop that made them); the REST and gRPC doors share the main
loop. All of them read the same `LiveConfig`, so a flag change reaches every door at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from services.common.config import PlatformConfig
from services.common.model_names import ModelName
from services.common.ops_server import OpsServer
from services.router.alerts import AlertDelivery
from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics
from services.router.model_clients import CircuitBreaker, V2ModelClient
from services.router.stream import StreamScorer

log = logging.getLogger(__name__)


def make_core(live: LiveConfig, metrics: RouterMetrics) -> ScoringCore:
    """A scoring core with its own V2 clients (one per configured endpoint)."""
    cfg = live.get()
    clients = {
        name: V2ModelClient(name, endpoint, CircuitBreaker())
        for name, endpoint in cfg.serving.endpoints.items()
        if name in ModelName
    }
    return ScoringCore(live, clients, metrics=metrics)


def run_router_stream(
    config: PlatformConfig,
    *,
    ops_host: str = "127.0.0.1",
    ops_port: int = 9200,
    group_id: str = "anomaly-router",
    batch_max: int = 5_000,
    batch_timeout_s: float = 0.05,
) -> None:
    """The stream door with alert delivery, until SIGTERM/SIGINT."""
    live = LiveConfig(config)
    metrics = RouterMetrics()
    delivery = AlertDelivery.from_config(config.alerts, config.kafka)
    delivery.start()
    scorer = StreamScorer(
        config,
        live,
        lambda: make_core(live, metrics),
        delivery,
        metrics,
        group_id=group_id,
        batch_max=batch_max,
        batch_timeout_s=batch_timeout_s,
    )

    def live_check() -> tuple[bool, str]:
        return (scorer.error is None, scorer.error or "ok")

    ops = OpsServer(ops_host, ops_port, live=live_check, ready=scorer.ready).start()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        scorer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=scorer.run, name="stream-door")
    thread.start()
    log.info(
        "router streaming",
        extra={"features": config.kafka.topics.features.name, "ops_port": ops.port},
    )
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        delivery.stop()
        delivery.close()
        ops.stop()
        log.info("router stopped", extra={"decisions": scorer.decisions})
    if scorer.error is not None:
        raise RuntimeError(scorer.error)
