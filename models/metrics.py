"""Detection metrics shared by training (hold-out figures) and evaluation.

Operating points are stated as "TPR at FPR <= f": the lowest threshold whose false-positive
rate on normal events does not exceed f, and the share of anomalies at or above it. That is
what an on-call team buys: a bounded alert rate on normal traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.common.anomaly_types import ALL_LABELS

F64 = npt.NDArray[np.float64]
FPR_TARGETS: Final = (0.001, 0.003, 0.01)


def fpr_key(fpr: float) -> str:
    """'0.3%' style key of an FPR target."""
    return f"{fpr * 100:g}%"


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold and what it yields."""

    threshold: float
    tpr: float
    fpr: float


def operating_point(
    is_anomaly: npt.NDArray[np.bool_], score: F64, max_fpr: float
) -> OperatingPoint:
    """The lowest threshold with FPR <= max_fpr (events with score >= threshold flagged)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(is_anomaly, score)
    i = int(np.searchsorted(fpr, max_fpr, side="right") - 1)
    threshold = float(thresholds[i]) if i > 0 else float("inf")
    return OperatingPoint(threshold, float(tpr[i]), float(fpr[i]))


def threshold_for_fpr(normal_scores: F64, max_fpr: float) -> float:
    """Threshold flagging at most `max_fpr` of these normal scores (score >= threshold)."""
    ordered = np.sort(np.asarray(normal_scores, np.float64))[::-1]
    allowed = int(np.floor(max_fpr * ordered.size))
    if allowed >= ordered.size:
        return float(ordered[-1])
    # Just above the (allowed+1)-th highest normal score.
    return float(np.nextafter(ordered[allowed], np.inf))


def detection_metrics(labels: npt.NDArray[np.integer[Any]], score: F64) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, TPR at the FPR targets and recall per type at each of them."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_anomaly = labels > 0
    positives = int(is_anomaly.sum())
    if positives == 0 or positives == len(labels):
        return {"anomalies": positives, "normals": int(len(labels) - positives)}
    clean = np.nan_to_num(np.asarray(score, np.float64), nan=-np.inf)
    out: dict[str, Any] = {
        "anomalies": positives,
        "normals": int(len(labels) - positives),
        "roc_auc": float(roc_auc_score(is_anomaly, clean)),
        "pr_auc": float(average_precision_score(is_anomaly, clean)),
        "tpr_at_fpr": {},
        "recall_per_type_at_fpr": {},
    }
    for target in FPR_TARGETS:
        point = operating_point(is_anomaly, clean, target)
        key = fpr_key(target)
        out["tpr_at_fpr"][key] = {"tpr": point.tpr, "fpr": point.fpr, "threshold": point.threshold}
        out["recall_per_type_at_fpr"][key] = recall_per_type(labels, clean >= point.threshold)
    return out


def recall_per_type(
    labels: npt.NDArray[np.integer[Any]], flagged: npt.NDArray[np.bool_]
) -> dict[str, float | None]:
    """Share of each anomaly type's events that were flagged (None when absent)."""
    out: dict[str, float | None] = {}
    for code, label in enumerate(ALL_LABELS):
        if code == 0:
            continue
        rows = labels == code
        out[label] = float(flagged[rows].mean()) if rows.any() else None
    return out


def decision_metrics(
    labels: npt.NDArray[np.integer[Any]], flagged: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """TPR, FPR, precision and per-type recall of a fixed decision."""
    is_anomaly = labels > 0
    tp = int((flagged & is_anomaly).sum())
    fp = int((flagged & ~is_anomaly).sum())
    positives = int(is_anomaly.sum())
    negatives = int((~is_anomaly).sum())
    return {
        "tpr": tp / positives if positives else None,
        "fpr": fp / negatives if negatives else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "alerts": tp + fp,
        "recall_per_type": recall_per_type(labels, flagged),
    }
