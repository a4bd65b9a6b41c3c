"""`anomaly serve <model|all>`: V2 model servers (REST + gRPC) for registry models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer

from services.cli.errors import UserError, run_guarded
from services.common.config import PlatformConfig, load_config
from services.common.logging_setup import configure_logging
from services.common.model_names import ModelName


def _ports(cfg: PlatformConfig, name: ModelName) -> tuple[int, int]:
    endpoint = cfg.serving.endpoints.get(name)
    if endpoint is None or endpoint.grpc_target is None:
        raise UserError(f"serving.endpoints.{name.value} needs rest_url and grpc_target")
    http = urlparse(endpoint.rest_url).port or 80
    grpc = int(endpoint.grpc_target.rsplit(":", 1)[1])
    return http, grpc


def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="isolation_forest, xgboost, transformer, a comma list served by one process "
            "on one port pair, or all (one process per model, ports from the configuration)"
        ),
    ],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Configuration file.", dir_okay=False)
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="REST port (default: from serving.endpoints)")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default: from serving.endpoints)")
    ] = None,
    versions: Annotated[
        str, typer.Option(help="default (flags/promoted/latest), all, or a list like 2,3")
    ] = "default",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """Serve registry models over the Open Inference Protocol v2 (KServe ModelServer)."""

    def _run() -> None:
        cfg = load_config(config)
        configure_logging(log_level)
        if model == "all":
            _serve_all(config, versions, log_level)
            return
        names = []
        for part in model.split(","):
            try:
                names.append(ModelName(part.strip()))
            except ValueError:
                choices = ", ".join(n.value for n in ModelName)
                raise UserError(
                    f"unknown model {part!r}; choose one of {choices}, a comma list, or all"
                ) from None
        default_http, default_grpc = _ports(cfg, names[0])
        from models.errors import RegistryError
        from services.serving.server import ServeSpec
        from services.serving.server import serve as serve_models

        try:
            serve_models(
                cfg,
                ServeSpec(names, http_port or default_http, grpc_port or default_grpc, versions),
            )
        except RegistryError as exc:
            raise UserError(str(exc)) from None

    run_guarded(_run)


def _serve_all(config: Path | None, versions: str, log_level: str) -> None:
    """One process per model (each its own ports), stopped together."""
    args = ["-c", str(config)] if config else []
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "serve",
                name.value,
                *args,
                "--versions",
                versions,
                "--log-level",
                log_level,
            ],
        )
        for name in ModelName
    ]

    def stop(_signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [p.wait() for p in procs]
    if any(codes):
        os._exit(1)
