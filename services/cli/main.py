"""Entry point of the `anomaly` command.

Each subcommand parses its arguments, loads the configuration and calls into a package.
User mistakes (bad configuration, unreachable broker) end with a one-line message and
exit code 2, never a traceback; bugs still show their traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
import yaml

from services.cli.alerts_cmd import alerts_app, pagerduty_receiver
from services.cli.errors import UserError, run_guarded
from services.cli.features_cmd import features_app
from services.cli.generate_cmd import generate
from services.cli.ingest_cmd import ingest
from services.cli.models_cmd import evaluate, models_app, train
from services.cli.options import ConfigOption
from services.cli.replay_cmd import replay
from services.cli.router_cmd import router
from services.cli.serve_cmd import serve
from services.common.config import ConfigError, dump_config, load_config
from services.common.events import event_json_schema

app = typer.Typer(
    name="anomaly",
    help="Real-time anomaly detection: Kafka -> window features -> model ensemble -> alerts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect and check the platform configuration.", no_args_is_help=True)
topics_app = typer.Typer(help="Manage the pipeline's Kafka topics.", no_args_is_help=True)
schema_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")
app.add_typer(features_app, name="features")
app.command("generate")(generate)
app.command("ingest")(ingest)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.add_typer(models_app, name="models")
app.command("serve")(serve)
app.command("router")(router)
app.command("pagerduty-receiver")(pagerduty_receiver)
app.add_typer(alerts_app, name="alerts")
app.command("replay")(replay)


@config_app.command("validate")
def config_validate(config: ConfigOption = None) -> None:
    """Check a configuration file (with ANOMALY_* overrides); exit 2 and list every problem."""

    def _run() -> None:
        load_config(config)
        typer.echo("configuration is valid")

    run_guarded(_run)


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="yaml or json")] = "yaml",
) -> None:
    """Print the effective configuration (defaults + file + environment); secrets are masked."""

    def _run() -> None:
        if output not in ("yaml", "json"):
            raise UserError(f"--output must be yaml or json, got {output!r}")
        data = dump_config(load_config(config))
        if output == "json":
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())

    run_guarded(_run)


@topics_app.command("create")
def topics_create(
    config: ConfigOption = None,
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Override every topic's partition count (small local runs)."),
    ] = None,
) -> None:
    """Create `events`, `features`, `scores`, `alerts`, `events.dlq` and `events.labels`.

    Idempotent: existing topics are reported, not recreated.
    """
    from services.common.kafka.clients import make_admin
    from services.common.kafka.topics import TopicAdminError, ensure_topics, pipeline_topics

    def _run() -> None:
        cfg = load_config(config)
        admin = make_admin(cfg.kafka)
        try:
            outcomes = ensure_topics(
                admin,
                pipeline_topics(cfg.kafka.topics),
                replication_factor=cfg.kafka.topics.replication_factor,
                partitions=partitions,
            )
        except TopicAdminError as exc:
            raise UserError(f"{exc} (is the broker at {cfg.kafka.bootstrap_servers} up?)") from None
        for o in outcomes:
            extra = f" ({o.detail})" if o.detail else ""
            typer.echo(f"{o.name:<16} {o.status:<24} partitions={o.partitions}{extra}")

    run_guarded(_run)


@schema_app.command("show")
def schema_show() -> None:
    """Print the JSON Schema of events on the `events` topic."""
    typer.echo(json.dumps(event_json_schema(), indent=2))


__all__ = ["ConfigError", "app"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
