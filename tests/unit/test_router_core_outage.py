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


def test_an_idle_voter_is_not_called_so_its_outage_degrades_nothing() -> None:
    """Weight 0 under `weighted`: the Isolation Forest's endpoint is down, yet no decision
    is degraded and no call is attempted (no error recorded); with weight 1 the same outage
    degrades every decision. XGBoost and the Transformer are down too: the shape of the
    answer, not the scores, is what is checked."""
    down = {"rest_url": "http://127.0.0.1:1", "grpc_target": f"127.0.0.1:{free_port()}",
            "timeout_ms": 2_000, "retries": 0}  # fmt: skip
    results = {}
    for weight in (0.0, 1.0):
        cfg = parse_config(
            {"serving": {"endpoints": {m.value: down for m in ModelName}},
             "ensemble": {"strategy": "weighted",
                          "weights": {"isolation_forest": weight, "xgboost": 2.0,
                                      "transformer": 0.5}}}, "test",
        )  # fmt: skip

        async def score(cfg: PlatformConfig = cfg) -> tuple[set[ModelName], list[bool]]:
            clients = {m: V2ModelClient(m, cfg.serving.endpoints[m], CircuitBreaker())
                       for m in ModelName}  # fmt: skip
            core = ScoringCore(LiveConfig(cfg), clients,
                               metrics=RouterMetrics(CollectorRegistry()))  # fmt: skip
            try:
                batch = await core.score(
                    ["e1"], ["a"], np.ones((1, len(FEATURE_NAMES)), np.float32)
                )
                return set(batch.errors), [bool(batch.record(0)["degraded"])]
            finally:
                for client in clients.values():
                    await client.close()

        results[weight] = asyncio.run(score())
    errors_idle, _ = results[0.0]
    errors_voting, degraded_voting = results[1.0]
    assert ModelName.ISOLATION_FOREST not in errors_idle
    assert errors_idle == {ModelName.XGBOOST, ModelName.TRANSFORMER}
    assert errors_voting == set(ModelName) and degraded_voting == [True]
