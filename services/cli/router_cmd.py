"""`anomaly router`: the routing service (stream door; REST and gRPC doors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import run_guarded
from services.common.config import load_config
from services.common.logging_setup import configure_logging


def router(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Configuration file.", dir_okay=False)
    ] = None,
    stream: Annotated[
        bool, typer.Option(help="Score the `features` stream (the stream door).")
    ] = True,
    doors: Annotated[
        bool,
        typer.Option(help="Serve the REST and gRPC scoring doors (router.http_port/grpc_port)."),
    ] = True,
    group_id: Annotated[str, typer.Option(help="Consumer group on `features`.")] = "anomaly-router",
    batch_max: Annotated[
        int, typer.Option(min=1, help="Stream door: most feature vectors scored per batch.")
    ] = 5_000,
    batch_timeout_ms: Annotated[
        int, typer.Option(min=1, help="Stream door: longest wait to fill a batch.")
    ] = 50,
    max_in_flight: Annotated[
        int,
        typer.Option(
            min=1,
            help="Stream door: batches produced but not yet acknowledged (and committed) "
            "before it waits for the broker; bounds re-scoring after a crash.",
        ),
    ] = 4,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """The routing service: the `features` stream (decisions to `scores`, alerts through the
    durable outbox) and the REST (`POST /v1/score`) and gRPC (`anomaly.v1.Scoring`) doors.
    Feature flags in the configuration file are hot-reloaded."""

    def _run() -> None:
        from services.common.config.loader import resolve_config_path

        cfg = load_config(config)
        configure_logging(log_level)
        from services.router.runner import run_router

        run_router(
            cfg, resolve_config_path(config), stream=stream, doors=doors, group_id=group_id,
            batch_max=batch_max, batch_timeout_s=batch_timeout_ms / 1000.0,
            max_in_flight=max_in_flight,
        )  # fmt: skip

    run_guarded(_run)
