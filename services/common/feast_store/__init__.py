"""The Feast feature store of the platform: definitions, store building, fast online I/O.

`apply()` registers the definitions (what `anomaly features apply` runs); the ingest
service writes with `OnlineFeatureWriter`, the router reads with `OnlineFeatureReader`.
Both go through the online store's own batched interface, so whatever they write stays
readable by Feast's `get_online_features` and the `feast` CLI.
"""

# Before any submodule imports Feast: see lean_import for what this spares every process.
from services.common.feast_store.lean_import import import_feast as _import_feast

_import_feast()

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
    FeatureStoreMisconfigured,
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
    "FeatureStoreMisconfigured",
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
