"""`anomaly generate`: parse options, load the configuration, call `services.generator`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import UserError, run_guarded
from services.cli.options import ConfigOption, QuietOption
from services.common.config import load_config
from services.generator import (
    GenerateOptions,
    GeneratorError,
    Progress,
    build_request,
    format_progress,
    format_summary,
)
from services.generator import generate as run_generator

DELIVERY_FAILED_EXIT_CODE = 1


def generate(
    to: Annotated[
        str,
        typer.Option("--to", help="Output: kafka, jsonl, parquet, or null (discard; benchmarks)."),
    ] = "kafka",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output file for --to jsonl/parquet.", dir_okay=False),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Ground-truth side file; .jsonl/.ndjson or .parquet picks the format.",
            dir_okay=False,
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            help="Events per second of event time; Kafka output is paced to it "
            "(0 = as fast as possible).",
        ),
    ] = 1_000.0,
    seconds: Annotated[
        float | None,
        typer.Option(
            "--seconds",
            help="Run length: wall-clock seconds for Kafka, event-time seconds for files.",
        ),
    ] = None,
    events: Annotated[
        int | None, typer.Option("--events", help="Stop after this many events.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Random seed (default: generator.seed of the config)."),
    ] = None,
    entities: Annotated[
        int | None,
        typer.Option(
            "--entities", help="Number of entities (default: generator.entities of the config)."
        ),
    ] = None,
    anomaly_rate: Annotated[
        float | None,
        typer.Option(
            "--anomaly-rate",
            help="Fraction of events that are anomalies "
            "(default: generator.anomaly_rate of the config).",
        ),
    ] = None,
    payment_share: Annotated[
        float | None,
        typer.Option(
            "--payment-share",
            help="Fraction of entities that are payment accounts "
            "(default: generator.payment_share of the config).",
        ),
    ] = None,
    start_ts: Annotated[
        str | None,
        typer.Option(
            "--start-ts",
            help="Event time of the first event: ms since the epoch or ISO-8601 "
            "(default: now for Kafka, 2026-01-05T00:00:00Z for files).",
        ),
    ] = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Generate a labelled synthetic event stream (deterministic for a given seed)."""
    failed = False

    def _run() -> None:
        nonlocal failed
        cfg = load_config(config)
        options = GenerateOptions(
            to=to, out=out, labels=labels, rate=rate, seconds=seconds, events=events,
            seed=seed, entities=entities, anomaly_rate=anomaly_rate,
            payment_share=payment_share, start_ts=start_ts,
        )  # fmt: skip
        try:
            request = build_request(options, cfg.generator)
            result = run_generator(request, cfg.kafka, None if quiet else _print_progress)
        except GeneratorError as exc:
            raise UserError(str(exc)) from None
        typer.echo(format_summary(result))
        failed = result.delivery_errors > 0

    run_guarded(_run)
    if failed:
        raise typer.Exit(DELIVERY_FAILED_EXIT_CODE)


def _print_progress(progress: Progress) -> None:
    typer.echo(format_progress(progress), err=True)
