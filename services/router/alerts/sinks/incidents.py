"""What the PagerDuty sink remembers per dedup_key, durably.

Grouping ("one trigger per key per window") and resolving ("no alert for a while") are
decisions about time since something happened, so that time is kept in the outbox
database: after a restart the sink neither re-pages a burst it already reported nor
forgets to resolve an incident it opened. Only keys with recent activity are kept, so
memory is bounded by the number of open incidents.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from services.router.alerts.sinks.base import KeyValueStore


@dataclass
class Incident:
    """Grouping and resolve state of one dedup_key."""

    triggered: bool = False
    """A trigger was accepted and no resolve since: the incident is open at PagerDuty."""
    last_trigger_at: float = 0.0
    """When the last trigger was accepted; the grouping window runs from here."""
    last_alert_at: float = 0.0
    """When the sink last saw an alert of this key; the resolve timer runs from here."""
    alerts_total: int = 0
    """Alerts folded into accepted triggers since the incident opened."""
    unsent: bool = False
    """Alerts of this key are waiting (held or failed): never resolve under them."""


class MemoryStore:
    """A KeyValueStore in a dict, for sinks used without an outbox (tests, tools)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def load(self) -> dict[str, str]:
        return dict(self.data)

    def put(self, key: str, value: str) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class IncidentBook:
    """Incidents by dedup_key, mirrored in memory and written through to a durable store."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._incidents = {key: Incident(**json.loads(v)) for key, v in store.load().items()}

    def __len__(self) -> int:
        return len(self._incidents)

    def get(self, key: str) -> Incident:
        """The incident of `key` (a fresh one if unknown; not stored until `save`)."""
        incident = self._incidents.get(key)
        return Incident() if incident is None else Incident(**asdict(incident))

    def save(self, key: str, incident: Incident) -> None:
        """Remember `incident` durably."""
        self._store.put(key, json.dumps(asdict(incident)))
        self._incidents[key] = incident

    def forget(self, key: str) -> None:
        """Drop `key` (resolved, or idle long enough to be of no further use)."""
        self._store.delete(key)
        self._incidents.pop(key, None)

    def due_resolves(self, now: float, resolve_after_s: float, limit: int) -> list[str]:
        """Open incidents with nothing waiting and no alert for `resolve_after_s`."""
        due = [
            key
            for key, inc in self._incidents.items()
            if inc.triggered and not inc.unsent and now - inc.last_alert_at >= resolve_after_s
        ]
        return due[:limit]

    def idle(self, now: float, keep_s: float, *, include_open: bool) -> list[str]:
        """Keys with nothing waiting and no activity for `keep_s`: safe to forget.

        Open incidents are included only when no resolve will ever be sent for them
        (`resolve_after_s: 0`); forgetting one then only restarts its alert count.
        """
        return [
            key
            for key, inc in self._incidents.items()
            if not inc.unsent
            and (include_open or not inc.triggered)
            and now - max(inc.last_alert_at, inc.last_trigger_at) >= keep_s
        ]
