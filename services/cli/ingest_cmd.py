"""`anomaly ingest`: the feature-ingestion service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import run_guarded
from services.common.config import load_config
from services.common.logging_setup import configure_logging


def ingest(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Configuration file.", dir_okay=False)
    ] = None,
    online_store: Annotated[
        bool,
        typer.Option(help="Write the latest features to the Feast online store."),
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """Consume `events`, compute window features, fill the online store and `features`."""

    def _run() -> None:
        cfg = load_config(config)
        configure_logging(log_level)
        from services.ingest.runner import run_ingest

        run_ingest(cfg, online_store=online_store)

    run_guarded(_run)
