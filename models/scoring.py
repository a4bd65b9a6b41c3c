"""Scoring a whole recorded stream with registered or freshly trained models.

Evaluation and metric-series scoring both need "calibrated score of every event", from a
`LoadedModel` (registry, native or ONNX runtime) or a `TrainedModel` (just fitted). This
module gives both one shape and builds each event's input the way serving will: a feature
row, or the entity's sequence from `models.sequences`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.calibration import QuantileCalibrator
from models.dataset import LabelledFeatures
from models.detector import F32, InputKind, ModelKind
from models.progress import Progress, silent
from models.registry import KINDS, LoadedModel, Runtime, ScoreBatch
from models.sequences import SEQUENCE_LENGTH, gather_sequences, history_index
from models.training import TrainedModel
from services.common.model_names import ModelName

BATCH_ROWS: Final = 32_768


@dataclass(frozen=True, slots=True)
class ModelScorer:
    """Raw output function + calibration of one model."""

    name: ModelName
    kind: ModelKind
    raw_output: Callable[[F32], F32]
    calibrator: QuantileCalibrator
    sequence_length: int

    @classmethod
    def from_loaded(cls, model: LoadedModel, runtime: Runtime = "native") -> ModelScorer:
        """A registry model, run by the chosen runtime."""

        def raw(x: F32) -> F32:
            return model.predict_raw(x, runtime)

        return cls(
            model.name, model.kind, raw, model.calibrator,
            model.sequence_length or SEQUENCE_LENGTH,
        )  # fmt: skip

    @classmethod
    def from_trained(cls, trained: TrainedModel) -> ModelScorer:
        """A model fitted in this process (not necessarily registered)."""
        length = int(trained.metadata["input"].get("sequence_length", SEQUENCE_LENGTH))
        detector: Any = trained.detector
        return cls(
            trained.name, KINDS[trained.name], detector.raw_output, trained.calibrator, length
        )


def score_stream(
    scorer: ModelScorer,
    data: LabelledFeatures,
    progress: Progress = silent,
    index: np.ndarray[Any, np.dtype[np.int64]] | None = None,
    start: int = 0,
) -> ScoreBatch:
    """Calibrated score (and type) of the events from `start` on, in stream order.

    The events before `start` are history only: sequence models still see them in each
    entity's sequence, as serving does after a long run, but a warm-up of millions of events
    costs no model time."""
    n = len(data)
    if not 0 <= start <= n:
        raise ValueError(f"start must be within [0, {n}], got {start}")
    sequences = scorer.kind.input_kind is InputKind.SEQUENCES
    if sequences and index is None:
        index = history_index(data.entity, scorer.sequence_length)
    raws: list[F32] = []
    for first in range(start, n, BATCH_ROWS):
        stop = min(n, first + BATCH_ROWS)
        if sequences and index is not None:
            x = gather_sequences(data.matrix, index[first:stop])
        else:
            x = data.matrix[first:stop]
        raws.append(scorer.raw_output(x))
        progress(f"[score] {scorer.name.value}: {stop:,}/{n:,} events")
    raw_out = np.concatenate(raws) if raws else np.empty(0, np.float32)
    raw = scorer.kind.anomaly_raw(raw_out)
    return ScoreBatch(scorer.calibrator(raw), raw, scorer.kind.predicted_type(raw_out))
