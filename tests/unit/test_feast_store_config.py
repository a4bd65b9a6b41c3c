"""Building the Feast store from our configuration: mistakes refused when the store is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config.model import FeastConfig, RedisOnlineStore
from services.common.feast_store import (
    FeatureStoreError,
    OnlineFeatureReader,
    apply,
    open_store,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cfg(connection_string: str) -> FeastConfig:
    return FeastConfig(
        repo_path=str(REPO_ROOT / "feature_repo"),
        online_store=RedisOnlineStore(type="redis", connection_string=connection_string),
    )


def _apply_and_read(cfg: FeastConfig, root: Path) -> None:
    apply(cfg, root)
    OnlineFeatureReader(open_store(cfg, root), cfg).read_one("acct")


@pytest.mark.parametrize(
    ("connection_string", "complaint"),
    [
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:notaport", "is not host:port"),
        ("127.0.0.1:70000", "is not host:port"),
        ("db=0", "must start with the Redis server"),
        ("127.0.0.1:6379,pasword=hunter2", "unknown option 'pasword'"),
        ("127.0.0.1:6379, password=hunter2", "unknown option ' password'"),
        ("127.0.0.1:6379,db=x", "db must be a database number"),
        ("127.0.0.1:6379,socket_timeout=abc", "socket_timeout must be seconds"),
    ],
)
def test_a_redis_connection_string_feast_cannot_use_is_refused_at_start(
    tmp_path: Path, connection_string: str, complaint: str
) -> None:
    """Feast parses the string only when the first read creates the client, where these
    failed as KeyError/ValueError/TypeError: on every router request, not once at start.
    Nothing listens on the ports: none of these may get as far as connecting."""
    with pytest.raises(FeatureStoreError, match=complaint) as refused:
        _apply_and_read(_cfg(connection_string), tmp_path)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "connection_string",
    ["127.0.0.1:6379", "redis.internal:6380,db=3,password=x,ssl=true", "h:1,socket_timeout=0.5"],
)
def test_valid_redis_connection_strings_build(tmp_path: Path, connection_string: str) -> None:
    open_store(_cfg(connection_string), tmp_path)
