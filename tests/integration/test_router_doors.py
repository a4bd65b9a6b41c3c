"""The router's REST and gRPC doors on real ports, over real model servers and a real Feast
online store: scoring by entity and by features, flags hot-reloaded from the file (version
pins, disabled models), a model outage, validation, limits and auth through both doors (the
same message for the same mistake), gRPC health, and an OpenAPI fuzz run that must find no
5xx.

One model-server process serves all three models (every xgboost version side by side); the
doors run as the router runs them: REST (uvicorn) and gRPC in one event loop, here in a
background thread, with the configuration reloader watching the file. One router serves the
whole module; tests that need other settings (an outage) start their own.
"""

from __future__ import annotations

import asyncio
import json
import math
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
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
from services.router.schemas import Decision
from tests.integration.conftest import ModelServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key-0123456789"
ROTATED = "second-key-for-rotation"
AUTH = {"X-API-Key": KEY}
ENTITIES = [f"acct-{i:04d}" for i in range(20)]
GAP = "acct-gap"
"""Stored with one feature missing (null in the store)."""
MAX_ITEMS = 200
MAX_BODY = 65_536
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
        "router": {
            "api_keys": [KEY, ROTATED],
            "max_batch_items": MAX_ITEMS,
            "max_body_bytes": MAX_BODY,
        },
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
    gap = np.ones((1, len(FEATURE_NAMES)), np.float32)
    gap[0, 3] = np.nan
    writer.write_latest([GAP], np.array([1_700_000_000_000], np.int64), gap)
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
        self.core = core
        self.is_ready = True

        def ready() -> tuple[bool, str]:
            return (self.is_ready, "ok" if self.is_ready else "model servers not reachable")

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

    def score_raw(self, content: Any) -> httpx.Response:
        """A body sent as it is (not JSON-encoded by the client)."""
        headers = {**AUTH, "content-type": "application/json"}
        return httpx.post(f"{self.base}/v1/score", content=content, headers=headers, timeout=30)

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


def test_auth_by_api_key_or_bearer_on_v1_only(router: Router) -> None:
    body = {"entity_id": ENTITIES[0]}

    def post(headers: dict[str, str]) -> httpx.Response:
        return router.score(body, headers=headers)

    r = {
        "none": post({}),
        "wrong": post({"X-API-Key": "nope"}),
        "basic": post({"Authorization": "Basic x"}),
        "key": post(AUTH),
        "bearer": post({"Authorization": f"bearer {KEY}"}),
        "rotated": post({"X-API-Key": ROTATED}),
        "features": httpx.get(f"{router.base}/v1/entities/{ENTITIES[0]}/features"),
        **{p: httpx.get(router.base + p) for p in ("/healthz", "/readyz", "/metrics",
                                                     "/openapi.json")},
    }  # fmt: skip
    for name in ("none", "wrong", "basic", "features"):
        assert r[name].status_code == 401, name
        assert r[name].headers["www-authenticate"].startswith("Bearer")
    assert "authentication required" in r["none"].json()["error"]
    assert "invalid" in r["wrong"].json()["error"]
    for name in ("key", "bearer", "rotated", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert r[name].status_code == 200, name
    schemes = r["/openapi.json"].json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert "anomaly_router_decisions_total" in r["/metrics"].text


def test_grpc_auth_by_metadata(router: Router) -> None:
    pb2 = proto.load().pb2
    request = pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id=ENTITIES[0])])
    for metadata in ((), (("x-api-key", "nope"),)):
        with pytest.raises(grpc.RpcError) as info:
            router.grpc_score(request, metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(router.grpc_score(request, (("authorization", f"Bearer {KEY}"),)).decisions) == 1
    assert len(router.grpc_score(request, (("x-api-key", ROTATED),)).decisions) == 1


def test_readiness_follows_the_check_on_both_doors(router: Router) -> None:
    async def health(service: str) -> Any:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    serving = health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(health("anomaly.v1.Scoring")) == serving
    assert asyncio.run(health("nope")) == grpc.StatusCode.NOT_FOUND
    router.is_ready = False
    try:
        r = httpx.get(f"{router.base}/readyz")
        assert r.status_code == 503 and "not reachable" in r.text
        assert asyncio.run(health("")) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        router.is_ready = True
    assert httpx.get(f"{router.base}/readyz").status_code == 200


# --------------------------------------------------------------------------- requests


def features(value: float = 1.0) -> dict[str, float]:
    return dict.fromkeys(FEATURE_NAMES, value)


def test_explicit_features_need_no_store_and_batches_keep_their_order(router: Router) -> None:
    (one,) = router.decisions({"entity_id": "not-in-store", "event_id": "e-1",
                               "features": features()})  # fmt: skip
    assert one["event_id"] == "e-1" and one["entity_id"] == "not-in-store"
    assert set(one["model_scores"]) == ALL_MODELS and one["degraded"] is False
    items = [{"entity_id": ENTITIES[5]}, {"entity_id": "x", "features": features(3.0)},
             {"entity_id": ENTITIES[6], "event_id": "mine"}]  # fmt: skip
    decisions = router.decisions({"items": items})
    assert [d["entity_id"] for d in decisions] == [ENTITIES[5], "x", ENTITIES[6]]
    assert decisions[2]["event_id"] == "mine"
    assert len(decisions[0]["event_id"]) == 32  # generated


def test_requests_leave_the_stream_history_alone(router: Router) -> None:
    router.decisions({"entity_id": ENTITIES[7]})
    assert ENTITIES[7] not in router.core.sequences


def test_concurrent_requests_each_get_their_own_decisions(router: Router) -> None:
    """Requests in flight together share store reads and model calls; none may get another's
    decisions, and one request's unknown entity fails only that request."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=router.base, headers=AUTH, timeout=30) as c:
            bodies: list[Any] = [{"entity_id": e, "event_id": f"c-{e}"} for e in ENTITIES]
            bodies.append({"entity_id": "ghost"})
            bodies.append({"items": [{"entity_id": e} for e in ENTITIES[:3]]})
            return list(await asyncio.gather(*(c.post("/v1/score", json=b) for b in bodies)))

    before = router.registry.get_sample_value("anomaly_router_model_call_seconds_count",
                                              {"model_name": "xgboost"}) or 0.0  # fmt: skip
    responses = asyncio.run(burst())
    for e, r in zip(ENTITIES, responses, strict=False):
        assert r.status_code == 200, r.text
        (d,) = r.json()["decisions"]
        assert (d["entity_id"], d["event_id"]) == (e, f"c-{e}")
    assert responses[len(ENTITIES)].status_code == 404
    batch = responses[-1].json()["decisions"]
    assert [d["entity_id"] for d in batch] == ENTITIES[:3]
    alone = {d["entity_id"]: d["model_scores"] for d in router.decisions(
        {"items": [{"entity_id": e} for e in ENTITIES[:3]]})}  # fmt: skip
    assert {d["entity_id"]: d["model_scores"] for d in batch} == alone
    calls = router.registry.get_sample_value("anomaly_router_model_call_seconds_count",
                                             {"model_name": "xgboost"}) or 0.0  # fmt: skip
    assert calls - before < len(responses) + 1, "concurrent requests did not share calls"


def test_stored_row_with_missing_values_is_409_and_shown_as_null(router: Router) -> None:
    r = router.score({"entity_id": GAP})
    assert r.status_code == 409 and FEATURE_NAMES[3] in r.json()["error"]
    shown = httpx.get(f"{router.base}/v1/entities/{GAP}/features", headers=AUTH)
    values = shown.json()["features"]
    assert list(values) == list(FEATURE_NAMES)
    assert values[FEATURE_NAMES[3]] is None and values[FEATURE_NAMES[0]] == 1.0
    ghost = httpx.get(f"{router.base}/v1/entities/ghost/features", headers=AUTH)
    assert ghost.status_code == 404 and "'ghost'" in ghost.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"entity_id": "a", "features": {**features(), "count_1m": "1"}},
         "features.count_1m = '1': Input should be a valid number"),
        ({"entity_id": "a", "features": {k: v for k, v in features().items() if k != "count_5m"}},
         "features: missing 1 feature(s): count_5m"),
        ({"entity_id": "a", "features": {**features(), "colour": 1.0}},
         "features: unknown feature(s): colour"),
        ({"entity_id": "a", "features": {**features(), "log_amount": 1e300}},
         "outside the float32 range of the models: log_amount"),
        ({"entity_id": "a", "priority": 1}, "priority: unknown field"),
        ({"event_id": "e"}, "entity_id: required"),
        ({"entity_id": ""}, "entity_id = '': String should have at least 1 character"),
        ({"entity_id": 7}, "entity_id = 7: Input should be a valid string"),
        ({"items": []}, "items: List should have at least 1 item"),
        ({"items": [{"entity_id": "a"}, {"entity_id": "b", "features": {}}]},
         f"items.1.features: missing {len(FEATURE_NAMES)} feature(s)"),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_invalid_bodies_are_422_with_a_precise_message(
    router: Router, body: Any, message: str
) -> None:
    r = router.score(body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"], r.json()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_422_not_500(router: Router, token: str) -> None:
    body = json.dumps({"entity_id": "a", "features": features()}).replace("1.0", token, 1)
    r = router.score_raw(body)
    assert r.status_code == 422, r.text
    assert "features.count_1m" in r.json()["error"] and "finite number" in r.json()["error"]


@pytest.mark.parametrize("content", [b'{"entity_id": ', b'{"entity_id": "\xff"}', b"\xfe\xff"])
def test_a_body_that_is_not_json_is_400(router: Router, content: bytes) -> None:
    r = router.score_raw(content)
    assert r.status_code == 400, r.text
    assert "body is not valid JSON" in r.json()["error"]


def test_batch_over_the_item_limit_is_413_on_both_doors(router: Router) -> None:
    r = router.score({"items": [{"entity_id": ENTITIES[0]}] * (MAX_ITEMS + 1)})
    assert r.status_code == 413
    assert (
        f"{MAX_ITEMS + 1} items exceeds the limit of {MAX_ITEMS} (router.max_batch_items)"
        in (r.json()["error"])
    )
    pb2 = proto.load().pb2
    many = pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id=ENTITIES[0])] * (MAX_ITEMS + 1))
    with pytest.raises(grpc.RpcError) as info:
        router.grpc_score(many)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "router.max_batch_items" in info.value.details()


def test_body_over_the_size_limit_is_413_declared_or_streamed(router: Router) -> None:
    big = json.dumps({"items": [{"entity_id": "acct-1", "features": features()}] * 150})
    assert len(big) > MAX_BODY
    assert router.score_raw(big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096].encode()

    r = router.score_raw(chunks())
    assert r.status_code == 413 and "router.max_body_bytes" in r.json()["error"]


def test_openapi_publishes_the_exact_feature_schema(router: Router) -> None:
    spec = httpx.get(f"{router.base}/openapi.json").json()
    item = spec["components"]["schemas"]["ScoreItem"]
    assert item["additionalProperties"] is False
    (features_schema,) = [s for s in item["properties"]["features"]["anyOf"] if "properties" in s]
    assert features_schema["required"] == list(FEATURE_NAMES)
    assert features_schema["additionalProperties"] is False
    responses = spec["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "404", "413", "422"} <= set(responses)


def test_decision_model_has_exactly_the_core_record_fields(router: Router) -> None:
    """A field the core adds to its records must be added to the published answer too."""
    batch = router.run(router.core.score(["e"], ["a"], np.ones((1, len(FEATURE_NAMES)),
                                                                np.float32),
                                         track_sequences=False))  # fmt: skip
    assert list(batch.record(0)) == list(Decision.model_fields)


# --------------------------------------------------------------------------- gRPC requests


def test_grpc_scores_by_entity_by_map_and_by_vector(router: Router) -> None:
    pb2 = proto.load().pb2
    request = pb2.ScoreRequest(items=[
        pb2.ScoreItem(entity_id=ENTITIES[0]),
        pb2.ScoreItem(entity_id="m", event_id="e-2", by_name=pb2.FeatureMap(values=features(2.0))),
        pb2.ScoreItem(entity_id="v", vector=pb2.FeatureVector(values=[2.0] * len(FEATURE_NAMES))),
    ])  # fmt: skip
    d = router.grpc_score(request).decisions
    assert [x.entity_id for x in d] == [ENTITIES[0], "m", "v"]
    assert d[1].event_id == "e-2"
    assert set(d[0].model_scores) == ALL_MODELS
    assert d[0].HasField("score")
    assert dict(d[1].model_scores) == pytest.approx(dict(d[2].model_scores))  # same features


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"entity_id": "ghost"}, grpc.StatusCode.NOT_FOUND),
        ({"entity_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": "a", "features": {**features(), "count_1m": math.nan}},
         grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": "a", "features": {**features(), "colour": 1.0}},
         grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": GAP}, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)  # fmt: skip
def test_grpc_errors_match_rest_messages(
    router: Router, item: dict[str, Any], code: grpc.StatusCode
) -> None:
    pb2 = proto.load().pb2
    message = pb2.ScoreItem(entity_id=item["entity_id"])
    if "features" in item:
        message.by_name.values.update(item["features"])
    with pytest.raises(grpc.RpcError) as info:
        router.grpc_score(pb2.ScoreRequest(items=[message]))
    assert info.value.code() == code
    body = json.dumps({"items": [item]}, allow_nan=True)  # the same item sent to REST
    assert info.value.details() == router.score_raw(body).json()["error"]


def test_grpc_vector_of_the_wrong_length(router: Router) -> None:
    pb2 = proto.load().pb2
    short = pb2.ScoreRequest(
        items=[pb2.ScoreItem(entity_id="v", vector=pb2.FeatureVector(values=[1.0] * 5))]
    )
    with pytest.raises(grpc.RpcError) as info:
        router.grpc_score(short)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = f"expected {len(FEATURE_NAMES)} values in FEATURE_NAMES order, got 5"
    assert expected in info.value.details()


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


def test_a_batch_larger_than_one_grpc_message_is_scored_by_every_model(router: Router) -> None:
    """Transformer sequences of 7,000 events are ~10 MB, over the model server's 8 MiB
    message limit: the client splits the call instead of leaving the model out."""
    n = 7_000
    rows = np.random.default_rng(3).lognormal(0, 1, (n, len(FEATURE_NAMES))).astype(np.float32)
    ids = [f"big-{i}" for i in range(n)]
    batch = router.run(router.core.score(ids, [f"acct-{i % 50}" for i in range(n)], rows))
    assert batch.errors == {}
    assert not batch.decision.degraded.any()
    for m in ModelName:
        assert np.isfinite(batch.decision.scores[m]).all(), m
    small = router.run(router.core.score(ids[-5:], ["x"] * 5, rows[-5:], track_sequences=False))
    np.testing.assert_allclose(
        small.decision.scores[ModelName.XGBOOST], batch.decision.scores[ModelName.XGBOOST][-5:]
    )
