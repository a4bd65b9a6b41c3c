"""Hot reload of the configuration file: flags and vote settings change without a restart.

A Kubernetes ConfigMap mount updates a file by swapping a symlink (`..data` ->
`..2024_05_01_...`), and the new target may carry the same mtime, so the file's *content
hash* decides whether it changed. A changed file is validated with `load_config` exactly as
at start-up; an invalid one is refused (its `ConfigError` logged, the last good
configuration kept). A valid one is compared with the configuration in force, key by key:

- hot-reloadable keys (HOT_RELOADABLE) are applied at once through `LiveConfig.set`, and
  the doors and the stream consumer see them from their next batch (they read
  `live.get()` once per batch);
- every other key needs a restart: things built once at start-up (model clients and their
  endpoints, Kafka clients, the online store, alert sinks and their outbox, ports and API
  keys) would otherwise silently disagree with the configuration shown. Those changes are
  logged as needing a restart and the running values stay.

Every applied change is logged as a diff of dotted key paths (`old -> new`); secrets are
masked. Outcomes are counted in `anomaly_router_config_reloads_total{outcome}`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import SecretStr

from services.common.config import ConfigError, PlatformConfig, load_config
from services.router.core import LiveConfig
from services.router.metrics import RouterMetrics

log = logging.getLogger(__name__)

HOT_RELOADABLE: Final[tuple[str, ...]] = (
    "flags",
    "ensemble",
    "alerts.severity_min_score",
    "alerts.severity_floor",
)
"""Key paths applied live: read per batch by the core (flags, vote) and by `severity_for`."""

MASK: Final = "**********"
_SECRET_KEY = re.compile(r"password|secret|token|credential|connection_string|api_key", re.I)
"""Key names whose values are masked in logs even when they are plain strings."""

Outcome = Literal["unchanged", "no_change", "applied", "restart_required", "rejected"]
"""`unchanged`: same file content as last time (not counted); `no_change`: new content, same
configuration (comments, formatting); the others as their names say."""


@dataclass(frozen=True, slots=True)
class Change:
    """One key whose value differs."""

    path: str
    old: Any
    new: Any

    @property
    def hot(self) -> bool:
        """Whether the change can be applied without a restart."""
        return any(self.path == p or self.path.startswith(p + ".") for p in HOT_RELOADABLE)

    def describe(self) -> str:
        """`path: old -> new`, secrets masked."""
        secret = any(_SECRET_KEY.search(part) for part in self.path.split("."))
        return f"{self.path}: {_show(self.old, secret)} -> {_show(self.new, secret)}"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Final = _Absent()
"""Value of a key that exists on one side of a diff only (e.g. a new map entry)."""


def _show(value: Any, secret: bool) -> str:
    if value is ABSENT or value is None:
        return repr(value)
    if secret or isinstance(value, SecretStr):
        return MASK
    return repr(value)


def _key(k: Any) -> str:
    return str(k.value) if isinstance(k, Enum) else str(k)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a `model_dump()` as (dotted path, value). Maps and lists of mappings are
    walked; sets become sorted lists and lists of plain values stay whole (one key)."""
    if isinstance(value, Mapping):
        if not value and prefix:
            yield prefix, {}
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{_key(k)}" if prefix else _key(k))
    elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}.{i}")
        yield f"{prefix}.length", len(value)
    elif isinstance(value, set | frozenset):
        yield prefix, sorted(_key(v) for v in value)
    elif isinstance(value, list | tuple):
        yield prefix, [_key(v) if isinstance(v, Enum) else v for v in value]
    else:
        yield prefix, value.value if isinstance(value, Enum) else value


def diff(old: PlatformConfig, new: PlatformConfig) -> list[Change]:
    """Keys whose values differ, in path order (SecretStr compares by secret value)."""
    a = dict(flatten(old.model_dump()))
    b = dict(flatten(new.model_dump()))
    return [
        Change(path, a.get(path, ABSENT), b.get(path, ABSENT))
        for path in sorted(a.keys() | b.keys())
        if a.get(path, ABSENT) != b.get(path, ABSENT)
    ]


def apply_hot(current: PlatformConfig, new: PlatformConfig) -> PlatformConfig:
    """`current` with the hot-reloadable keys of `new`. Both are validated configurations and
    no validation rule spans these keys and the others, so the result is valid too."""
    alerts = current.alerts.model_copy(
        update={
            "severity_min_score": new.alerts.severity_min_score,
            "severity_floor": new.alerts.severity_floor,
        }
    )
    return current.model_copy(
        update={"flags": new.flags, "ensemble": new.ensemble, "alerts": alerts}
    )


class ConfigReloader:
    """Polls the configuration file every `interval_s` in a daemon thread and applies
    hot-reloadable changes to `live` (see the module docstring for the rules)."""

    def __init__(
        self,
        path: Path | str,
        live: LiveConfig,
        metrics: RouterMetrics,
        interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.live = live
        self.metrics = metrics
        self.interval_s = interval_s
        self._seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _fingerprint(self) -> str:
        try:
            # read_bytes follows the symlink chain at open time: a ConfigMap swap is seen.
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"

    def check(self) -> Outcome:
        """Look at the file once and apply what changed; safe to call from any thread."""
        with self._lock:
            fingerprint = self._fingerprint()
            if fingerprint == self._seen:
                return "unchanged"
            self._seen = fingerprint
            outcome = self._reload()
            self.metrics.config_reloads.labels(outcome=outcome).inc()
            return outcome

    def _reload(self) -> Outcome:
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            log.error(
                "configuration change rejected; the last good configuration stays in force: %s",
                exc,
                extra={"config_path": str(self.path), "problems": exc.problems},
            )
            return "rejected"
        current = self.live.get()
        changes = diff(current, new)
        hot = [c.describe() for c in changes if c.hot]
        cold = [c.describe() for c in changes if not c.hot]
        if cold:
            log.warning(
                "configuration change needs a restart; the running values stay: %s",
                "; ".join(cold),
                extra={"config_path": str(self.path), "changes": cold},
            )
        if not hot:
            return "restart_required" if cold else "no_change"
        self.live.set(apply_hot(current, new))
        log.info(
            "configuration reloaded: %s",
            "; ".join(hot),
            extra={"config_path": str(self.path), "changes": hot},
        )
        return "applied"

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the next poll retries
                log.exception("configuration check failed", extra={"config_path": str(self.path)})

    def start(self) -> ConfigReloader:
        """Record the file as it is now, then watch it in a daemon thread."""
        if self._thread is None:
            self.check()
            self._thread = threading.Thread(target=self._run, name="config-reload", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching (returns within one interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> ConfigReloader:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
