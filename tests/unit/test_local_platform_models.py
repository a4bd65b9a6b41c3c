"""The main job's check of the registered models against the traffic it is about to stream."""

from __future__ import annotations

from pathlib import Path

import local_platform
import numpy as np

from models.dataset import LabelledFeatures
from models.registry import Registry
from services.common.config import PlatformConfig
from services.common.config.model import FeatureFlags, ModelFlag
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from tests.unit.test_models_registry import _stage


def _publish(registry: Registry, name: ModelName, events_per_s: float | None) -> str:
    return registry.publish(name, _stage(training_data={"events_per_s": events_per_s}))


def test_models_trained_at_another_event_rate_are_named_with_the_fix(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for name in ModelName:
        _publish(registry, name, 1_000.0)
    _publish(registry, ModelName.XGBOOST, 5_000.0)  # v2, the latest, serves by default
    config = PlatformConfig()
    warned = local_platform.rate_mismatches(registry, config, 5_000.0)
    assert [line.split()[0:2] for line in warned] == [
        ["isolation_forest", "v1"],
        ["transformer", "v1"],
    ]
    assert "--event-rate 5000" in warned[0] and "1,000 events/s" in warned[0]
    slower = local_platform.rate_mismatches(registry, config, 1_500.0)
    assert [line.split()[0:2] for line in slower] == [["xgboost", "v2"]]
    # The version the flags pin is the one checked.
    pinned = config.model_copy(
        update={"flags": FeatureFlags(models={ModelName.XGBOOST: ModelFlag(version="1")})}
    )
    assert len(local_platform.rate_mismatches(registry, pinned, 5_000.0)) == 3
    # Versions that recorded no rate (older ones, files without timestamps) say nothing.
    bare = Registry(tmp_path / "bare")
    for name in ModelName:
        _publish(bare, name, None)
    assert local_platform.rate_mismatches(bare, config, 50_000.0) == []


def test_the_recorded_rate_is_events_per_second_of_event_time() -> None:
    n = 5_000
    data = LabelledFeatures(
        matrix=np.zeros((n, len(FEATURE_NAMES)), np.float32),
        labels=np.zeros(n, np.int8),
        entity=np.zeros(n, np.int64),
        ts=1_767_571_200_000 + np.arange(n, dtype=np.int64) * 4,  # one event per 4 ms
    )
    assert data.events_per_s() == 250.0
    assert (
        LabelledFeatures(data.matrix[:1], data.labels[:1], data.entity[:1]).events_per_s() is None
    )


def test_versions_of_an_older_feature_schema_are_named_for_retraining(tmp_path: Path) -> None:
    """After an upgrade that changed the window features, the main job retrains instead of
    starting model servers that refuse every registered version."""
    registry = Registry(tmp_path)
    for name in ModelName:
        registry.publish(name, _stage(schema="0123456789abcdef"))  # an older schema
    config = PlatformConfig()
    assert local_platform.stale_schema_models(registry, config) == [
        "isolation_forest v1", "xgboost v1", "transformer v1"
    ]  # fmt: skip
    for name in ModelName:
        registry.publish(name, _stage())  # v2 on this code's schema, the latest
    assert local_platform.stale_schema_models(registry, config) == []
    pinned = PlatformConfig(flags=FeatureFlags(models={ModelName.XGBOOST: ModelFlag(version="1")}))
    assert local_platform.stale_schema_models(registry, pinned) == []  # a pin is the user's
