"""What a registered version records about itself, beyond its files.

Enough to answer, months later: which features in which order (and their schema hash, checked
at load), which data (hash, size, label counts), which seed and library versions, how
preprocessed and calibrated, and how good on held-out data.
"""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import UTC, datetime
from typing import Any

from services.common.features.definition import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    feature_schema_hash,
)

_LIBRARIES = (
    "numpy", "scikit-learn", "xgboost", "torch", "onnx", "onnxruntime", "skl2onnx",
    "onnxmltools", "onnxscript",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a model's behaviour."""
    out = {"python": platform.python_version()}
    for dist in _LIBRARIES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def feature_contract() -> dict[str, Any]:
    """Feature names, order and schema hash."""
    return {
        "feature_names": list(FEATURE_NAMES),
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "feature_schema_hash": feature_schema_hash(),
    }


def on_current_features(metadata: dict[str, Any]) -> bool:
    """True when a version was trained on the feature names and schema this code computes
    (the registry refuses to load others; the main job retrains them)."""
    return metadata.get("feature_schema_hash") == feature_schema_hash() and metadata.get(
        "feature_names"
    ) == list(FEATURE_NAMES)


def training_events_per_s(metadata: dict[str, Any]) -> float | None:
    """Events per second of event time the version's training data had (None: not recorded,
    as before it was, or data without timestamps)."""
    trained = metadata.get("training_data", {}).get("events_per_s")
    return float(trained) if isinstance(trained, int | float) and trained > 0 else None


def calibration_stream_age(metadata: dict[str, Any]) -> int:
    """Events of its training stream before the version's hold-out part (warm-up + fit),
    where its calibration table was made: an evaluation stream warmed up that long meets
    features as old as the calibration's (versions before the warm-up existed had none)."""
    data = metadata.get("training_data", {})
    return int(data.get("warmup_events", 0)) + int(data["fit_events"])


def utc_now() -> str:
    """Creation time, ISO-8601 UTC."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()
