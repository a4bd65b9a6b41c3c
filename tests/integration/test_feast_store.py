"""The Feast store layer against real Feast: SQLite in tmp_path and a private redis-server.

What matters here is that our fast paths stay Feast: rows written by OnlineFeatureWriter
are read back bit-exactly by Feast's own `get_online_features`, rows Feast writes are read
by OnlineFeatureReader, and the repo in `feature_repo/` applies through the `feast` CLI.
The overwrite semantics asserted below are the stores' own (checked against Feast 0.67):
SQLite keeps the last write, Redis the newest event time.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import load_repo_config

from services.common.config.model import FeastConfig, RedisOnlineStore, SqliteOnlineStore
from services.common.feast_store import (
    FEATURE_SERVICE_NAME,
    FEATURE_VIEW_NAME,
    PUSH_SOURCE_NAME,
    FeatureStoreNotApplied,
    FeatureStoreUnavailable,
    OnlineFeatureReader,
    OnlineFeatureWriter,
    apply,
    build_repo_config,
    open_store,
    render_feature_store_yaml,
)
from services.common.feast_store.protos import NULL_VALUE, entity_keys, float_values
from services.common.features.definition import FEATURE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from local_redis import LocalRedis, free_port  # noqa: E402

pytestmark = pytest.mark.integration

N_FEATURES = len(FEATURE_NAMES)
T0_MS = 1_700_000_000_000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def feast_cfg(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> FeastConfig:
    """A FeastConfig with its own project (Redis keys carry it) and files under tmp_path."""
    project = f"t{uuid.uuid4().hex[:12]}"
    if backend == "redis":
        server: LocalRedis = request.getfixturevalue("redis_server")
        online: SqliteOnlineStore | RedisOnlineStore = RedisOnlineStore(
            type="redis", connection_string=f"127.0.0.1:{server.port}"
        )
    else:
        online = SqliteOnlineStore(path="var/feast/online_store.db")
    return FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        project=project,
        registry_path="var/feast/registry.db",
        online_store=online,
    )


@pytest.fixture
def store(feast_cfg: FeastConfig, tmp_path: Path) -> FeatureStore:
    apply(feast_cfg, tmp_path)
    return open_store(feast_cfg, tmp_path)


@pytest.fixture
def writer(store: FeatureStore, feast_cfg: FeastConfig) -> OnlineFeatureWriter:
    return OnlineFeatureWriter(store, feast_cfg)


@pytest.fixture
def reader(store: FeatureStore, feast_cfg: FeastConfig) -> OnlineFeatureReader:
    return OnlineFeatureReader(store, feast_cfg)


def _matrix(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Random features plus the awkward float32 values: extremes, subnormals, -0, inf."""
    rng = np.random.default_rng(seed)
    m = (rng.standard_normal((n, N_FEATURES)) * 10.0 ** rng.integers(-6, 7, (n, 1))).astype(
        np.float32
    )
    awkward = [
        np.finfo(np.float32).max,
        np.finfo(np.float32).tiny,
        1e-45,  # subnormal
        -0.0,
        np.inf,
        -np.inf,
    ]
    m[0, : len(awkward)] = np.array(awkward, dtype=np.float32)
    if n > 1:
        m[1, :3] = np.array([0.0, 1.0, 3.0], dtype=np.float32)  # integer-valued, like counts
    return m


def _ids(n: int, prefix: str = "acct") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


def _feast_vectors(store: FeatureStore, entity_ids: list[str]) -> dict[str, list[Any]]:
    service = store.get_feature_service(FEATURE_SERVICE_NAME)
    response = store.get_online_features(
        features=service, entity_rows=[{"entity_id": e} for e in entity_ids]
    )
    result: dict[str, list[Any]] = response.to_dict()
    return result


def _bits(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --------------------------------------------------------------------------- round trips


def test_write_then_read_returns_exact_float32(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader
) -> None:
    n = 2_000
    ids = _ids(n)
    m = _matrix(n)
    writer.write_latest(ids, T0_MS + np.arange(n, dtype=np.int64), m)

    got = reader.read(ids)
    assert got.dtype == np.float32
    assert got.shape == (n, N_FEATURES)
    np.testing.assert_array_equal(_bits(got), _bits(m))  # bit-exact, -0.0 included

    one = reader.read_one(ids[7])
    assert one is not None
    assert list(one) == list(FEATURE_NAMES)
    assert [np.float32(v) for v in one.values()] == list(m[7])


def test_feast_get_online_features_reads_what_the_writer_wrote(
    writer: OnlineFeatureWriter, store: FeatureStore
) -> None:
    n = 300
    ids = _ids(n)
    m = _matrix(n, seed=1)
    m[5, 4] = np.nan
    writer.write_latest(ids, T0_MS + np.arange(n, dtype=np.int64), m)

    vectors = _feast_vectors(store, ids)
    assert vectors["entity_id"] == ids
    assert vectors[FEATURE_NAMES[4]][5] is None  # NaN is written as Feast's null, as push does
    for j, name in enumerate(FEATURE_NAMES):
        column = [np.nan if v is None else v for v in vectors[name]]
        np.testing.assert_array_equal(
            _bits(np.array(column, dtype=np.float32)), _bits(m[:, j]), err_msg=name
        )


def test_reader_reads_what_feast_itself_wrote(
    store: FeatureStore, reader: OnlineFeatureReader
) -> None:
    """Half the rows through `write_to_online_store`, half through the PushSource."""
    n = 50
    ids = _ids(n, "feast")
    m = _matrix(n, seed=2)
    t0 = datetime.fromtimestamp(T0_MS / 1000, tz=UTC)
    inputs: dict[str, list[Any]] = {
        "entity_id": ids,
        **{name: m[:, j].tolist() for j, name in enumerate(FEATURE_NAMES)},
        "event_ts": [t0 + timedelta(milliseconds=i) for i in range(n)],
    }
    half = n // 2
    store.write_to_online_store(FEATURE_VIEW_NAME, inputs={k: v[:half] for k, v in inputs.items()})
    pd: Any = importlib.import_module("pandas")  # push() takes a DataFrame; pandas has no stubs
    store.push(PUSH_SOURCE_NAME, pd.DataFrame({k: v[half:] for k, v in inputs.items()}))

    np.testing.assert_array_equal(_bits(reader.read(ids)), _bits(m))


def test_apply_puts_sqlite_in_wal_mode(tmp_path: Path) -> None:
    cfg = FeastConfig(repo_path=str(REPO_ROOT / "feature_repo"))
    apply(cfg, tmp_path)
    conn = sqlite3.connect(tmp_path / "var/feast/online_store.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_nan_round_trips_as_nan(writer: OnlineFeatureWriter, reader: OnlineFeatureReader) -> None:
    m = _matrix(3)
    m[1, :] = np.nan
    m[2, 10] = np.nan
    ids = _ids(3, "nan")
    writer.write_latest(ids, np.full(3, T0_MS, dtype=np.int64), m)

    got = reader.read(ids)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(m))
    np.testing.assert_array_equal(got[~np.isnan(m)], m[~np.isnan(m)])
    one = reader.read_one(ids[1])
    assert one is not None
    assert all(np.isnan(v) for v in one.values())


def test_unknown_entities_give_nan_rows_and_none(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader
) -> None:
    m = _matrix(2)
    writer.write_latest(["known-a", "known-b"], np.array([T0_MS, T0_MS], dtype=np.int64), m)

    got, event_ts = reader.read_with_event_ts(["nobody", "known-b", "nobody-else", "known-a"])
    assert np.isnan(got[[0, 2]]).all()
    np.testing.assert_array_equal(got[1], m[1])
    np.testing.assert_array_equal(got[3], m[0])
    assert event_ts[0] == -1
    assert event_ts[2] == -1
    assert reader.read_one("nobody") is None
    assert reader.read([]).shape == (0, N_FEATURES)


def test_ids_that_are_not_utf8_read_as_unknown(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader
) -> None:
    """A lone surrogate (undecodable argv bytes, a JSON "\\udcff" escape) cannot be a stored
    key; reading one must not fail the other ids of the batch (nor the CLI: a traceback)."""
    m = _matrix(1)
    writer.write_latest(["known"], np.array([T0_MS], dtype=np.int64), m)

    got, event_ts = reader.read_with_event_ts(["\udcff", "known", "a\ud800b"])
    assert np.isnan(got[[0, 2]]).all()
    np.testing.assert_array_equal(got[1], m[0])
    assert event_ts.tolist()[0::2] == [-1, -1]
    assert reader.read_one("\udcff") is None
    assert np.isnan(reader.read(["\udcff"])).all()


def test_event_time_is_stored_per_entity(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader, backend: str
) -> None:
    ts = np.array([T0_MS + 1_234, T0_MS + 99_999], dtype=np.int64)
    writer.write_latest(["ts-a", "ts-b"], ts, _matrix(2))

    _, got = reader.read_with_event_ts(["ts-a", "ts-b"])
    if backend == "redis":
        np.testing.assert_array_equal(got, ts)  # protobuf Timestamp: full precision
    else:
        np.testing.assert_array_equal(got, ts // 1000 * 1000)  # SQLite keeps whole seconds


# --------------------------------------------------------------------------- overwrite semantics


def test_newer_write_overwrites(writer: OnlineFeatureWriter, reader: OnlineFeatureReader) -> None:
    first, second = _matrix(4, seed=3), _matrix(4, seed=4)
    ids = _ids(4, "over")
    writer.write_latest(ids, np.full(4, T0_MS, dtype=np.int64), first)
    writer.write_latest(ids[:2], np.full(2, T0_MS + 1_000, dtype=np.int64), second[:2])

    got = reader.read(ids)
    np.testing.assert_array_equal(got[:2], second[:2])
    np.testing.assert_array_equal(got[2:], first[2:])


@pytest.mark.parametrize("delta_ms", [-60_000, 0], ids=["older", "same-time"])
def test_write_with_older_or_equal_event_time(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader, backend: str, delta_ms: int
) -> None:
    """SQLite: the last write wins whatever its time. Redis: only a strictly newer event
    time replaces the stored row (Feast 0.67 reads the stored `_ts` first)."""
    stored, late = _matrix(1, seed=5), _matrix(1, seed=6)
    writer.write_latest(["late"], np.array([T0_MS], dtype=np.int64), stored)
    writer.write_latest(["late"], np.array([T0_MS + delta_ms], dtype=np.int64), late)

    expected = stored if backend == "redis" else late
    np.testing.assert_array_equal(reader.read(["late"]), expected)


def test_duplicates_in_one_batch_keep_the_newest_row(
    writer: OnlineFeatureWriter, reader: OnlineFeatureReader
) -> None:
    m = _matrix(5, seed=7)
    ids = ["dup-a", "dup-b", "dup-a", "dup-a", "dup-b"]
    ts = np.array([T0_MS + 5, T0_MS, T0_MS + 9, T0_MS + 1, T0_MS], dtype=np.int64)
    writer.write_latest(ids, ts, m)

    got = reader.read(["dup-a", "dup-b"])
    np.testing.assert_array_equal(got[0], m[2])  # newest event time
    np.testing.assert_array_equal(got[1], m[4])  # tie: the later position


def test_write_validates_shapes_and_restores_gc(writer: OnlineFeatureWriter) -> None:
    with pytest.raises(ValueError, match="shape"):
        writer.write_latest(["a"], np.array([T0_MS], dtype=np.int64), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        writer.write_latest(["a"], np.array([T0_MS, T0_MS]), np.zeros((1, N_FEATURES), np.float32))
    assert gc.isenabled()
    writer.write_latest([], np.array([], dtype=np.int64), np.zeros((0, N_FEATURES), np.float32))
    writer.write_latest(["gc"], np.array([T0_MS], dtype=np.int64), _matrix(1))
    assert gc.isenabled()


# --------------------------------------------------------------------------- errors


def test_writer_refuses_a_store_that_was_never_applied(tmp_path: Path) -> None:
    cfg = FeastConfig(repo_path=str(REPO_ROOT / "feature_repo"))
    store = open_store(cfg, tmp_path)
    with pytest.raises(FeatureStoreNotApplied, match="anomaly features apply"):
        OnlineFeatureWriter(store, cfg)


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(
            type="redis", connection_string=f"127.0.0.1:{port},password=hunter2"
        ),
    )
    apply(cfg, tmp_path)  # registers only; the Redis store is not touched
    store = open_store(cfg, tmp_path)
    reader = OnlineFeatureReader(store, cfg)
    writer = OnlineFeatureWriter(store, cfg)

    started = time.monotonic()
    with pytest.raises(FeatureStoreUnavailable, match=f"127.0.0.1:{port}") as read_error:
        reader.read_one("x")
    assert time.monotonic() - started < 2  # no redis-py retry backoff (~8 s by default)
    with pytest.raises(FeatureStoreUnavailable, match="unreachable"):
        writer.write_latest(["x"], np.array([T0_MS], dtype=np.int64), _matrix(1))
    assert "hunter2" not in str(read_error.value)
    assert read_error.value.http_status == 503


@pytest.mark.parametrize(
    ("server_args", "answer"),
    [
        (("--maxmemory", "1", "--maxmemory-policy", "noeviction"), "command not allowed when"),
        (
            ("--replicaof", "127.0.0.1", "1"),
            "You can't write against a read only replica",
        ),  # a replica: how a failover starts
    ],
    ids=["out-of-memory", "read-only-replica"],
)
def test_a_redis_that_refuses_writes_is_a_clear_error(
    tmp_path: Path, server_args: tuple[str, ...], answer: str
) -> None:
    """The server is up but answers with an error: our 503 error, not redis-py's own
    ResponseError (a router door turned that into a 500 with a traceback)."""
    server = LocalRedis(
        port=free_port(), home=tmp_path / "redis", extra_args=server_args, progress=None
    )
    cfg = FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(type="redis", connection_string=f"127.0.0.1:{server.port}"),
    )
    with server:
        server.start()
        apply(cfg, tmp_path)
        writer = OnlineFeatureWriter(open_store(cfg, tmp_path), cfg)
        with pytest.raises(FeatureStoreUnavailable, match=f"refused the command: {answer}") as e:
            writer.write_latest(["x"], np.array([T0_MS], dtype=np.int64), _matrix(1))
    assert "pipeline" not in str(e.value)  # not the binary command redis-py quotes first


def test_a_redis_db_the_server_lacks_is_a_clear_error(
    tmp_path: Path, redis_server: LocalRedis
) -> None:
    cfg = FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(
            type="redis", connection_string=f"127.0.0.1:{redis_server.port},db=99"
        ),
    )
    apply(cfg, tmp_path)
    reader = OnlineFeatureReader(open_store(cfg, tmp_path), cfg)
    with pytest.raises(FeatureStoreUnavailable, match="DB index is out of range"):
        reader.read_one("x")


def test_missing_redis_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if redis-py were not installed: Feast's Redis module then refuses to import.
    monkeypatch.delitem(sys.modules, "feast.infra.online_stores.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)
    cfg = FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(type="redis"),
    )
    with pytest.raises(FeatureStoreUnavailable, match=r"pip install 'feast\[redis\]'"):
        build_repo_config(cfg, tmp_path)


# --------------------------------------------------------------------------- protos


def test_bulk_protos_are_byte_identical_to_constructed_ones() -> None:
    m = _matrix(20, seed=8)
    m[3, 3] = np.nan
    bulk = float_values(m)
    assert len(bulk) == m.size
    for value, proto in zip(m.reshape(-1).tolist(), bulk, strict=True):
        assert type(proto) is ValueProto
        expected = NULL_VALUE if np.isnan(value) else ValueProto(float_val=value)
        assert proto.SerializeToString() == expected.SerializeToString()

    ids = ["a", "", "ünïcödé-€", "x" * 200, "y" * 20_000]  # varint lengths of 1, 2 and 3 bytes
    for entity_id, key in zip(ids, entity_keys("entity_id", ids), strict=True):
        expected_key = EntityKeyProto(
            join_keys=["entity_id"], entity_values=[ValueProto(string_val=entity_id)]
        )
        assert type(key) is EntityKeyProto
        assert key.SerializeToString() == expected_key.SerializeToString()


# --------------------------------------------------------------------------- the Feast repo


def _copy_repo(tmp_path: Path) -> Path:
    """feature_repo/ in a scratch checkout, so `../var/feast` lands under tmp_path."""
    repo = tmp_path / "checkout" / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def _feast(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    feast = Path(sys.executable).with_name("feast")
    return subprocess.run(
        [str(feast), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_feast_cli_applies_the_repo_and_our_code_uses_the_result(tmp_path: Path) -> None:
    repo = _copy_repo(tmp_path)
    done = _feast("-c", str(repo), "apply", env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    checkout = repo.parent
    assert (checkout / "var/feast/registry.db").is_file()
    assert (checkout / "var/feast/online_store.db").is_file()

    # The default platform configuration, relative to that checkout, finds the same files.
    cfg = FeastConfig(repo_path=str(repo))
    store = open_store(cfg, checkout)
    writer = OnlineFeatureWriter(store, cfg)
    writer.write_latest(["cli"], np.array([T0_MS], dtype=np.int64), _matrix(1))
    np.testing.assert_array_equal(OnlineFeatureReader(store, cfg).read(["cli"]), _matrix(1))


def test_feast_cli_applies_the_redis_variant(tmp_path: Path, redis_server: LocalRedis) -> None:
    repo = _copy_repo(tmp_path)
    done = _feast(
        "-c",
        str(repo),
        "apply",
        env={
            "PYTHONDONTWRITEBYTECODE": "1",
            "FEAST_FS_YAML_FILE_PATH": str(repo / "feature_store.redis.yaml"),
            "ANOMALY_FEAST__ONLINE_STORE__CONNECTION_STRING": f"127.0.0.1:{redis_server.port}",
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "entity_window_features" in done.stdout


def test_feature_store_yaml_matches_the_default_platform_config(tmp_path: Path) -> None:
    """The committed yaml (what CLI users get) and PlatformConfig defaults agree."""
    repo = _copy_repo(tmp_path)
    checkout = repo.parent
    from_yaml = load_repo_config(repo, repo / "feature_store.yaml")
    ours = build_repo_config(FeastConfig(repo_path=str(repo)), checkout)

    assert from_yaml.project == ours.project
    assert from_yaml.entity_key_serialization_version == ours.entity_key_serialization_version
    assert (repo / from_yaml.registry.path).resolve() == Path(ours.registry.path)
    assert from_yaml.online_store.type == ours.online_store.type == "sqlite"
    assert (repo / from_yaml.online_store.path).resolve() == Path(ours.online_store.path)
    assert from_yaml.offline_store.type == ours.offline_store.type == "file"


def test_rendered_yaml_is_what_open_store_builds(tmp_path: Path) -> None:
    cfg = FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(type="redis", key_ttl_seconds=7200),
    )
    rendered = tmp_path / "feature_store.yaml"
    rendered.write_text(render_feature_store_yaml(cfg, tmp_path))
    loaded = load_repo_config(REPO_ROOT / "feature_repo", rendered)
    built = build_repo_config(cfg, tmp_path)
    assert loaded.online_store == built.online_store
    assert loaded.registry.path == built.registry.path
    assert "socket_timeout=5" in loaded.online_store.connection_string
    assert yaml.safe_load(rendered.read_text())["online_store"]["key_ttl_seconds"] == 7200


_CLEAN_IMPORT_PROBE = """
import json, os, sys, warnings
from pathlib import Path
import numpy as np
from services.common.config.model import FeastConfig, SqliteOnlineStore
from services.common.feast_store import (
    OnlineFeatureReader, OnlineFeatureWriter, apply, open_store,
)
from services.common.features.definition import FEATURE_NAMES
root = Path(sys.argv[1])
cfg = FeastConfig(repo_path=sys.argv[2], project="promprobe", registry_path="registry.db",
                  online_store=SqliteOnlineStore(path="online.db"))
apply(cfg, root)
store = open_store(cfg, root)
OnlineFeatureWriter(store, cfg).write_latest(
    ["e1"], np.array([1_700_000_000_000]), np.ones((1, len(FEATURE_NAMES)), np.float32))
assert (OnlineFeatureReader(store, cfg).read(["e1"]) == 1).all()
store.get_online_features(features=store.get_feature_service("{service}"),
                          entity_rows=[{{"{key}": "e1"}}])
from prometheus_client import CollectorRegistry, Gauge
import prometheus_client.values as values
gauge = Gauge("probe", "probe", ["p"], registry=CollectorRegistry())
gauge.labels("0").set(1)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    gauge.remove("0")
import importlib.util, typeguard
from feast.feature_view import FeatureView
from services.common.feast_store import lean_import
status = {{"env": sorted(k for k in os.environ if k.startswith("PROMETHEUS")),
          "value_class": values.ValueClass.__name__,
          "torch_loaded": "torch" in sys.modules,
          "feast_instrumented": "typeguard" in FeatureView.__init__.__code__.co_names,
          "typeguard_restored": typeguard.typechecked is not lean_import._not_instrumented}}
if importlib.util.find_spec("torch") is not None:  # the train extra: still importable
    import torch
    status["torch_after"] = torch.ones(2).sum().item()
print(json.dumps(status))
"""


def test_this_test_process_keeps_prometheus_in_process() -> None:
    """The test modules import Feast directly; tests/conftest.py imports it through the
    guard first. Otherwise a service's counters are shared between its instances in one
    test (the ingest restart test counted 1,400 events for 300)."""
    import prometheus_client.values

    assert prometheus_client.values.ValueClass.__name__ == "MutexValue"
    assert not [k for k in os.environ if k.startswith("PROMETHEUS")]


def test_importing_feast_leaves_the_process_clean(tmp_path: Path) -> None:
    """Feast's metrics module (imported on the first FeatureStore calls) sets the
    multi-process variables for the whole process; a service that reads and writes features
    must still remove labels (ingest drops a revoked partition's lag gauge) and hand a clean
    environment to its children. Its import would also load torch and instrument its classes
    with typeguard; the store must work without either, and both stay usable."""
    from services.common.feast_store import JOIN_KEY

    script = _CLEAN_IMPORT_PROBE.format(service=FEATURE_SERVICE_NAME, key=JOIN_KEY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(REPO_ROOT / "feature_repo")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe.pop("torch_after", 2.0) == 2.0
    assert probe == {
        "env": [],
        "value_class": "MutexValue",
        # services.common.feast_store.lean_import: Feast imported without torch and without
        # typeguard's instrumentation (~11 of 15 s of import here), both left usable after.
        "torch_loaded": False,
        "feast_instrumented": False,
        "typeguard_restored": True,
    }
