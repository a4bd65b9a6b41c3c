"""`anomaly replay <file>`: parse options, load the configuration, call `services.replay`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import UserError, run_guarded
from services.cli.options import QuietOption
from services.common.config import load_config


def replay(
    source: Annotated[
        Path,
        typer.Argument(
            help="Recorded stream: JSONL events, Parquet events, or CSV (events table, or a "
            "timestamp,value[,entity_id] metric series).",
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Decisions file; .jsonl, .parquet or .csv picks the format. Rejected rows go "
            "to <name>.rejects.jsonl next to it.",
            dir_okay=False,
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="auto (from the extension), jsonl, parquet or csv.")
    ] = "auto",
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Ground truth (event_id,label; JSONL, Parquet or CSV), e.g. the side file of "
            "`anomaly generate --labels`: adds TPR, FPR and recall per type to the summary.",
            dir_okay=False,
        ),
    ] = None,
    models: Annotated[
        str,
        typer.Option(
            "--models",
            help="served: call the V2 endpoints of serving.endpoints, like the router; "
            "registry: run the versions the flags/registry select in this process.",
        ),
    ] = "served",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Events per scoring call.")
    ] = 4_096,
    timeout_ms: Annotated[
        int | None,
        typer.Option(
            "--timeout-ms",
            min=1,
            help="Deadline of each model call (served), instead of serving.endpoints.*.timeout_ms.",
        ),
    ] = None,
    summary_json: Annotated[
        Path | None,
        typer.Option("--summary-json", help="Also write the summary as JSON here.", dir_okay=False),
    ] = None,
    quiet: QuietOption = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Configuration whose ensemble, thresholds and flags decide (default: "
            "$ANOMALY_CONFIG, else config/platform.yaml if present).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Replay a recorded stream through validation, window features and the scoring core;
    write every decision with its scores (backtest thresholds before changing them)."""

    def _run() -> None:
        from services.common.logging_setup import configure_logging
        from services.replay import ReplayError, ReplayRequest, run_replay

        cfg = load_config(config)
        configure_logging("ERROR" if quiet else "WARNING", "plain")
        request = ReplayRequest(
            source=source, out=out, format=fmt, labels=labels,
            models=models,  # type: ignore[arg-type]  # checked by run_replay
            batch_size=batch_size, timeout_ms=timeout_ms,
        )  # fmt: skip
        try:
            summary = run_replay(request, cfg, (lambda _l: None) if quiet else _progress)
        except ReplayError as exc:
            raise UserError(str(exc)) from None
        if summary_json is not None:
            summary.write_json(summary_json)
        typer.echo(summary.format_table())

    run_guarded(_run)


def _progress(line: str) -> None:
    typer.echo(line, err=True)
