"""Ray Serve application on a local Ray instance: V2 REST round trips, batching, 4xx errors.

Skipped where the `ray` extra is not installed (`pip install -e '.[ray]'`). One Ray instance
for the module (starting one takes ~10-20 s on two cores): a multi-model application behind
the gateway at `/`, and a one-model application at `/xgboost` in the Helm chart's form
(`model` + `model_dir`), where the model deployment is itself the ingress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from local_kafka import free_port

from models.registry import Registry
from services.common.model_names import ModelName
from tests.integration.v2_io import WIDTH, outputs, rows, v2_body

_TOO_FEW_VALUES = {
    "inputs": [{"name": "features", "shape": [2, WIDTH], "datatype": "FP32", "data": [1.0] * 10}]
}

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
serve = pytest.importorskip("ray.serve", reason="the ray extra is not installed")

APP = "anomaly"


@pytest.fixture(scope="module")
def ray_url(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of Serve's HTTP proxy with both applications running."""
    from services.serving.ray_app import build_app

    work = tmp_path_factory.mktemp("ray_serving")
    config = work / "platform.yaml"
    # A wider batching window than the default 2 ms, so that the batching assertion does
    # not depend on how quickly two busy cores deliver concurrent requests.
    # A small request limit keeps the oversized-request case cheap.
    serving = {"max_batch_delay_ms": 20, "max_request_rows": 4096}
    config.write_text(
        yaml.safe_dump({"model_store": {"path": str(model_store)}, "serving": serving})
    )
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        common = {"config_path": str(config), "num_cpus": 0.25, "gateway_num_cpus": 0.1}
        multi = build_app({**common, "models": "isolation_forest,xgboost", "versions": "all"})
        single = build_app(
            {**common, "model": "xgboost", "model_dir": str(model_store / "xgboost")}
        )
        # Both applications start together (run_many), as a RayService starts its own.
        serve.run_many(
            [
                serve.RunTarget(multi, name=APP, route_prefix="/"),
                serve.RunTarget(single, name="xgboost_only", route_prefix="/xgboost"),
            ]
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_rest_scores_equal_the_registry_model(ray_url: str, model_store: Path) -> None:
    registry = Registry(model_store)
    x = rows(300)
    response = httpx.post(f"{ray_url}/v2/models/isolation_forest/infer", json=v2_body(x))
    got = outputs(response)
    assert response.json()["model_name"] == "isolation_forest"
    np.testing.assert_allclose(
        got["score"], registry.load(ModelName.ISOLATION_FOREST).score(x), atol=1e-6
    )
    x = rows(1_024, seed=1)
    response = httpx.post(f"{ray_url}/v2/models/xgboost/infer", json=v2_body(x), timeout=30)
    got = outputs(response)
    expected = registry.load(ModelName.XGBOOST, "2").score_batch(x)
    assert response.json()["model_version"] == "2"  # the latest serves by default
    np.testing.assert_allclose(got["score"], expected.score, atol=1e-6)
    assert expected.anomaly_type is not None
    np.testing.assert_array_equal(got["anomaly_type"], expected.anomaly_type)


def test_a_version_can_be_chosen(ray_url: str, model_store: Path) -> None:
    x = rows(50, seed=2)
    url = f"{ray_url}/v2/models/xgboost/versions/1/infer"
    response = httpx.post(url, json=v2_body(x))
    got = outputs(response)
    assert response.json()["model_version"] == "1"
    expected = Registry(model_store).load(ModelName.XGBOOST, "1").score(x)
    np.testing.assert_allclose(got["score"], expected, atol=1e-6)


def test_one_model_application_in_the_charts_form(ray_url: str, model_store: Path) -> None:
    """`model` + `model_dir`, mounted under /<model>: what the RayService renders."""
    x = rows(20, seed=3)
    response = httpx.post(f"{ray_url}/xgboost/v2/models/xgboost/infer", json=v2_body(x))
    expected = Registry(model_store).load(ModelName.XGBOOST).score(x)
    np.testing.assert_allclose(outputs(response)["score"], expected, atol=1e-6)
    ready = httpx.get(f"{ray_url}/xgboost/v2/models/xgboost/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_concurrent_requests_are_batched(ray_url: str) -> None:
    handle = serve.get_deployment_handle("xgboost", app_name=APP)
    before = handle.describe.remote().result()["batches"]

    async def burst() -> list[httpx.Response]:
        x = rows(1, seed=4)
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"{ray_url}/v2/models/xgboost/infer", json=v2_body(x))
                  for _ in range(64))
            )  # fmt: skip

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), responses[0].text
    after = handle.describe.remote().result()["batches"]
    calls = after["calls"] - before["calls"]
    requests = after["requests"] - before["requests"]
    assert requests == 64
    assert calls < requests, "some requests shared a model call"
    assert after["largest_batch_requests"] > 1


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("isolation_forest", v2_body(rows(3)[:, :5]), 400, f"must have shape [n, {WIDTH}]"),
        ("isolation_forest", v2_body(rows(3).astype(np.int64), "INT64"), 400, "must be FP32"),
        ("isolation_forest", v2_body(rows(3), name="x"), 400, "exactly one input named 'features'"),
        ("isolation_forest", _TOO_FEW_VALUES, 400, "does not match its shape"),
        ("isolation_forest", {"inputs": "nope"}, 400, "not a V2 inference request"),
        ("nope", v2_body(rows(3)), 404, "nope"),
        ("xgboost/versions/9", v2_body(rows(3)), 404, "version 9"),
    ],
)  # fmt: skip
def test_client_mistakes_are_4xx_with_a_message(
    ray_url: str, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"{ray_url}/v2/models/{path}/infer", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_oversized_batches_are_refused(ray_url: str) -> None:
    x = np.zeros((5_000, WIDTH), np.float32)
    response = httpx.post(
        f"{ray_url}/v2/models/isolation_forest/infer", content=_json(x), timeout=60
    )
    assert response.status_code == 400
    assert "exceeds the limit" in response.json()["error"]


def _json(x: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "inputs": [
                {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def test_a_batch_mixing_versions_scores_each_with_its_own(model_store: Path) -> None:
    """The core behind the deployments, with a gate instead of Ray's timer: three requests
    (versions 1, 2, 1) form one batch, which must become one model call per version."""
    from services.common.config import PlatformConfig
    from services.serving.ray_app import BatchFn, Item, ItemFn, ModelCore, ModelSpec, Scored

    def gate(size: int) -> Any:
        def wrap(run: BatchFn) -> ItemFn:
            waiting: list[tuple[Item, asyncio.Future[Scored]]] = []

            async def submit(item: Item) -> Scored:
                future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
                waiting.append((item, future))
                if len(waiting) == size:
                    batch = waiting[:]
                    waiting.clear()
                    for (_, f), result in zip(batch, await run([i for i, _ in batch]), strict=True):
                        f.set_result(result)
                return await future

            return submit

        return wrap

    config = PlatformConfig.model_validate({"model_store": {"path": str(model_store)}})
    spec = ModelSpec(ModelName.XGBOOST, str(model_store), "all", config)
    seen: list[tuple[str, int, int]] = []
    core = ModelCore(spec, gate(3), lambda v, n, n_rows, _s: seen.append((v, n, n_rows)))
    xs = [rows(5, seed=7), rows(3, seed=8), rows(4, seed=9)]

    async def three() -> list[Scored]:
        return list(
            await asyncio.gather(
                core.score("1", xs[0]), core.score("2", xs[1]), core.score("1", xs[2])
            )
        )

    results = asyncio.run(three())
    registry = Registry(model_store)
    for (batch, _runtime), version, x in zip(results, ["1", "2", "1"], xs, strict=True):
        np.testing.assert_allclose(
            batch.score, registry.load(ModelName.XGBOOST, version).score(x), atol=1e-6
        )
    assert sorted(seen) == [("1", 2, 9), ("2", 1, 3)]
