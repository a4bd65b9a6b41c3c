"""What every detector provides, so training, the registry and serving treat them alike.

A *detector* is a fitted model in memory. A *kind* is what the registry needs to know about
a model family without a fitted instance: the native file name, how to load it, which ONNX
output to read, and how the raw output becomes an anomaly score (and, for XGBoost, a type).
Keeping that last step here, as a function of the raw output, is what lets a server run the
ONNX file in any runtime and still produce the same calibrated score as the native model.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.common.model_names import ModelName

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class InputKind(StrEnum):
    """Shape of a model's input."""

    ROWS = "rows"
    """(batch, n_features) feature vectors."""
    SEQUENCES = "sequences"
    """(batch, sequence_length, n_features): the entity's recent rows, current one last
    (see `models.sequences`)."""


class NativeModel(Protocol):
    """A model loaded in its own library (scikit-learn, XGBoost, torch)."""

    def raw_output(self, x: F32) -> F32:
        """The model's raw output for a batch: what its ONNX export also returns."""
        ...


class Detector(NativeModel, Protocol):
    """A freshly fitted model that can be written to the registry."""

    onnx_max_rows: int | None
    """Largest batch its ONNX export scores faster than the native library (None: every
    batch), as measured for this exporter; recorded in the metadata for the servers."""

    def save_native(self, folder: Path) -> str:
        """Write the native artifact into `folder`; returns its file name."""
        ...

    def to_onnx(self) -> bytes:
        """The serialized ONNX model (input `features`, float32)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Hyperparameters and preprocessing, stored in the metadata."""
        ...


class ModelKind(Protocol):
    """Static facts and output semantics of one model family."""

    name: ModelName
    input_kind: InputKind
    native_file: str
    onnx_output: str
    """Name of the ONNX output holding the raw output."""

    def anomaly_raw(self, raw: F32) -> F64:
        """Raw anomaly score (higher = more anomalous), the input of calibration."""
        ...

    def predicted_type(self, raw: F32) -> I64 | None:
        """Index into `AnomalyType` per row, for models that predict a type; else None."""
        ...

    def load_native(self, folder: Path, metadata: dict[str, Any]) -> NativeModel:
        """Load the native artifact written by `Detector.save_native`."""
        ...
