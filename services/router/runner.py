"""Running the routing service as a process: doors, alert delivery, signals.

The stream door runs in its own thread with its own event loop and its own model clients
(gRPC channels belong to the loop that made them); the REST and gRPC doors share the main
loop. All of them read the same `LiveConfig`, so a flag change reaches every door at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

from services.common.config import PlatformConfig
from services.common.heap import freeze_startup_heap
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


def run_router(
    config: PlatformConfig,
    config_path: Path | None,
    *,
    stream: bool = True,
    doors: bool = True,
    group_id: str = "anomaly-router",
) -> None:
    """The stream door (thread) and the REST and gRPC doors (main loop) until SIGTERM/SIGINT.

    Health, readiness and metrics are served by the REST door; with `doors=False` a small ops
    server on `router.http_port` serves them instead. The stream door's batch size, wait and
    in-flight bound are `config.router.stream_*`.
    """
    if not doors:
        run_router_stream(
            config, config_path, ops_host=config.router.host,
            ops_port=config.router.http_port, group_id=group_id,
        )  # fmt: skip
        return
    _run_loop(_serve_doors(config, config_path, stream, group_id))


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT log and call `stop` (the process then shuts down in order)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _delivery(config: PlatformConfig, live: LiveConfig) -> AlertDelivery:
    """The alert outbox and sinks, reading the flags in force on every pass: the kill switch
    and entity suppression then also hold alerts queued before they were set."""
    return AlertDelivery.from_config(config.alerts, config.kafka, flags=lambda: live.get().flags)


def _stream_scorer(
    config: PlatformConfig,
    live: LiveConfig,
    metrics: RouterMetrics,
    delivery: AlertDelivery,
    group_id: str,
) -> StreamScorer:
    """The stream door with its own scoring core (its thread's event loop owns the clients)."""
    router = config.router
    return StreamScorer(
        config,
        live,
        lambda: make_core(live, metrics),
        delivery,
        metrics,
        group_id=group_id,
        batch_max=router.stream_batch_max,
        batch_timeout_s=router.stream_batch_timeout_ms / 1000.0,
        max_in_flight=router.stream_max_in_flight,
        scoring_depth=router.stream_scoring_depth,
    )


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """The doors' event loop: uvloop when installed (as `uvicorn.run` would choose), whose
    transports cost a fraction of asyncio's per request; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def _serve_doors(
    config: PlatformConfig,
    config_path: Path | None,
    stream: bool,
    group_id: str,
) -> None:
    import uvicorn

    from services.router.config_reload import ConfigReloader
    from services.router.grpc_door import create_grpc_server
    from services.router.rest import create_app

    # The stop signals are ours from the start: uvicorn's `serve` captures them, restores the
    # handlers it found when its sockets are closed and raises each signal again; with
    # Python's default SIGTERM handler the process ended there (no last commit, the group
    # not left: the next router waited out the 45 s session timeout). A signal before
    # `serve` runs (the doors still starting) must stop it too.
    stopping = threading.Event()
    servers: list[Any] = []

    def on_stop() -> None:
        stopping.set()
        for running in servers:
            running.should_exit = True

    _on_stop_signals(on_stop)
    live = LiveConfig(config)
    metrics = RouterMetrics()
    delivery: AlertDelivery | None = None
    scorer: StreamScorer | None = None
    thread: threading.Thread | None = None
    if stream:
        delivery = _delivery(config, live)
        delivery.start()
        scorer = _stream_scorer(config, live, metrics, delivery, group_id)
        thread = threading.Thread(target=scorer.run, name="stream-door", daemon=True)
        thread.start()

    def ready() -> tuple[bool, str]:
        if scorer is not None:
            if scorer.error is not None:
                return False, f"stream door failed: {scorer.error}"
            return scorer.ready()
        return True, "doors ready"

    core = make_core(live, metrics)
    rest_reader, grpc_reader = _readers(config)
    app = create_app(core, rest_reader, live, metrics, ready)
    grpc_server = create_grpc_server(
        core, grpc_reader, live, metrics, config.router.grpc_port, ready=ready
    )
    await grpc_server.start()
    reloader = (
        ConfigReloader(config_path, live, metrics, config.router.reload_interval_s).start()
        if config_path is not None
        else None
    )
    log.info(
        "router serving",
        extra={"rest": f"{config.router.host}:{config.router.http_port}",
               "grpc": config.router.grpc_port, "stream": stream,
               "config_watch": str(config_path) if config_path else None},
    )  # fmt: skip
    freeze_startup_heap()  # the stream door has started; the doors are about to
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.router.host,
            port=config.router.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    servers.append(server)
    try:
        if not stopping.is_set():
            await server.serve()  # returns on SIGTERM/SIGINT
    finally:
        if scorer is not None and thread is not None:
            scorer.stop()
            await asyncio.to_thread(thread.join, 60)
        if reloader is not None:
            reloader.stop()
        await grpc_server.stop(5)
        for client in core.clients.values():
            await client.close()
        if delivery is not None:
            delivery.stop()
            delivery.close()
        log.info("router stopped", extra={"decisions": scorer.decisions if scorer else 0})
    if scorer is not None and scorer.error is not None:
        raise RuntimeError(scorer.error)


def _readers(config: PlatformConfig) -> tuple[Any, Any]:
    """One online-store reader per door (SQLite connections must not be shared by threads);
    None when the store cannot be opened, so scoring with explicit features still works."""
    try:
        from services.common.feast_store import OnlineFeatureReader, open_store

        return (
            OnlineFeatureReader(open_store(config.feast), config.feast),
            OnlineFeatureReader(open_store(config.feast), config.feast),
        )
    except Exception as exc:
        log.warning(
            "online store unavailable: scoring by entity id answers 503",
            extra={"error": f"{type(exc).__name__}: {exc}"},
        )
        return None, None


def run_router_stream(
    config: PlatformConfig,
    config_path: Path | None = None,
    *,
    ops_host: str = "127.0.0.1",
    ops_port: int = 9200,
    group_id: str = "anomaly-router",
) -> None:
    """The stream door with alert delivery, until SIGTERM/SIGINT; flags and vote settings
    in `config_path` are hot-reloaded as with the doors."""
    from services.router.config_reload import ConfigReloader

    live = LiveConfig(config)
    metrics = RouterMetrics()
    delivery = _delivery(config, live)
    delivery.start()
    scorer = _stream_scorer(config, live, metrics, delivery, group_id)

    def live_check() -> tuple[bool, str]:
        return (scorer.error is None, scorer.error or "ok")

    ops = OpsServer(ops_host, ops_port, live=live_check, ready=scorer.ready).start()
    reloader = (
        ConfigReloader(config_path, live, metrics, config.router.reload_interval_s).start()
        if config_path is not None
        else None
    )

    _on_stop_signals(scorer.stop)
    thread = threading.Thread(target=scorer.run, name="stream-door")
    freeze_startup_heap()
    thread.start()
    log.info(
        "router streaming",
        extra={"features": config.kafka.topics.features.name, "ops_port": ops.port,
               "config_watch": str(config_path) if config_path else None},
    )  # fmt: skip
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        if reloader is not None:
            reloader.stop()
        delivery.stop()
        delivery.close()
        ops.stop()
        log.info("router stopped", extra={"decisions": scorer.decisions})
    if scorer.error is not None:
        raise RuntimeError(scorer.error)
