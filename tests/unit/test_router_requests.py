"""The REST and gRPC doors without servers behind them: validation, limits, auth, errors.

The core is the real `ScoringCore` with in-process fake models and a fake online store, so
what is checked here is the doors' own work: every client mistake gets a 4xx (or the
matching gRPC code) with a precise message, the same message through both doors.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from local_kafka import free_port
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig, parse_config
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.router import proto
from services.router.core import LiveConfig, ScoringCore
from services.router.grpc_door import create_grpc_server
from services.router.metrics import RouterMetrics
from services.router.model_clients import ModelCallError, ModelOutput, V2ModelClient
from services.router.rest import create_app
from services.router.schemas import Decision

if TYPE_CHECKING:
    from services.common.feast_store.reader import OnlineFeatureReader

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
N = len(FEATURE_NAMES)


class FakeModel:
    """Scores every row `score`; `down` makes it fail as a dead endpoint does."""

    def __init__(self, score: float = 0.2, *, down: bool = False) -> None:
        self.score = score
        self.down = down
        self.calls = 0

    async def infer(self, x: npt.NDArray[np.float32], version: str | None = None) -> ModelOutput:
        self.calls += 1
        if self.down:
            raise ModelCallError("UNAVAILABLE: connection refused")
        assert np.isfinite(x[..., -1, :] if x.ndim == 3 else x).all()
        return ModelOutput(np.full(len(x), self.score), None, version or "1")


class FakeReader:
    """The online store: known entities have rows; the reader's contract (NaN rows for
    unknown entities, None from read_one) is what the doors rely on."""

    def __init__(self, rows: dict[str, npt.NDArray[np.float32]]) -> None:
        self.rows = rows
        self.reads = 0

    def read(self, entity_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        self.reads += 1
        out = np.full((len(entity_ids), N), np.nan, dtype=np.float32)
        for i, e in enumerate(entity_ids):
            if e in self.rows:
                out[i] = self.rows[e]
        return out

    def read_one(self, entity_id: str) -> dict[str, float] | None:
        row = self.rows.get(entity_id)
        return None if row is None else dict(zip(FEATURE_NAMES, map(float, row), strict=True))


def features(value: float = 1.0) -> dict[str, float]:
    return dict.fromkeys(FEATURE_NAMES, value)


def stored_rows() -> dict[str, npt.NDArray[np.float32]]:
    partial = np.ones(N, dtype=np.float32)
    partial[3] = np.nan
    return {"acct-1": np.full(N, 2.0, np.float32), "acct-2": np.ones(N, np.float32),
            "acct-gap": partial}  # fmt: skip


class Doors:
    """A core with fake models and store, and the config it runs under."""

    def __init__(self, router: dict[str, Any] | None = None, *, down: bool = False) -> None:
        self.config: PlatformConfig = parse_config({"router": router or {}}, "test")
        self.live = LiveConfig(self.config)
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self.models = {m: FakeModel(down=down and m is ModelName.XGBOOST) for m in ModelName}
        clients = cast(dict[ModelName, V2ModelClient], self.models)
        self.core = ScoringCore(self.live, clients, metrics=self.metrics)
        self.reader = FakeReader(stored_rows())
        self.ready = True

    def readiness(self) -> tuple[bool, str]:
        return (self.ready, "ready" if self.ready else "model servers not reachable")

    def app_client(self) -> httpx.AsyncClient:
        app = create_app(
            self.core, cast("OnlineFeatureReader", self.reader), self.live, self.metrics,
            self.readiness, registry=self.registry,
        )  # fmt: skip
        return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router")


def rest(doors: Doors, calls: Callable[[httpx.AsyncClient], Any]) -> Any:
    async def run() -> Any:
        async with doors.app_client() as client:
            return await calls(client)

    return asyncio.run(run())


def post(doors: Doors, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    response: httpx.Response = rest(
        doors, lambda c: c.post("/v1/score", json=body, headers=headers or {})
    )
    return response


def post_raw(doors: Doors, content: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"content-type": "application/json", **(headers or {})}
    response: httpx.Response = rest(doors, lambda c: c.post("/v1/score", content=content,
                                                             headers=hdrs))  # fmt: skip
    return response


# --------------------------------------------------------------------------- REST: scoring


def test_one_item_with_features_gets_one_decision() -> None:
    doors = Doors()
    r = post(doors, {"entity_id": "acct-9", "event_id": "e-1", "features": features()})
    assert r.status_code == 200, r.text
    (d,) = r.json()["decisions"]
    assert d["event_id"] == "e-1" and d["entity_id"] == "acct-9"
    assert set(d["model_scores"]) == {m.value for m in ModelName}
    assert d["degraded"] is False
    assert doors.reader.reads == 0  # explicit features: the store is not read


def test_batch_reads_the_store_once_for_items_without_features_and_keeps_order() -> None:
    doors = Doors()
    items = [{"entity_id": "acct-1"}, {"entity_id": "x", "features": features(3.0)},
             {"entity_id": "acct-2", "event_id": "mine"}]  # fmt: skip
    r = post(doors, {"items": items})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert [d["entity_id"] for d in decisions] == ["acct-1", "x", "acct-2"]
    assert decisions[2]["event_id"] == "mine"
    assert len(decisions[0]["event_id"]) == 32  # generated
    assert doors.reader.reads == 1


def test_requests_leave_the_stream_history_alone() -> None:
    doors = Doors()
    assert post(doors, {"entity_id": "acct-1"}).status_code == 200
    assert "acct-1" not in doors.core.sequences


def test_model_outage_gives_degraded_decisions_not_an_error() -> None:
    doors = Doors(down=True)
    r = post(doors, {"items": [{"entity_id": "acct-1"}, {"entity_id": "acct-2"}]})
    assert r.status_code == 200, r.text
    for d in r.json()["decisions"]:
        assert d["degraded"] is True
        assert "xgboost" not in d["model_versions"]


def test_unknown_entity_is_404_naming_it() -> None:
    r = post(Doors(), {"items": [{"entity_id": "acct-1"}, {"entity_id": "ghost"}]})
    assert r.status_code == 404
    assert "'ghost'" in r.json()["error"] and "online store" in r.json()["error"]


def test_stored_row_with_missing_values_is_409() -> None:
    r = post(Doors(), {"entity_id": "acct-gap"})
    assert r.status_code == 409
    assert FEATURE_NAMES[3] in r.json()["error"]


def test_entity_features_by_name() -> None:
    doors = Doors()

    async def calls(c: httpx.AsyncClient) -> tuple[httpx.Response, ...]:
        return (
            await c.get("/v1/entities/acct-gap/features"),
            await c.get("/v1/entities/ghost/features"),
        )

    known, unknown = rest(doors, calls)
    assert known.status_code == 200
    values = known.json()["features"]
    assert list(values) == list(FEATURE_NAMES)
    assert values[FEATURE_NAMES[3]] is None and values[FEATURE_NAMES[0]] == 1.0
    assert unknown.status_code == 404 and "'ghost'" in unknown.json()["error"]


# --------------------------------------------------------------------------- REST: validation


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
         "items.1.features: missing 22 feature(s)"),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_invalid_bodies_are_422_with_a_precise_message(body: Any, message: str) -> None:
    r = post(Doors(), body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"], r.json()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_422_not_500(token: str) -> None:
    body = json.dumps({"entity_id": "a", "features": features()}).replace("1.0", token, 1)
    r = post_raw(Doors(), body)
    assert r.status_code == 422, r.text
    assert "features.count_1m" in r.json()["error"]
    assert "finite number" in r.json()["error"]


@pytest.mark.parametrize("content", [b'{"entity_id": ', b'{"entity_id": "\xff"}', b"\xfe\xff"])
def test_a_body_that_is_not_json_is_400(content: bytes) -> None:
    r = post_raw(Doors(), content)
    assert r.status_code == 400, r.text
    assert "body is not valid JSON" in r.json()["error"]


def test_batch_over_the_item_limit_is_413() -> None:
    r = post(Doors({"max_batch_items": 3}), {"items": [{"entity_id": "acct-1"}] * 4})
    assert r.status_code == 413
    assert "4 items exceeds the limit of 3 (router.max_batch_items)" in r.json()["error"]


def test_body_over_the_size_limit_is_413_declared_or_streamed() -> None:
    doors = Doors({"max_body_bytes": 2048})
    big = json.dumps({"items": [{"entity_id": "acct-1", "features": features()}] * 10})
    assert post_raw(doors, big).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for i in range(0, len(big), 500):
            yield big[i : i + 500].encode()

    r = post_raw(doors, chunks())
    assert r.status_code == 413
    assert "router.max_body_bytes" in r.json()["error"]


def test_openapi_publishes_the_exact_feature_schema() -> None:
    spec = rest(Doors(), lambda c: c.get("/openapi.json")).json()
    item = spec["components"]["schemas"]["ScoreItem"]
    assert item["additionalProperties"] is False
    (features_schema,) = [s for s in item["properties"]["features"]["anyOf"] if "properties" in s]
    assert features_schema["required"] == list(FEATURE_NAMES)
    assert features_schema["additionalProperties"] is False
    responses = spec["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "404", "413", "422"} <= set(responses)


# --------------------------------------------------------------------------- REST: auth, ops


def test_auth_by_api_key_or_bearer_on_v1_only() -> None:
    doors = Doors({"api_keys": [KEY, "second-key-for-rotation"]})
    body = {"entity_id": "acct-1"}

    async def calls(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        return {
            "none": await c.post("/v1/score", json=body),
            "wrong": await c.post("/v1/score", json=body, headers={"X-API-Key": "nope"}),
            "basic": await c.post("/v1/score", json=body, headers={"Authorization": "Basic x"}),
            "key": await c.post("/v1/score", json=body, headers=AUTH),
            "bearer": await c.post(
                "/v1/score", json=body, headers={"Authorization": f"bearer {KEY}"}
            ),
            "rotated": await c.post(
                "/v1/score", json=body, headers={"X-API-Key": "second-key-for-rotation"}
            ),
            "features": await c.get("/v1/entities/acct-1/features"),
            "healthz": await c.get("/healthz"),
            "readyz": await c.get("/readyz"),
            "metrics": await c.get("/metrics"),
            "openapi": await c.get("/openapi.json"),
        }

    r = rest(doors, calls)
    for name in ("none", "wrong", "basic", "features"):
        assert r[name].status_code == 401, name
        assert r[name].headers["www-authenticate"].startswith("Bearer")
    assert "authentication required" in r["none"].json()["error"]
    assert "invalid" in r["wrong"].json()["error"]
    for name in ("key", "bearer", "rotated", "healthz", "readyz", "metrics", "openapi"):
        assert r[name].status_code == 200, name
    schemes = r["openapi"].json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    assert "anomaly_router_decisions_total" in r["metrics"].text


def test_readiness_follows_the_check() -> None:
    doors = Doors()
    doors.ready = False
    r = rest(doors, lambda c: c.get("/readyz"))
    assert r.status_code == 503 and "not reachable" in r.text


# --------------------------------------------------------------------------- gRPC


def grpc_call(doors: Doors, request: Any, metadata: Sequence[tuple[str, str]] = ()) -> Any:
    """Run the gRPC door on a free port and call Score once; returns response or RpcError."""
    pb = proto.load()

    async def run() -> Any:
        port = free_port()
        server = create_grpc_server(
            doors.core, cast("OnlineFeatureReader", doors.reader), doors.live, doors.metrics, port,
            ready=doors.readiness,
        )  # fmt: skip
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    return await pb.grpc.ScoringStub(channel).Score(request, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    return exc
        finally:
            await server.stop(None)

    return asyncio.run(run())


def test_grpc_scores_by_entity_by_map_and_by_vector() -> None:
    pb2 = proto.load().pb2
    request = pb2.ScoreRequest(
        items=[
            pb2.ScoreItem(entity_id="acct-1"),
            pb2.ScoreItem(entity_id="m", event_id="e-2",
                          by_name=pb2.FeatureMap(values=features(2.0))),
            pb2.ScoreItem(entity_id="v", vector=pb2.FeatureVector(values=[1.0] * N)),
        ]
    )  # fmt: skip
    response = grpc_call(Doors(), request)
    assert not isinstance(response, grpc.RpcError), response
    d = response.decisions
    assert [x.entity_id for x in d] == ["acct-1", "m", "v"]
    assert d[1].event_id == "e-2"
    assert set(d[0].model_scores) == {m.value for m in ModelName}
    assert d[0].HasField("score") and not d[0].HasField("anomaly_type")


def test_grpc_model_outage_is_degraded_not_an_error() -> None:
    pb2 = proto.load().pb2
    response = grpc_call(
        Doors(down=True), pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id="acct-1")])
    )
    assert not isinstance(response, grpc.RpcError), response
    assert response.decisions[0].degraded


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"entity_id": "ghost"}, grpc.StatusCode.NOT_FOUND),
        ({"entity_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": "a", "features": {**features(), "count_1m": math.nan}},
         grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": "a", "features": {**features(), "colour": 1.0}},
         grpc.StatusCode.INVALID_ARGUMENT),
        ({"entity_id": "acct-gap"}, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)  # fmt: skip
def test_grpc_errors_match_rest_messages(item: dict[str, Any], code: grpc.StatusCode) -> None:
    pb2 = proto.load().pb2
    message = pb2.ScoreItem(entity_id=item["entity_id"])
    if "features" in item:
        message.by_name.values.update(item["features"])
    error = grpc_call(Doors(), pb2.ScoreRequest(items=[message]))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == code
    body = json.dumps({"items": [item]}, allow_nan=True)  # the same item sent to REST
    assert error.details() == post_raw(Doors(), body).json()["error"]


def test_grpc_vector_of_the_wrong_length_and_item_limit() -> None:
    pb2 = proto.load().pb2
    short = pb2.ScoreRequest(
        items=[pb2.ScoreItem(entity_id="v", vector=pb2.FeatureVector(values=[1.0] * 5))]
    )
    error = grpc_call(Doors(), short)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 22 values in FEATURE_NAMES order, got 5" in error.details()
    many = pb2.ScoreRequest(items=[pb2.ScoreItem(entity_id="acct-1")] * 3)
    error = grpc_call(Doors({"max_batch_items": 2}), many)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "router.max_batch_items" in error.details()


def test_grpc_auth_by_metadata_and_open_health() -> None:
    pb = proto.load()
    doors = Doors({"api_keys": [KEY]})
    request = pb.pb2.ScoreRequest(items=[pb.pb2.ScoreItem(entity_id="acct-1")])
    assert grpc_call(doors, request).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = grpc_call(doors, request, [("x-api-key", "nope")])
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(grpc_call(doors, request, [("x-api-key", KEY)]).decisions) == 1
    assert len(grpc_call(doors, request, [("authorization", f"Bearer {KEY}")]).decisions) == 1

    async def health() -> list[Any]:
        port = free_port()
        server = create_grpc_server(
            doors.core, None, doors.live, doors.metrics, port, ready=doors.readiness
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                first = await stub.Check(
                    health_pb2.HealthCheckRequest(service="anomaly.v1.Scoring")
                )
                doors.ready = False
                second = await stub.Check(health_pb2.HealthCheckRequest())
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
                except grpc.aio.AioRpcError as exc:
                    return [first.status, second.status, exc.code()]
                raise AssertionError("unknown service answered")
        finally:
            await server.stop(None)

    serving, not_serving, unknown = asyncio.run(health())
    assert serving == health_pb2.HealthCheckResponse.SERVING
    assert not_serving == health_pb2.HealthCheckResponse.NOT_SERVING
    assert unknown == grpc.StatusCode.NOT_FOUND


def test_decision_model_has_exactly_the_core_record_fields() -> None:
    """A field the core adds to its records must be added to the published answer too."""
    doors = Doors()
    batch = asyncio.run(
        doors.core.score(["e"], ["a"], np.ones((1, N), np.float32), track_sequences=False)
    )
    assert list(batch.record(0)) == list(Decision.model_fields)
