"""What `feast apply` registers: the platform's definitions, built in one place.

The objects are defined in `services.common.feast_store.definitions` (importable by the
services and by `anomaly features apply`); this file only exposes them at module level,
where Feast looks for them, so the CLI and our code cannot drift apart.
"""

from pathlib import Path

from services.common.feast_store.definitions import build_definitions

# Feast creates only the last directory level of the registry and SQLite paths; make the
# platform's var/feast (see feature_store.yaml) exist so `feast apply` works in a fresh
# checkout. Feast imports this file before it writes anything.
(Path(__file__).resolve().parent.parent / "var" / "feast").mkdir(parents=True, exist_ok=True)

_definitions = build_definitions()

entity = _definitions.entity
entity_window_features_batch = _definitions.batch_source
entity_window_features_push = _definitions.push_source
entity_window_features = _definitions.feature_view
router_features = _definitions.feature_service
