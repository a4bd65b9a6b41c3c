"""Names of the model kinds the ensemble combines; used as keys across configuration."""

from __future__ import annotations

from enum import StrEnum


class ModelName(StrEnum):
    """The three detectors of the ensemble.

    The names double as V2 model names on the serving endpoints and as folder names in
    the model registry, so renaming one is a breaking change.
    """

    ISOLATION_FOREST = "isolation_forest"
    XGBOOST = "xgboost"
    TRANSFORMER = "transformer"
