"""The router's REST and gRPC doors on real ports, over real model servers and a real Feast
online store: scoring by entity and by features, flags hot-reloaded from the file (version
pins, disabled models), a model outage, auth, and an OpenAPI fuzz run that must find no 5xx.

One model-server process serves all three models (every xgboost version side by side); the
doors run as the router runs them: REST (uvicorn) and gRPC in one event loop, here in a
background thread, with the configuration reloader watching the file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
import schemathesis
import uvicorn
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from local_kafka import free_port
from prometheus_client import CollectorRegistry
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.common.config import load_config, parse_config
from services.common.feast_store import (
    OnlineFeatureReader,
    OnlineFeatureWriter,
    apply,
    open_store,
)
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.router import proto
from services.router.config_reload import ConfigReloader
from services.router.core import LiveConfig, ScoringCore
from services.router.grpc_door import create_grpc_server
from services.router.metrics import RouterMetrics
from services.router.model_clients import CircuitBreaker, V2ModelClient
from services.router.rest import create_app
from tests.integration.conftest import ModelServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key-0123456789"
AUTH = {"X-API-Key": KEY}
ENTITIES = [f"acct-{i:04d}" for i in range(20)]
ALL_MODELS = {m.value for m in ModelName}
T = TypeVar("T")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_target(model_server: ModelServer) -> str:
    """gRPC target of the session's model server (all three models, every version)."""
    return model_server.grpc


def platform_config(
    work: Path,
    grpc_target: str,
    *,
    down: ModelName | None = None,
    flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    endpoints = {
        m.value: {
            "rest_url": "http://127.0.0.1:1",  # the router speaks gRPC to the models
            "grpc_target": f"127.0.0.1:{free_port()}" if m is down else grpc_target,
            "timeout_ms": 5_000,
        }
        for m in ModelName
    }
    return {
        "serving": {"endpoints": endpoints},
        "feast": {
            "repo_path": str(ROOT / "feature_repo"),
            "project": "router_doors",
            "registry_path": str(work / "registry.db"),
            "online_store": {"type": "sqlite", "path": str(work / "online.db")},
        },
        "router": {"api_keys": [KEY], "max_batch_items": 200},
        "flags": flags or {},
    }


@pytest.fixture(scope="module")
def online_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, npt.NDArray[np.float32]]:
    """An applied Feast repo on SQLite holding the latest features of ENTITIES."""
    work = tmp_path_factory.mktemp("feast")
    cfg = parse_config(platform_config(work, "127.0.0.1:1"), "test")
    apply(cfg.feast)
    rng = np.random.default_rng(7)
    matrix = rng.lognormal(0, 1, (len(ENTITIES), len(FEATURE_NAMES))).astype(np.float32)
    writer = OnlineFeatureWriter(open_store(cfg.feast), cfg.feast)
    writer.write_latest(ENTITIES, np.full(len(ENTITIES), 1_700_000_000_000, np.int64), matrix)
    return work, matrix


class Router:
    """REST and gRPC doors over one core in one event loop (a background thread), with the
    reloader watching `config_path`: what the router process runs."""

    def __init__(self, config_path: Path, *, reload: bool = True) -> None:
        self.config_path = config_path
        cfg = load_config(config_path)
        self.live = LiveConfig(cfg)
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self.reader = OnlineFeatureReader(open_store(cfg.feast), cfg.feast)
        self.http_port, self.grpc_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())
        self.reloader = (
            ConfigReloader(config_path, self.live, self.metrics, interval_s=0.2).start()
            if reload
            else None
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> None:
        cfg = self.live.get()
        self.clients = {
            m: V2ModelClient(m, endpoint, CircuitBreaker())
            for m, endpoint in cfg.serving.endpoints.items()
        }
        core = ScoringCore(self.live, self.clients, metrics=self.metrics)
        ready = lambda: (True, "ok")  # noqa: E731
        app = create_app(core, self.reader, self.live, self.metrics, ready, registry=self.registry)
        self.http = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.http_port, log_level="warning")
        )
        self.serving = asyncio.create_task(self.http.serve())
        self.grpc = create_grpc_server(
            core, self.reader, self.live, self.metrics, self.grpc_port, ready=ready
        )
        await self.grpc.start()
        while not self.http.started:
            assert not self.serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)

    async def _stop(self) -> None:
        self.http.should_exit = True
        await self.serving
        await self.grpc.stop(None)
        for client in self.clients.values():
            await client.close()

    def close(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def score(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.base}/v1/score", json=body, headers=AUTH if headers is None
                          else headers, timeout=30)  # fmt: skip

    def decisions(self, body: Any) -> list[dict[str, Any]]:
        r = self.score(body)
        assert r.status_code == 200, r.text
        decisions: list[dict[str, Any]] = r.json()["decisions"]
        return decisions

    def grpc_score(
        self, request: Any, metadata: tuple[tuple[str, str], ...] = (("x-api-key", KEY),)
    ) -> Any:
        async def call() -> Any:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                stub = proto.load().grpc.ScoringStub(channel)
                return await stub.Score(request, metadata=metadata, timeout=30)

        return asyncio.run(call())

    def write_flags(self, flags: dict[str, Any]) -> None:
        data = yaml.safe_load(self.config_path.read_text())
        data["flags"] = flags
        self.config_path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def router(
    model_target: str, online_rows: tuple[Path, npt.NDArray[np.float32]]
) -> Iterator[Router]:
    work, _ = online_rows
    path = work / "platform.yaml"
    path.write_text(yaml.safe_dump(platform_config(work, model_target)))
    stack = Router(path)
    yield stack
    stack.close()


@pytest.fixture
def flags(router: Router) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Write flags to the watched file; the defaults are written back afterwards."""
    yield router.write_flags
    router.write_flags({})
    deadline = time.monotonic() + 5
    while router.live.get().flags != load_config(router.config_path).flags:
        assert time.monotonic() < deadline, "defaults not reloaded"
        time.sleep(0.05)


def eventually(check: Callable[[], T | None], timeout_s: float = 5.0) -> T:
    """Poll until `check` returns something (the reloader needs one interval or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# --------------------------------------------------------------------------- scoring


def test_scoring_by_entity_reads_the_store_and_asks_every_model(
    router: Router, online_rows: tuple[Path, npt.NDArray[np.float32]]
) -> None:
    _, matrix = online_rows
    by_entity = router.decisions({"items": [{"entity_id": e} for e in ENTITIES[:5]]})
    assert [d["entity_id"] for d in by_entity] == ENTITIES[:5]
    for d in by_entity:
        assert d["degraded"] is False
        assert set(d["model_versions"]) == ALL_MODELS
        assert all(d["model_scores"][m] is not None for m in ALL_MODELS)
        assert d["model_versions"]["xgboost"] == "2"  # the latest, unless pinned

    # The same rows sent explicitly give the same scores: the store path is the feature path.
    explicit = router.decisions(
        {"items": [{"entity_id": e, "features": dict(zip(FEATURE_NAMES, row.tolist(), strict=True))}
                   for e, row in zip(ENTITIES[:5], matrix[:5], strict=True)]}
    )  # fmt: skip
    for a, b in zip(by_entity, explicit, strict=True):
        assert a["model_scores"] == b["model_scores"]

    stored = httpx.get(f"{router.base}/v1/entities/{ENTITIES[0]}/features", headers=AUTH).json()
    assert [np.float32(v) for v in stored["features"].values()] == list(matrix[0])


def test_grpc_door_gives_the_rest_answers(
    router: Router, online_rows: tuple[Path, npt.NDArray[np.float32]]
) -> None:
    _, matrix = online_rows
    pb2 = proto.load().pb2
    request = pb2.ScoreRequest(items=[
        pb2.ScoreItem(entity_id=ENTITIES[1]),
        pb2.ScoreItem(entity_id=ENTITIES[2], vector=pb2.FeatureVector(values=matrix[2].tolist())),
    ])  # fmt: skip
    response = router.grpc_score(request)
    rest = router.decisions({"items": [{"entity_id": ENTITIES[1]}, {"entity_id": ENTITIES[2]}]})
    for got, want in zip(response.decisions, rest, strict=True):
        assert not got.degraded
        assert dict(got.model_versions) == want["model_versions"]
        for model, score in want["model_scores"].items():
            assert got.model_scores[model] == pytest.approx(score, abs=1e-6)

    with pytest.raises(grpc.RpcError) as unknown:
        router.grpc_score(pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id="ghost")]))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_entity_is_404(router: Router) -> None:
    r = router.score({"entity_id": "ghost"})
    assert r.status_code == 404 and "'ghost'" in r.json()["error"]


# --------------------------------------------------------------------------- hot-reloaded flags


def test_version_pin_changes_the_answer_without_a_restart(
    router: Router, flags: Callable[[dict[str, Any]], None]
) -> None:
    body = {"entity_id": ENTITIES[3]}
    latest = router.decisions(body)[0]
    assert latest["model_versions"]["xgboost"] == "2"

    flags({"models": {"xgboost": {"version": "1"}}})
    pinned = eventually(
        lambda: d if (d := router.decisions(body)[0])["model_versions"]["xgboost"] == "1" else None
    )
    assert pinned["model_scores"]["xgboost"] != latest["model_scores"]["xgboost"]
    assert router.registry.get_sample_value(
        "anomaly_router_config_reloads_total", {"outcome": "applied"}
    )

    flags({"models": {"xgboost": {"version": "2"}}})
    eventually(lambda: router.decisions(body)[0]["model_versions"]["xgboost"] == "2" or None)


def test_disabled_model_leaves_the_vote(
    router: Router, flags: Callable[[dict[str, Any]], None]
) -> None:
    flags({"models": {"transformer": {"enabled": False}}})
    d = eventually(
        lambda: d if "transformer" not in (d := router.decisions({"entity_id": ENTITIES[4]})[0])[
            "model_versions"] else None
    )  # fmt: skip
    assert d["model_scores"]["transformer"] is None
    assert d["model_scores"]["xgboost"] is not None
    assert d["degraded"] is False  # switched off is not failed


# --------------------------------------------------------------------------- outage, auth


def test_model_outage_gives_degraded_decisions_not_errors(
    model_target: str, online_rows: tuple[Path, npt.NDArray[np.float32]], tmp_path: Path
) -> None:
    work, _ = online_rows
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(platform_config(work, model_target, down=ModelName.XGBOOST)))
    outage = Router(path, reload=False)
    try:
        for _ in range(2):  # the second request finds the circuit open: still an answer
            decisions = outage.decisions({"items": [{"entity_id": e} for e in ENTITIES[:3]]})
            for d in decisions:
                assert d["degraded"] is True
                assert "xgboost" not in d["model_versions"]
                assert d["model_scores"]["xgboost"] is None
                assert d["model_scores"]["isolation_forest"] is not None
        pb2 = proto.load().pb2
        response = outage.grpc_score(pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id=ENTITIES[0])]))
        assert response.decisions[0].degraded
    finally:
        outage.close()


def test_auth_is_required_on_v1_but_not_on_probes(router: Router) -> None:
    r = router.score({"entity_id": ENTITIES[0]}, headers={})
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    bearer = router.score({"entity_id": ENTITIES[0]}, headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(router.base + path).status_code == 200, path
    pb2 = proto.load().pb2
    with pytest.raises(grpc.RpcError) as info:
        router.grpc_score(pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id=ENTITIES[0])]), ())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- OpenAPI fuzzing


def test_openapi_fuzzing_finds_no_server_error(router: Router) -> None:
    """Schema-valid and schema-invalid requests against every operation: never a 5xx, and
    every answer matches the published status codes, content types and schemas."""
    schema = schemathesis.openapi.from_url(f"{router.base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]  # fmt: skip
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.path.startswith("/v1/"):  # the only ones with inputs to get wrong
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(max_examples=50 if "score" in operation.path else 15, deadline=None,
                      database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(base_url=router.base, headers=AUTH, checks=checks,
                                       timeout=30)  # fmt: skip

            fuzz()
