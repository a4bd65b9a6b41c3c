"""Model servers on real ports: V2 REST and gRPC round trips, versions side by side, 4xx errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kserve.inference_client import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest

from models.registry import Registry
from services.common.model_names import ModelName
from tests.integration.conftest import ModelServer
from tests.integration.v2_io import WIDTH, outputs, rows, v2_body

_TOO_FEW_VALUES = {
    "inputs": [{"name": "features", "shape": [2, WIDTH], "datatype": "FP32", "data": [1.0] * 10}]
}

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(model_server: ModelServer) -> ModelServer:
    return model_server


def test_rest_scores_equal_the_registry_model(server: ModelServer, model_store: Path) -> None:
    x = rows(300)
    got = outputs(httpx.post(f"{server.http}/v2/models/isolation_forest/infer", json=v2_body(x)))
    expected = Registry(model_store).load(ModelName.ISOLATION_FOREST).score(x)
    np.testing.assert_allclose(got["score"], expected, atol=1e-6)
    assert ((got["score"] >= 0) & (got["score"] <= 1)).all()


def grpc_infer(server: ModelServer, model: str, x: np.ndarray, version: str | None = None) -> Any:
    async def call() -> Any:
        client = InferenceGRPCClient(server.grpc, retries=2)
        tensor = InferInput("features", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        request = InferRequest(model_name=model, infer_inputs=[tensor], model_version=version)
        try:
            return await client.infer(request)
        finally:
            await client.close()

    return asyncio.run(call())


def test_grpc_round_trip_with_types(server: ModelServer, model_store: Path) -> None:
    x = rows(1_024, seed=1)
    response = grpc_infer(server, "xgboost", x)
    got = {o.name: o.as_numpy() for o in response.outputs}
    model = Registry(model_store).load(ModelName.XGBOOST, "2")
    expected = model.score_batch(x)
    assert response.model_version == "2"  # the latest serves by default
    np.testing.assert_allclose(got["score"], expected.score, atol=1e-6)
    assert expected.anomaly_type is not None
    np.testing.assert_array_equal(got["anomaly_type"], expected.anomaly_type)


def test_two_versions_side_by_side(server: ModelServer, model_store: Path) -> None:
    x = rows(200, seed=2)
    v1 = outputs(httpx.post(f"{server.http}/v2/models/xgboost/versions/1/infer", json=v2_body(x)))
    v2 = outputs(httpx.post(f"{server.http}/v2/models/xgboost/versions/2/infer", json=v2_body(x)))
    registry = Registry(model_store)
    np.testing.assert_allclose(
        v1["score"], registry.load(ModelName.XGBOOST, "1").score(x), atol=1e-6
    )
    np.testing.assert_allclose(
        v2["score"], registry.load(ModelName.XGBOOST, "2").score(x), atol=1e-6
    )
    assert not np.allclose(v1["raw"], v2["raw"]), "two different models answered"
    by_grpc = grpc_infer(server, "xgboost", x, version="1")
    assert by_grpc.model_version == "1"
    np.testing.assert_allclose(by_grpc.outputs[0].as_numpy(), v1["score"], atol=1e-6)
    ready = httpx.get(f"{server.http}/v2/models/xgboost/versions/1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_transformer_takes_sequences(server: ModelServer, model_store: Path) -> None:
    model = Registry(model_store).load(ModelName.TRANSFORMER)
    length = model.sequence_length
    assert length is not None
    x = rows(64 * length, seed=3).reshape(64, length, WIDTH)
    got = outputs(httpx.post(f"{server.http}/v2/models/transformer/infer", json=v2_body(x)))
    np.testing.assert_allclose(got["score"], model.score(x, runtime="onnx"), atol=1e-5)


def test_transformer_sequences_take_padding_only_before_the_event(
    server: ModelServer, model_store: Path
) -> None:
    """A young entity's sequence starts with all-NaN rows; one without the event being
    scored (all padding, or padding after it) was scored as the most anomalous there is."""
    import grpc

    length = Registry(model_store).load(ModelName.TRANSFORMER).sequence_length
    assert length is not None
    young = rows(3 * length, seed=5).reshape(3, length, WIDTH)
    young[:, : length - 2] = np.nan
    [answer] = grpc_infer(server, "transformer", young).outputs[:1]
    assert list(answer.shape) == [3]
    for row, message in (
        (slice(None), "sequence 1 ends with padding"),
        (length - 1, "sequence 1 has an all-NaN row"),
        (3, "sequence 1 has an all-NaN row at 3"),
    ):
        x = rows(3 * length, seed=6).reshape(3, length, WIDTH)
        x[1, row] = np.nan
        with pytest.raises(grpc.RpcError) as info:
            grpc_infer(server, "transformer", x)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(info.value.details())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("isolation_forest", v2_body(rows(3)[:, :5]), 400, f"must have shape [n, {WIDTH}]"),
        ("isolation_forest", v2_body(rows(3).astype(np.int64), "INT64"), 400, "must be FP32"),
        ("isolation_forest", v2_body(rows(3), name="x"), 400, "exactly one input named 'features'"),
        ("isolation_forest", _TOO_FEW_VALUES, 400, "does not match its shape"),
        ("nope", v2_body(rows(3)), 404, "nope"),
        ("xgboost/versions/9", v2_body(rows(3)), 404, "version 9"),
    ],
)  # fmt: skip
def test_client_mistakes_are_4xx_with_a_message(
    server: ModelServer, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"{server.http}/v2/models/{path}/infer", json=body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_nan_and_oversized_batches_are_refused_over_grpc(server: ModelServer) -> None:
    import grpc

    x = rows(4)
    x[2, 3] = np.nan
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(server, "isolation_forest", x)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or infinity" in str(info.value.details())
    with pytest.raises(grpc.RpcError) as big:
        grpc_infer(server, "isolation_forest", np.zeros((70_000, WIDTH), np.float32))
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in str(big.value.details())
    assert server.proc.poll() is None, "the server survived every bad request"


def test_concurrent_requests_are_batched(server: ModelServer) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            x = rows(1)
            return await asyncio.gather(
                *(client.post(f"{server.http}/v2/models/xgboost/infer", json=v2_body(x))
                  for _ in range(64))
            )  # fmt: skip

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    metrics = httpx.get(f"{server.http}/metrics").text

    def total(prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith(prefix) and 'model_name="xgboost"' in line
        )

    n_calls = total("anomaly_serving_batch_requests_count")
    n_requests = total("anomaly_serving_batch_requests_sum")
    assert n_requests > n_calls, "some requests shared a model call"


def test_grpc_requests_write_no_log_line_each(server: ModelServer) -> None:
    # The fixture's server logs at INFO, where KServe's gRPC interceptor writes one line per
    # request unless the server filters it.
    for _ in range(5):
        grpc_infer(server, "xgboost", rows(1))
    log = server.log.read_text()
    assert "model loaded" in log or "Starting gRPC server" in log, "the log is being written"
    assert "grpc method:" not in log


CPU_ONLY_PROBE = """
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.registry import Registry
from services.common.config.model import ServingConfig
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.serving.runtime import ModelRunner, RuntimePolicy

WIDTH = len(FEATURE_NAMES)
if "CUDAExecutionProvider" in ort.get_available_providers():
    print("SKIP: this onnxruntime is the GPU build")
    sys.exit(0)
policy = RuntimePolicy.from_config(ServingConfig(gpu="auto"))
assert not policy.use_cuda, policy
registry = Registry(Path(sys.argv[1]))
for name in ModelName:
    model = registry.load(name)
    runner = ModelRunner(model, policy)
    shape = (4, model.sequence_length, WIDTH) if model.sequence_length else (4, WIDTH)
    for rows in (1, 4096):
        x = np.ones((rows, *shape[1:]), np.float32)
        batch, runtime = runner.score(x)
        assert len(batch.score) == rows
    assert runner._session.get_providers() == ["CPUExecutionProvider"]
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "nvidia", "cupy", "tensorrt")]
maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
cuda_libs = sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines()
                    if any(k in line for k in ("libcuda", "libcudart", "libcublas", "libcudnn",
                                               "providers_cuda", "libnvrtc"))})
print("modules", loaded, "libraries", cuda_libs)
assert not loaded and not cuda_libs
print("OK")
"""


def test_the_cpu_path_loads_no_cuda_code(model_store: Path) -> None:
    """With the CPU build of onnxruntime, `gpu: auto` scores everything on the CPU and never
    imports torch or any CUDA library (a fresh process, so the test session's torch from
    training does not count)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", CPU_ONLY_PROBE, str(model_store)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert result.stdout.strip().endswith("OK"), result.stdout
