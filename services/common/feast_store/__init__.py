"""The Feast feature store of the platform: definitions, store building, fast online I/O.

`apply()` registers the definitions (what `anomaly features apply` runs); the ingest
service writes with `OnlineFeatureWriter`, the router reads with `OnlineFeatureReader`.
Both go through the online store's own batched interface, so whatever they write stays
readable by Feast's `get_online_features` and the `feast` CLI.
"""

import os as _os

# Importing feast.metrics sets PROMETHEUS_MULTIPROC_DIR/PROMETHEUS_MULTIPROCESS_DIR for the
# whole process. Our services are single-process and serve their own registry; left set,
# prometheus_client switches parts of itself to multi-process mode (label removal stops
# working and warns, child processes inherit the setting). So prometheus_client is imported
# first (its value store is chosen at import: in-process), feast.metrics now rather than on
# the first FeatureStore call (which is where it used to set the variables, after this
# guard had run), and what Feast added is undone.
import prometheus_client as _prometheus_client  # noqa: F401

_PROMETHEUS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
_before = {name: _os.environ.get(name) for name in _PROMETHEUS_ENV}
import feast as _feast  # noqa: E402,F401
import feast.metrics as _feast_metrics  # noqa: E402,F401

for _name, _value in _before.items():
    if _value is None:
        _os.environ.pop(_name, None)

from services.common.feast_store.definitions import (  # noqa: E402
    ENTITY_NAME,
    FEATURE_SERVICE_NAME,
    FEATURE_VIEW_NAME,
    JOIN_KEY,
    PUSH_SOURCE_NAME,
    FeastDefinitions,
    build_definitions,
)
from services.common.feast_store.errors import (  # noqa: E402
    FeatureStoreError,
    FeatureStoreNotApplied,
    FeatureStoreUnavailable,
)
from services.common.feast_store.reader import OnlineFeatureReader  # noqa: E402
from services.common.feast_store.store import (  # noqa: E402
    apply,
    build_repo_config,
    open_store,
    render_feature_store_yaml,
)
from services.common.feast_store.writer import OnlineFeatureWriter  # noqa: E402

__all__ = [
    "ENTITY_NAME",
    "FEATURE_SERVICE_NAME",
    "FEATURE_VIEW_NAME",
    "JOIN_KEY",
    "PUSH_SOURCE_NAME",
    "FeastDefinitions",
    "FeatureStoreError",
    "FeatureStoreNotApplied",
    "FeatureStoreUnavailable",
    "OnlineFeatureReader",
    "OnlineFeatureWriter",
    "apply",
    "build_definitions",
    "build_repo_config",
    "open_store",
    "render_feature_store_yaml",
]
