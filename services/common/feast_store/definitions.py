"""The Feast objects of the platform: one entity, one push-fed feature view, one service.

They are built here, in an importable package, rather than only in `feature_repo/`, so that
`feast apply` (which imports `feature_repo/definitions.py`, a thin re-export) and our own
`apply()` register exactly the same objects, and the writer and reader can check the
registry against them. The fields come from `FEATURE_NAMES`, the platform's one feature
definition, so a feature added there reaches Feast without a second list to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.feast_object import FeastObject
from feast.types import Float32, String
from feast.value_type import ValueType

from services.common.features.definition import (
    FEATURE_DOCS,
    FEATURE_NAMES,
    feature_schema_hash,
)

ENTITY_NAME: Final = "entity"
JOIN_KEY: Final = "entity_id"
FEATURE_VIEW_NAME: Final = "entity_window_features"
PUSH_SOURCE_NAME: Final = "entity_window_features_push"
FEATURE_SERVICE_NAME: Final = "router_features"
TIMESTAMP_FIELD: Final = "event_ts"
"""Event time of the row; Feast stores it per entity next to the values (not a feature)."""

FEATURE_TTL: Final = timedelta(hours=2)
"""Longer than the widest window (1 h): older rows describe an entity that went quiet.

Feast applies the TTL to offline (point-in-time) retrieval; online reads return the latest
row whatever its age, so staleness online is bounded by Redis' `key_ttl_seconds` or by the
reader's caller looking at the event time.
"""

OFFLINE_PATH: Final = "../var/feast/offline/entity_window_features.parquet"
"""Batch source behind the push source, relative to the Feast repo (the `var/` of the
platform). It only matters for historical retrieval; it need not exist for online use."""


@dataclass(frozen=True, slots=True)
class FeastDefinitions:
    """The objects `apply()` registers, in the order Feast wants them."""

    entity: Entity
    batch_source: FileSource
    push_source: PushSource
    feature_view: FeatureView
    feature_service: FeatureService

    def all(self) -> list[FeastObject]:
        """Everything to pass to `FeatureStore.apply`."""
        return [
            self.entity,
            self.batch_source,
            self.push_source,
            self.feature_view,
            self.feature_service,
        ]


def build_definitions(offline_path: str = OFFLINE_PATH) -> FeastDefinitions:
    """Build fresh Feast objects (they are mutable, so each caller gets its own)."""
    entity = Entity(
        name=ENTITY_NAME,
        join_keys=[JOIN_KEY],
        value_type=ValueType.STRING,
        description="A payment account or traded instrument: the key of the `events` topic.",
    )
    batch_source = FileSource(
        name="entity_window_features_batch",
        path=offline_path,
        timestamp_field=TIMESTAMP_FIELD,
        description="Offline copy of pushed feature rows (historical retrieval only).",
    )
    push_source = PushSource(
        name=PUSH_SOURCE_NAME,
        batch_source=batch_source,
        description="Streaming writes from the ingest service (latest row per entity).",
    )
    feature_view = FeatureView(
        name=FEATURE_VIEW_NAME,
        entities=[entity],
        ttl=FEATURE_TTL,
        schema=[
            Field(name=JOIN_KEY, dtype=String),
            *(
                Field(name=name, dtype=Float32, description=FEATURE_DOCS[name])
                for name in FEATURE_NAMES
            ),
        ],
        source=push_source,
        online=True,
        description="Rolling per-entity window features, latest value per entity.",
        tags={"feature_schema_hash": feature_schema_hash()},
    )
    feature_service = FeatureService(
        name=FEATURE_SERVICE_NAME,
        features=[feature_view],
        description="What the router reads to score an event that arrives without features.",
    )
    return FeastDefinitions(entity, batch_source, push_source, feature_view, feature_service)
