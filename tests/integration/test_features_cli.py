"""`anomaly features ...` through Typer, against a real SQLite online store in tmp_path."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from services.cli.features_cmd import features_app
from services.common.config import load_config
from services.common.feast_store import OnlineFeatureWriter, open_store
from services.common.features.definition import FEATURE_NAMES
from services.common.features.messages import encode_feature_messages

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
T0_MS = 1_700_000_000_000


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(features_app, name="features")
    return app


def _strict_json(text: str) -> object:
    """Parse as any JSON consumer would: NaN and Infinity are not JSON."""

    def refuse(token: str) -> object:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A platform configuration whose store files land in tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "platform.yaml"
    path.write_text(f"feast:\n  repo_path: {REPO_ROOT / 'feature_repo'}\n")
    return path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), ["features", *args])
    return result.exit_code, result.stdout, result.stderr


def test_get_prints_json_for_missing_and_infinite_values(config: Path) -> None:
    assert _invoke("apply", "-c", str(config))[0] == 0
    cfg = load_config(config).feast
    row = np.arange(len(FEATURE_NAMES), dtype=np.float32).reshape(1, -1)
    row[0, :3] = [np.nan, np.inf, -np.inf]
    OnlineFeatureWriter(open_store(cfg), cfg).write_latest(
        ["acct-1"], np.array([T0_MS], dtype=np.int64), row
    )

    code, out, err = _invoke("get", "acct-1", "-c", str(config))
    assert code == 0, err
    got = _strict_json(out)
    assert isinstance(got, dict)
    assert list(got) == list(FEATURE_NAMES)
    assert got[FEATURE_NAMES[0]] is None  # the store's missing value
    assert [got[FEATURE_NAMES[1]], got[FEATURE_NAMES[2]]] == ["Infinity", "-Infinity"]
    assert got[FEATURE_NAMES[3]] == 3.0


def test_tail_prints_json_lines_for_missing_and_infinite_values(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"t{uuid.uuid4().hex[:10]}.features"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    row = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    row[0, :3] = [np.nan, np.inf, -np.inf]
    (value,) = encode_feature_messages(
        ["ev-1"], np.array([T0_MS], dtype=np.int64), T0_MS, np.array([False]), row
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"acct-1", value=value)
    assert producer.flush(30) == 0
    config = tmp_path / "platform.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: {kafka_bootstrap}\n"
        f"  topics:\n    features: {{name: {topic}}}\n"
    )

    code, out, err = _invoke("tail", "--count", "1", "--timeout", "20", "-c", str(config))
    assert code == 0, err
    assert err == ""
    (line,) = out.splitlines()
    got = _strict_json(line)
    assert isinstance(got, dict)
    assert got["entity_id"] == "acct-1"
    features = got["features"]
    assert [features[n] for n in FEATURE_NAMES[:3]] == [None, "Infinity", "-Infinity"]

    # Fewer messages than asked for within the timeout: said on stderr, not a silent end.
    code, out, err = _invoke("tail", "--count", "3", "--timeout", "1", "-c", str(config))
    assert code == 0 and len(out.splitlines()) == 1
    assert "1 of 3 messages within 1 s" in err
    # A timeout that cannot wait at all is refused, not an empty answer with exit code 0.
    code, out, err = _invoke("tail", "--timeout", "-1", "-c", str(config))
    assert code == 2 and out == "" and "--timeout" in err


def test_apply_where_the_store_folder_cannot_be_made_is_one_error_line(config: Path) -> None:
    (config.parent / "var").write_text("")  # a file where var/feast/ has to go

    code, _out, err = _invoke("apply", "-c", str(config))
    assert code == 2
    assert err.startswith("error: sqlite online store at ")
    assert "Not a directory" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["apply", "get"])
def test_a_registry_cut_short_is_one_error_line_saying_what_to_do(
    config: Path, command: str
) -> None:
    """Feast rewrites the registry in place; a killed apply leaves the first bytes only."""
    assert _invoke("apply", "-c", str(config))[0] == 0
    registry = config.parent / "var" / "feast" / "registry.db"
    registry.write_bytes(registry.read_bytes()[:100])

    args = ["get", "acct-1"] if command == "get" else ["apply"]
    code, _out, err = _invoke(*args, "-c", str(config))
    assert code == 2
    assert err.startswith(f"error: the Feast registry {registry} is not a readable registry")
    assert "delete it and run `anomaly features apply`" in err
    assert len(err.strip().splitlines()) == 1
