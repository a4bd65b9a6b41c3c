"""Building Feast's `FeatureStore` from `PlatformConfig.feast`, and registering our objects.

Feast normally reads `feature_repo/feature_store.yaml`. Our services instead build the same
`RepoConfig` from the typed platform configuration, so one file (config/platform.yaml plus
`ANOMALY_*` overrides) decides where the registry and the online store are, for every
service, while `feast` CLI users keep a working `feature_store.yaml` (the defaults there
match the defaults here; a test holds them together).

Paths in `FeastConfig` are relative to the platform's working directory (the repository
root), as everywhere else in our configuration; Feast resolves relative paths against the
Feast repo directory instead, so they are made absolute here before Feast sees them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from feast import FeatureStore, FeatureView, RepoConfig
from feast.errors import FeastExtrasDependencyImportError, FeatureViewNotFoundException
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from services.common.config.model import FeastConfig, RedisOnlineStore, SqliteOnlineStore
from services.common.feast_store.definitions import (
    FEATURE_VIEW_NAME,
    FeastDefinitions,
    build_definitions,
)
from services.common.feast_store.errors import (
    FeatureStoreError,
    FeatureStoreMisconfigured,
    FeatureStoreNotApplied,
    FeatureStoreUnavailable,
    redact,
)
from services.common.features.definition import FEATURE_NAMES

logger = logging.getLogger(__name__)

ENTITY_KEY_SERIALIZATION_VERSION = 3
"""Feast's current key encoding; pinned so an upgrade cannot silently change our keys."""

REDIS_CLIENT_DEFAULTS = {"socket_connect_timeout": "5", "socket_timeout": "5", "retry": "null"}
"""Added to a Redis connection string that does not set them (Feast passes them to redis-py).

redis-py waits forever by default, and its default retry policy (3 retries, exponential
backoff from 1 s) turns an unreachable server into ~8 s per call. Our callers decide
themselves: the router degrades at once, the ingest service replays the batch.
"""


def _absolute(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _redis_connection_string(connection_string: str) -> str:
    present = {part.split("=", 1)[0] for part in connection_string.split(",") if "=" in part}
    extra = [f"{k}={v}" for k, v in REDIS_CLIENT_DEFAULTS.items() if k not in present]
    return ",".join([connection_string, *extra])


def check_redis_connection_string(connection_string: str) -> None:
    """Refuse what Feast's parser would turn into a KeyError or TypeError at the first read.

    Feast splits the string at commas: parts without `=` are `host:port` nodes (a plain
    Redis uses the first), the others become keyword arguments of `redis.Redis` after
    `json.loads` of the value. Nothing is checked until a read or write creates the client.
    """
    # Only the offending part is shown: a misspelt option may be a password's.
    what = "feast.online_store.connection_string"
    parts = connection_string.split(",")
    nodes = [part for part in parts if "=" not in part]
    if not nodes or not nodes[0]:
        raise FeatureStoreMisconfigured(f"{what} must start with the Redis server's host:port")
    for node in nodes:
        host, _, port = node.partition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FeatureStoreMisconfigured(
                f"{what}: {node!r} is not host:port "
                "(a port from 1 to 65535; IPv6 literals are not supported by Feast)"
            )
    try:
        import redis
    except ImportError:  # build_repo_config says which extra to install
        return
    known = set(inspect.signature(redis.Redis.__init__).parameters) - {"self", "host", "port"}
    for part in parts:
        if "=" not in part:
            continue
        name, _, raw = part.partition("=")
        if name not in known:
            raise FeatureStoreMisconfigured(
                f"{what}: unknown option {name!r} "
                "(options are keyword arguments of redis.Redis, e.g. db, password, ssl)"
            )
        if name == "db" and not raw.isdigit():
            raise FeatureStoreMisconfigured(f"{what}: db must be a database number, got {raw!r}")
        if name in ("socket_timeout", "socket_connect_timeout") and raw != "null":
            try:
                valid = float(raw) > 0
            except ValueError:
                valid = False
            if not valid:
                raise FeatureStoreMisconfigured(
                    f"{what}: {name} must be seconds or null, got {raw!r}"
                )


def describe_online_store(config: RepoConfig) -> str:
    """One line naming the online store, credentials hidden (for logs and errors)."""
    online = config.online_store
    if online.type == "redis":
        return f"redis online store at {redact(online.connection_string)}"
    return f"{online.type} online store at {getattr(online, 'path', '?')}"


def _describe(cfg: FeastConfig, root: Path | None) -> str:
    online = cfg.online_store
    if isinstance(online, RedisOnlineStore):
        return f"redis online store at {redact(online.connection_string)}"
    return f"sqlite online store at {_absolute((root or Path.cwd()).resolve(), online.path)}"


def repo_config_dict(cfg: FeastConfig, root: Path | None = None) -> dict[str, Any]:
    """The `feature_store.yaml` content equivalent to `cfg`, with absolute paths.

    `root` is the directory our relative paths are relative to (default: the working
    directory). Parent directories of file paths are created, since Feast's SQLite
    store creates only the last level and a fresh checkout has no `var/`.
    """
    base = (root or Path.cwd()).resolve()
    registry = _absolute(base, cfg.registry_path)
    registry.parent.mkdir(parents=True, exist_ok=True)
    online: dict[str, Any]
    if isinstance(cfg.online_store, SqliteOnlineStore):
        db = _absolute(base, cfg.online_store.path)
        db.parent.mkdir(parents=True, exist_ok=True)
        online = {"type": "sqlite", "path": str(db)}
    else:
        online = {
            "type": "redis",
            "connection_string": _redis_connection_string(cfg.online_store.connection_string),
        }
        if cfg.online_store.key_ttl_seconds is not None:
            online["key_ttl_seconds"] = cfg.online_store.key_ttl_seconds
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(registry)},
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
    }


def render_feature_store_yaml(cfg: FeastConfig, root: Path | None = None) -> str:
    """`feature_store.yaml` text for `cfg`, for `feast -f FILE ...` against our config."""
    return yaml.safe_dump(repo_config_dict(cfg, root), sort_keys=False)


def build_repo_config(cfg: FeastConfig, root: Path | None = None) -> RepoConfig:
    """Feast's `RepoConfig` for `cfg`; `repo_path` is the Feast repo directory."""
    base = (root or Path.cwd()).resolve()
    if isinstance(cfg.online_store, RedisOnlineStore):
        check_redis_connection_string(cfg.online_store.connection_string)
    with translate_errors(_describe(cfg, base)):
        config = RepoConfig(**repo_config_dict(cfg, base))
        # Validating the online store config imports its module, so a missing extra
        # (redis) fails here, at start-up, with our message.
        _ = config.online_store
    config.repo_path = _absolute(base, cfg.repo_path)
    return config


def open_store(cfg: FeastConfig, root: Path | None = None) -> FeatureStore:
    """A `FeatureStore` built from the platform configuration (no yaml file read)."""
    base = (root or Path.cwd()).resolve()
    config = build_repo_config(cfg, base)
    assert config.repo_path is not None
    with translate_errors(describe_online_store(config)):
        return FeatureStore(repo_path=str(config.repo_path), config=config)


def apply(cfg: FeastConfig, root: Path | None = None) -> FeastDefinitions:
    """Register entity, sources, feature view and service; create the online tables.

    What `anomaly features apply` runs; the same as `feast apply` in `feature_repo/`
    with the same configuration. SQLite is switched to WAL here, once (the mode is a
    property of the file): with the default rollback journal, a write batch of the ingest
    service locks readers (the router, another process) out until it commits. Measured
    on 2 shared cores with 10k-row batches: 1-entity reads waited up to 2.6 s (p99
    2.3 ms) in rollback mode, at most 9 ms (p99 0.6 ms) in WAL mode.
    """
    store = open_store(cfg, root)
    definitions = build_definitions()
    with translate_errors(describe_online_store(store.config)):
        try:
            store.apply(definitions.all())
        except DecodeError as exc:
            raise _unreadable_registry(store, exc) from exc
        if isinstance(cfg.online_store, SqliteOnlineStore):
            enable_sqlite_wal(Path(store.config.online_store.path))
    logger.info("applied feast project %s (%s)", cfg.project, describe_online_store(store.config))
    return definitions


def enable_sqlite_wal(db_path: Path) -> None:
    """Put an SQLite online store file in WAL mode (readers never wait for the writer).

    A separate short-lived connection: the journal mode is stored in the file, so Feast's
    own connections (opened before or after) use it too; the tables are unchanged.
    """
    conn = sqlite3.connect(db_path)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.OperationalError as exc:  # e.g. locked by a writer right now
        mode = f"its current ({exc})"
    finally:
        conn.close()
    if str(mode).lower() != "wal":
        logger.warning("sqlite online store %s stays in %s journal mode", db_path, mode)


def _unreadable_registry(store: FeatureStore, exc: DecodeError) -> FeatureStoreNotApplied:
    """Feast rewrites the registry file in place (truncate, then write), so an apply that was
    killed half-way leaves a file no later apply can read either: only removing it helps."""
    path = store.config.registry.path
    return FeatureStoreNotApplied(
        f"the Feast registry {path} is not a readable registry (cut short by an interrupted "
        f"apply?): delete it and run `anomaly features apply` ({exc})"
    )


def registered_feature_view(store: FeatureStore, cfg: FeastConfig) -> FeatureView:
    """Our feature view as the registry holds it, checked against FEATURE_NAMES.

    The writer and reader work from the registered view (the one Feast's own reads use),
    so a registry applied from an older feature list is refused instead of read wrongly.
    """
    try:
        view = store.get_feature_view(FEATURE_VIEW_NAME)
    except DecodeError as exc:
        raise _unreadable_registry(store, exc) from exc
    except FeatureViewNotFoundException:
        raise FeatureStoreNotApplied(
            f"feature view {FEATURE_VIEW_NAME!r} is not in the Feast registry "
            f"{cfg.registry_path!r} (project {cfg.project!r}); run `anomaly features apply`"
        ) from None
    registered = tuple(f.name for f in view.features)
    if registered != FEATURE_NAMES:
        raise FeatureStoreNotApplied(
            f"feature view {FEATURE_VIEW_NAME!r} in the registry has fields {registered}, "
            f"the code has {FEATURE_NAMES}; run `anomaly features apply`"
        )
    return view


_NO_ERRORS: tuple[type[BaseException], ...] = ()


def _redis_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(unreachable, refused) error types of redis-py, both empty without it (imported
    lazily: an SQLite-only deployment need not have redis-py).

    Refused are the errors the server answers with: READONLY (a replica after a failover),
    OOM, a `db` the server does not have. A store-side state, not a bug of the caller: a
    door should answer 503 as for an unreachable server, not 500 with a traceback.
    """
    try:
        import redis.exceptions
    except ImportError:
        return _NO_ERRORS, _NO_ERRORS
    unreachable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    return unreachable, (redis.exceptions.ResponseError,)


_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def _find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def translate_exception(exc: BaseException, where: str) -> FeatureStoreError | None:
    """Our error for a store-level failure, or None when `exc` is not one we know.

    Kept apart from the context manager so the hot read/write paths can use a plain
    try/except (a generator-based context manager costs microseconds per call).
    """
    missing_extra = _find_in_chain(exc, FeastExtrasDependencyImportError)
    if missing_extra is not None:
        # Feast raises it from the store module's import, often wrapped in a
        # FeastModuleImportError that no longer says what to install.
        first_line = str(missing_extra).splitlines()[0] if str(missing_extra) else ""
        return FeatureStoreUnavailable(
            f"{where} needs an optional dependency: pip install 'feast[redis]' 'redis<8' "
            f"({first_line})"
        )
    if isinstance(exc, sqlite3.OperationalError):
        if "no such table" in str(exc):
            return FeatureStoreNotApplied(
                f"{where} has no table for {FEATURE_VIEW_NAME!r}: run `anomaly features apply` "
                f"({exc})"
            )
        return FeatureStoreUnavailable(f"{where}: {exc}")
    if isinstance(exc, OSError):
        # The store's folder or registry file cannot be made or written (read-only mount,
        # a file where a folder should be): a deployment problem the message must name.
        return FeatureStoreUnavailable(f"{where}: {exc}")
    unreachable, refused = _redis_exceptions()
    if isinstance(exc, unreachable):
        return FeatureStoreUnavailable(f"{where} is unreachable: {exc}")
    if isinstance(exc, refused):
        # A pipeline's error quotes the whole command first: binary keys and values.
        answer = _PIPELINE_PREFIX.sub("", str(exc))
        return FeatureStoreUnavailable(f"{where} refused the command: {answer}")
    return None


@contextlib.contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn store-level failures into `FeatureStoreUnavailable` / `FeatureStoreNotApplied`.

    `where` names the store in the message (see `describe_online_store`).
    """
    try:
        yield
    except Exception as exc:
        ours = translate_exception(exc, where)
        if ours is None:
            raise
        raise ours from exc
