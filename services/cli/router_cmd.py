"""`anomaly router`: the routing service (stream door; REST and gRPC doors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from services.cli.errors import run_guarded
from services.common.config import ConfigError, PlatformConfig, load_config
from services.common.config.model import RouterConfig
from services.common.logging_setup import configure_logging

_OPTIONS = {
    "stream_batch_max": "--batch-max",
    "stream_batch_timeout_ms": "--batch-timeout-ms",
    "stream_max_in_flight": "--max-in-flight",
    "stream_scoring_depth": "--scoring-depth",
}
"""The `router.*` key each stream option overrides, and the option's name in messages."""


def with_stream_options(
    cfg: PlatformConfig,
    *,
    stream_batch_max: int | None = None,
    stream_batch_timeout_ms: int | None = None,
    stream_max_in_flight: int | None = None,
    stream_scoring_depth: int | None = None,
) -> PlatformConfig:
    """`cfg` with the stream options that were given laid over `router.stream_*`.

    An option is a one-off override of the file (a benchmark, an incident), so it wins; it is
    held to the same bounds as the file, and a refused one names the option and the key.
    """
    given = {
        "stream_batch_max": stream_batch_max,
        "stream_batch_timeout_ms": stream_batch_timeout_ms,
        "stream_max_in_flight": stream_max_in_flight,
        "stream_scoring_depth": stream_scoring_depth,
    }
    update = {key: value for key, value in given.items() if value is not None}
    if not update:
        return cfg
    try:
        router = RouterConfig.model_validate({**cfg.router.model_dump(), **update})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            option = _OPTIONS.get(key, key)
            problems.append(f"{option} (router.{key}) = {err['input']!r}: {err['msg']}")
        raise ConfigError("`anomaly router` options", problems) from None
    return cfg.model_copy(update={"router": router})


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
        int | None,
        typer.Option(
            help="Stream door: most feature vectors scored per batch "
            "(default: router.stream_batch_max)."
        ),
    ] = None,
    batch_timeout_ms: Annotated[
        int | None,
        typer.Option(
            help="Stream door: longest wait to fill a batch "
            "(default: router.stream_batch_timeout_ms)."
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Stream door: batches produced but not yet acknowledged (and committed) "
            "before it waits for the broker; bounds re-scoring after a crash "
            "(default: router.stream_max_in_flight).",
        ),
    ] = None,
    scoring_depth: Annotated[
        int | None,
        typer.Option(
            help="Stream door: batches whose model calls may be in flight at once; decisions "
            "still leave in order (default: router.stream_scoring_depth).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """The routing service: the `features` stream (decisions to `scores`, alerts through the
    durable outbox) and the REST (`POST /v1/score`) and gRPC (`anomaly.v1.Scoring`) doors.
    Feature flags in the configuration file are hot-reloaded."""

    def _run() -> None:
        from services.common.config.loader import resolve_config_path

        cfg = with_stream_options(
            load_config(config),
            stream_batch_max=batch_max,
            stream_batch_timeout_ms=batch_timeout_ms,
            stream_max_in_flight=max_in_flight,
            stream_scoring_depth=scoring_depth,
        )
        configure_logging(log_level)
        from services.router.runner import run_router

        run_router(cfg, resolve_config_path(config), stream=stream, doors=doors, group_id=group_id)

    run_guarded(_run)
