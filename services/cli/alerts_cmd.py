"""`anomaly pagerduty-receiver` and `anomaly alerts ...`: the local receiver and the outbox.

Registered by `services/cli/main.py`:

    app.command("pagerduty-receiver")(pagerduty_receiver)
    app.add_typer(alerts_app, name="alerts")
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import UserError, run_guarded
from services.cli.options import ConfigOption
from services.common.config import PlatformConfig, load_config
from services.common.logging_setup import configure_logging

alerts_app = typer.Typer(
    help="The alert outbox: what waits, what was refused.", no_args_is_help=True
)


def pagerduty_receiver(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65_535, help="Port to listen on.")] = 8300,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
) -> None:
    """Serve a local PagerDuty Events API v2 (POST /v2/enqueue) for demos and tests.

    Point a pagerduty sink's `url` at http://HOST:PORT/v2/enqueue. Inspect with
    GET /v2/events and /v2/incidents; inject faults with POST /control/faults.
    """

    def _run() -> None:
        configure_logging(log_level, "plain")
        from services.router.alerts.pagerduty_receiver import serve_receiver

        serve_receiver(host, port)

    run_guarded(_run)


def _outbox_path(cfg: PlatformConfig) -> Path:
    """The configured outbox file; inspecting must not create an empty one by mistake."""
    path = Path(cfg.alerts.outbox_path)
    if not path.exists():
        raise UserError(f"no outbox at {path} (alerts.outbox_path); has the router run here?")
    return path


def _sink_names(cfg: PlatformConfig) -> set[str]:
    """The sink names the router delivers to (its outbox rows are keyed by them)."""
    return {name for name, _ in cfg.alerts.named_sinks()}


@alerts_app.command("outbox")
def alerts_outbox(
    config: ConfigOption = None,
    dead: Annotated[int, typer.Option(min=0, help="Most recent dead alerts to list.")] = 10,
) -> None:
    """Pending, delivered and dead alerts per sink, and the latest refusals."""

    def _run() -> None:
        from services.router.alerts.outbox import Outbox

        cfg = load_config(config)
        path = _outbox_path(cfg)
        configured = _sink_names(cfg)
        with Outbox(path) as outbox:
            stats = outbox.stats()
            entries = outbox.dead(limit=dead) if dead else []
        if not stats:
            typer.echo(f"{path}: empty")
        for sink, s in sorted(stats.items()):
            orphan = ""
            if sink not in configured and (s.pending or s.dead):
                orphan = f"  NOT CONFIGURED: `anomaly alerts reassign {sink} <sink>` hands these on"
            typer.echo(
                f"{sink:<24} pending={s.pending:<8} delivered={s.delivered:<8} dead={s.dead}"
                f"{orphan}"
            )
        for e in entries:
            when = datetime.fromtimestamp(e.updated_at, tz=UTC).isoformat(timespec="seconds")
            typer.echo(
                f"dead  {when}  {e.sink}  event={e.event_id}  attempts={e.attempts}  "
                f"status={e.last_status}  {e.last_error}"
            )

    run_guarded(_run)


@alerts_app.command("retry-dead")
def alerts_retry_dead(
    config: ConfigOption = None,
    sink: Annotated[str | None, typer.Option(help="Only this sink (default: all).")] = None,
) -> None:
    """Make dead alerts pending again, after fixing what made the sink refuse them."""

    def _run() -> None:
        from services.router.alerts.outbox import Outbox

        path = _outbox_path(load_config(config))
        with Outbox(path) as outbox:
            count = outbox.retry_dead(sink)
        typer.echo(f"{count} alert deliveries pending again (the running router picks them up)")

    run_guarded(_run)


@alerts_app.command("reassign")
def alerts_reassign(
    old: Annotated[str, typer.Argument(help="Sink name no longer configured.")],
    new: Annotated[str, typer.Argument(help="Configured sink that takes its alerts.")],
    config: ConfigOption = None,
) -> None:
    """Hand the undelivered alerts of a renamed or removed sink to a configured one."""

    def _run() -> None:
        from services.router.alerts.outbox import Outbox

        cfg = load_config(config)
        configured = sorted(_sink_names(cfg))
        if new not in configured:
            raise UserError(
                f"{new!r} is not a configured sink (alerts.sinks: {', '.join(configured)})"
            )
        if old in configured:
            raise UserError(f"{old!r} is still configured: its own dispatcher delivers its alerts")
        path = _outbox_path(cfg)
        with Outbox(path) as outbox:
            moved, left = outbox.reassign(old, new)
        typer.echo(
            f"{moved} alert deliveries of {old} handed to {new} (the running router picks "
            "them up)"
            + (f"; {left} left under {old}: {new} already has a delivery for them" if left else "")
        )

    run_guarded(_run)
