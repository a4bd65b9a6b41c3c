"""A small trained model registry shared by the serving and routing tests.

Trained once per session on a generated stream (seconds, not minutes: small forests, few
boosting rounds, one Transformer epoch). XGBoost is published twice so that tests can serve
two versions side by side.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import yaml

from models.dataset import features_from_events, parse_raw_events
from models.registry import Registry
from models.training import publish, small_settings, train_all
from services.common.model_names import ModelName
from services.generator import StreamSpec, generate_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Registry with isolation_forest v1, xgboost v1 and v2, transformer v1."""
    root = tmp_path_factory.mktemp("model_store")
    batch = generate_batch(StreamSpec(seed=5, entities=300, anomaly_rate=0.03), 20_000)
    labels = {label["event_id"]: label["label"] for label in batch.labels}
    data = features_from_events([parse_raw_events(batch.values)], labels)
    settings = small_settings(seed=1)
    registry = Registry(root)
    trained = train_all(data, settings, registry)
    second = train_all(data, replace(settings, seed=2, models=(ModelName.XGBOOST,)))[
        ModelName.XGBOOST
    ]
    publish(registry, second)
    assert trained.keys() == set(ModelName)
    return root


@dataclass(frozen=True)
class ModelServer:
    """`anomaly serve` with all three models and every registered version, on free ports."""

    http_port: int
    grpc_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        """Base URL of the V2 REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        """host:port of the V2 gRPC API."""
        return f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="session")
def model_server(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServer]:
    """One model-server process for the session (serving, router and end-to-end tests)."""
    from local_kafka import free_port

    work = tmp_path_factory.mktemp("serving")
    config = work / "platform.yaml"
    config.write_text(yaml.safe_dump({"model_store": {"path": str(model_store)}}))
    http, grpc = free_port(), free_port()
    log = work / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve",
         "isolation_forest,xgboost,transformer", "-c", str(config),
         "--http-port", str(http), "--grpc-port", str(grpc), "--versions", "all"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    yield ModelServer(http, grpc, proc, log)
    proc.terminate()
    proc.wait(30)
