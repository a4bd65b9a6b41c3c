"""`anomaly features ...`: the Feast repository and the `features` topic."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer

from services.cli.errors import UserError, run_guarded
from services.cli.options import ConfigOption
from services.common.config import load_config

features_app = typer.Typer(help="Feature store and feature stream.", no_args_is_help=True)


def _json_value(value: Any) -> Any:
    """`value` with its non-finite floats made JSON: NaN is null, infinities are strings.

    `json.dumps` writes NaN and Infinity as bare tokens that jq, orjson and browsers refuse.
    NaN is how the store reads back a missing value, so it becomes null (as in the router's
    `/features` answer); an infinity is a stored value, kept apart from a missing one as
    "Infinity" / "-Infinity" (which `float()` reads back).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(_json_value(value), indent=indent, allow_nan=False)


@features_app.command("apply")
def features_apply(config: ConfigOption = None) -> None:
    """Register the entity, feature view and push source in the Feast registry (`feast apply`)."""

    def _run() -> None:
        from services.common.feast_store import FeatureStoreError, apply

        cfg = load_config(config)
        try:
            apply(cfg.feast)
        except FeatureStoreError as exc:
            raise UserError(str(exc)) from None
        typer.echo(f"applied feature definitions to project {cfg.feast.project!r}")

    run_guarded(_run)


@features_app.command("get")
def features_get(entity_id: str, config: ConfigOption = None) -> None:
    """Print the online features of one entity (what the router reads)."""

    def _run() -> None:
        from services.common.feast_store import FeatureStoreError, OnlineFeatureReader, open_store

        cfg = load_config(config)
        try:
            row = OnlineFeatureReader(open_store(cfg.feast), cfg.feast).read_one(entity_id)
        except FeatureStoreError as exc:
            raise UserError(str(exc)) from None
        if row is None:
            raise UserError(f"no online features for entity {entity_id!r}")
        typer.echo(_dumps(row, indent=2))

    run_guarded(_run)


@features_app.command("tail")
def features_tail(
    config: ConfigOption = None,
    count: Annotated[int, typer.Option(min=1, help="Messages to print.")] = 10,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for them (at least 0.1).")
    ] = 10.0,
) -> None:
    """Print the newest messages of the `features` topic as JSON lines."""

    def _run() -> None:
        import time
        import uuid

        from confluent_kafka import OFFSET_END, TopicPartition

        from services.common.features.messages import feature_message_as_json
        from services.common.kafka.clients import make_consumer

        cfg = load_config(config)
        topic = cfg.kafka.topics.features.name
        consumer = make_consumer(cfg.kafka, "tail", f"anomaly-tail-{uuid.uuid4().hex[:8]}")
        try:
            meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
            if meta is None or meta.error is not None:
                raise UserError(f"topic {topic!r} not found (run `anomaly topics create`)")
            assigned = []
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
                start = max(low, high - count) if high > low else OFFSET_END
                assigned.append(TopicPartition(topic, p, start))
            consumer.assign(assigned)
            printed = 0
            deadline = time.monotonic() + timeout
            while printed < count and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=count - printed, timeout=0.5):
                    if msg.error() is None:
                        value = msg.value() or b""
                        typer.echo(_dumps(feature_message_as_json(msg.key(), value)))
                        printed += 1
            if printed < count:  # a quiet topic: say so rather than end as if all came
                typer.echo(f"{printed} of {count} messages within {timeout:g} s", err=True)
        finally:
            consumer.close()

    run_guarded(_run)
