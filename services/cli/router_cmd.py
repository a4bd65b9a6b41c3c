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
    ops_port: Annotated[int, typer.Option(help="Health and metrics port.")] = 9200,
    group_id: Annotated[str, typer.Option(help="Consumer group on `features`.")] = "anomaly-router",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """Score the `features` stream: decisions to `scores`, alerts through the durable outbox."""

    def _run() -> None:
        cfg = load_config(config)
        configure_logging(log_level)
        from services.router.runner import run_router_stream

        run_router_stream(cfg, ops_port=ops_port, group_id=group_id)

    run_guarded(_run)
