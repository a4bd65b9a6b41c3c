"""The Locust users against real servers, run the way the README runs them: `locust` headless
as its own process, statistics read back from its CSV files.

The Kafka user's statistics must agree with what the broker holds (every event a request
reported is on the topic, no more, none twice); the REST and gRPC users must score against a
real router process and report a wrong API key as failures, not as successes.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from local_kafka import free_port

from loadtest.scoring_rows import scoring_rows
from services.common.config import parse_config
from services.common.events import parse_event
from services.common.feast_store import OnlineFeatureWriter, apply, open_store
from services.common.model_names import ModelName
from tests.conftest import TopicsFactory
from tests.integration.conftest import ModelServer
from tests.integration.kafka_io import create_topics, end_offsets, read_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
API_KEY = "locust-test-key-0123456789"


def run_locust(users: list[str], csv_prefix: Path, seconds: int, *args: str) -> int:
    """`locust` headless for `seconds`; returns its exit code (1 when a request failed)."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *users, "--headless",
        "-u", str(len(users) * 2), "-r", "20", "-t", f"{seconds}s", "--csv", str(csv_prefix),
        "--only-summary", "--loglevel", "WARNING", *args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ANOMALY_"))}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, timeout=seconds + 90, check=False
    )
    Path(f"{csv_prefix}.stderr").write_bytes(done.stderr)
    assert done.returncode in (0, 1), done.stderr.decode()[-3000:]
    return done.returncode


class _Rows(dict[str, dict[str, str]]):
    """Statistics rows by name; a missing one fails with what locust said (a run that
    reported nothing is otherwise a bare KeyError)."""

    def __init__(self, rows: dict[str, dict[str, str]], log: str) -> None:
        super().__init__(rows)
        self.log = log

    def __missing__(self, name: str) -> dict[str, str]:
        raise AssertionError(f"locust reported no {name!r} requests; its stderr:\n{self.log}")


def stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """Rows of `<prefix>_stats.csv` by request name (the Aggregated row included)."""
    log = Path(f"{csv_prefix}.stderr")
    with Path(f"{csv_prefix}_stats.csv").open() as f:
        return _Rows(
            {row["Name"]: row for row in csv.DictReader(f)},
            log.read_text(errors="replace")[-3000:] if log.exists() else "",
        )


def test_kafka_user_events_are_on_the_topic_as_reported(
    platform_config: TopicsFactory, tmp_path: Path
) -> None:
    cfg = platform_config()
    create_topics(cfg)
    topics = cfg.kafka.topics
    batch = 100
    code = run_locust(
        ["KafkaProducerUser"], tmp_path / "kafka", 4,
        "--bootstrap", cfg.kafka.bootstrap_servers, "--events-topic", topics.events.name,
        "--labels-topic", topics.labels.name, "--events-per-user", "1500",
        "--batch-size", str(batch), "--entities", "300",
    )  # fmt: skip
    row = stats(tmp_path / "kafka")[f"events (batch of {batch})"]
    assert code == 0
    assert row["Type"] == "kafka" and int(row["Failure Count"]) == 0
    requests = int(row["Request Count"])
    assert requests > 0

    on_topic = sum(end_offsets(cfg, topics.events.name).values())
    assert on_topic == requests * batch  # every reported event arrived, and nothing else
    records = read_all(cfg, topics.events.name, on_topic)
    events = [parse_event(r.value) for r in records]  # the event contract holds
    ids = {e["event_id"] for e in events}
    assert len(ids) == on_topic  # two users never share an id
    assert all(r.key == e["entity_id"].encode() for r, e in zip(records, events, strict=True))

    labels = read_all(cfg, topics.labels.name, 1, timeout_s=10)
    assert labels, "the ground truth of injected anomalies goes to the labels topic"
    assert all(orjson.loads(r.value)["event_id"] in ids for r in labels)


@pytest.fixture(scope="module")
def router(
    model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """`anomaly router --no-stream` (REST and gRPC doors only) over the session's models."""
    work = tmp_path_factory.mktemp("locust-router")
    http, grpc_port = free_port(), free_port()
    endpoint = {"rest_url": model_server.http, "grpc_target": model_server.grpc,
                "timeout_ms": 5_000}  # fmt: skip
    data = {
        "serving": {"endpoints": {m.value: endpoint for m in ModelName}},
        "router": {"http_port": http, "grpc_port": grpc_port},
        "feast": {"repo_path": str(ROOT / "feature_repo"), "project": "locust_doors",
                  "registry_path": str(work / "registry.db"),
                  "online_store": {"type": "sqlite", "path": str(work / "online.db")}},
    }  # fmt: skip
    config = work / "platform.yaml"
    config.write_text(yaml.safe_dump(data))
    # The entities the users score by id must be in the online store, as ingest would put them.
    feast = parse_config(data, "test").feast
    apply(feast)
    rows = scoring_rows()
    OnlineFeatureWriter(open_store(feast), feast).write_latest(
        rows.entity_ids, rows.ts, rows.matrix
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    env["ANOMALY_ROUTER__API_KEYS"] = f'["{API_KEY}"]'
    log = work / "router.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "router", "-c", str(config), "--no-stream"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    yield url, f"127.0.0.1:{grpc_port}"
    proc.terminate()
    proc.wait(30)


@pytest.mark.parametrize("score_by", ["features", "entity"])
def test_rest_and_grpc_users_score_without_failures(
    router: tuple[str, str], tmp_path: Path, score_by: str
) -> None:
    url, target = router
    code = run_locust(
        ["RestScoringUser", "GrpcScoringUser"], tmp_path / "doors", 3,
        "--router-url", url, "--router-grpc", target, "--api-key", API_KEY,
        "--items-per-request", "5", "--score-by", score_by,
    )  # fmt: skip
    rows = stats(tmp_path / "doors")
    for name, kind in (("POST /v1/score", "POST"), ("anomaly.v1.Scoring/Score", "grpc")):
        assert rows[name]["Type"] == kind
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
    assert code == 0


def test_rest_and_grpc_users_report_refused_requests_as_failures(
    router: tuple[str, str], tmp_path: Path
) -> None:
    url, target = router
    code = run_locust(
        ["RestScoringUser", "GrpcScoringUser"], tmp_path / "refused", 3,
        "--router-url", url, "--router-grpc", target, "--api-key", "not-the-key-0123456789",
    )  # fmt: skip
    rows = stats(tmp_path / "refused")
    for name in ("POST /v1/score", "anomaly.v1.Scoring/Score"):
        assert int(rows[name]["Request Count"]) > 0, name
        assert rows[name]["Failure Count"] == rows[name]["Request Count"], name
    assert code == 1
    with Path(f"{tmp_path / 'refused'}_failures.csv").open() as f:
        errors = " ".join(row["Error"] for row in csv.DictReader(f))
    assert "401" in errors and "UNAUTHENTICATED" in errors
