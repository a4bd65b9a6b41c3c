"""A batch on which every model fails still gets one (degraded) decision per event.

The clients are real V2 gRPC clients aimed at a port nobody listens on: the failure is the
real one (UNAVAILABLE), not a stand-in.
"""

from __future__ import annotations

import asyncio

import numpy as np
from local_kafka import free_port
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig, parse_config
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics
from services.router.model_clients import CircuitBreaker, V2ModelClient


def test_every_model_down_gives_degraded_decisions_not_an_index_error() -> None:
    endpoint = {"rest_url": "http://127.0.0.1:1", "grpc_target": f"127.0.0.1:{free_port()}",
                "timeout_ms": 2_000, "retries": 0}  # fmt: skip
    for strategy in ("weighted", "cascade"):
        cfg = parse_config(
            {"serving": {"endpoints": {m.value: endpoint for m in ModelName}},
             "ensemble": {"strategy": strategy}}, "test",
        )  # fmt: skip

        async def score(cfg: PlatformConfig = cfg) -> list[dict[str, object]]:
            clients = {m: V2ModelClient(m, cfg.serving.endpoints[m], CircuitBreaker())
                       for m in ModelName}  # fmt: skip
            core = ScoringCore(LiveConfig(cfg), clients,
                               metrics=RouterMetrics(CollectorRegistry()))  # fmt: skip
            try:
                batch = await core.score(["e1", "e2"], ["a", "b"],
                                         np.ones((2, len(FEATURE_NAMES)), np.float32))  # fmt: skip
                assert set(batch.errors) == set(ModelName)
                return [batch.record(i) for i in range(len(batch))]
            finally:
                for client in clients.values():
                    await client.close()

        records = asyncio.run(score())
        assert [r["event_id"] for r in records] == ["e1", "e2"]
        for r in records:
            assert r["degraded"] is True and r["anomalous"] is False and r["score"] is None
            assert r["model_scores"] == dict.fromkeys((m.value for m in ModelName), None)
