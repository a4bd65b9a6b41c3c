"""A small trained model registry shared by the serving and routing tests.

Trained once per session on a generated stream (seconds, not minutes: small forests, few
boosting rounds, one Transformer epoch). XGBoost is published twice so that tests can serve
two versions side by side.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from models.dataset import features_from_events, parse_raw_events
from models.isolation_forest import IsolationForestSettings
from models.registry import Registry
from models.training import TrainSettings, publish, train_all
from models.transformer import TransformerSettings
from models.xgb_classifier import XGBoostSettings
from services.common.model_names import ModelName
from services.generator import StreamSpec, generate_batch


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Registry with isolation_forest v1, xgboost v1 and v2, transformer v1."""
    root = tmp_path_factory.mktemp("model_store")
    batch = generate_batch(StreamSpec(seed=5, entities=300, anomaly_rate=0.03), 20_000)
    labels = {label["event_id"]: label["label"] for label in batch.labels}
    data = features_from_events([parse_raw_events(batch.values)], labels)
    settings = TrainSettings(
        seed=1,
        isolation_forest=IsolationForestSettings(n_estimators=30, max_samples=256),
        xgboost=XGBoostSettings(n_rounds=20, max_depth=4, threads=1),
        transformer=TransformerSettings(epochs=1, max_sequences=3_000, device="cpu"),
    )
    registry = Registry(root)
    trained = train_all(data, settings, registry)
    second = train_all(data, replace(settings, seed=2, models=(ModelName.XGBOOST,)))[
        ModelName.XGBOOST
    ]
    publish(registry, second)
    assert trained.keys() == set(ModelName)
    return root
