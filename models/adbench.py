"""The tabular sanity check on ADBench data sets nobody here generated.

Our synthetic stream could flatter the models (same people wrote generator and features).
Five ADBench data sets (`../shared/data/adbench/*.npz`, arrays `X` and `y`, 1 = anomaly)
check the model code on real data: the Isolation Forest unsupervised (fitted on all rows,
scored against `y`) and XGBoost supervised (binary, stratified 70/30 split, scored on the
30%). Published ADBench figures for IForest on these sets (ROC-AUC roughly 0.6-0.99) give a
reference; this is a check that the code is sound, not a benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import numpy as np

from models.isolation_forest import IsolationForestSettings
from models.progress import Progress, silent
from models.xgb_classifier import XGBoostSettings

ADBENCH_ENV: Final = "ANOMALY_ADBENCH_DIR"
"""Overrides the default location of the ADBench folder."""


def default_adbench_dir(repo_root: Path) -> Path:
    """`$ANOMALY_ADBENCH_DIR`, else `<repo>/../shared/data/adbench`."""
    env = os.environ.get(ADBENCH_ENV)
    return Path(env) if env else repo_root.parent / "shared" / "data" / "adbench"


def _metrics(y: np.ndarray[Any, Any], score: np.ndarray[Any, Any]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    }


def check_dataset(
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    seed: int,
    forest: IsolationForestSettings | None = None,
    boosting: XGBoostSettings | None = None,
) -> dict[str, Any]:
    """IF (unsupervised, all rows) and XGBoost (binary, stratified split) on one data set."""
    import xgboost as xgb
    from sklearn.ensemble import IsolationForest
    from sklearn.model_selection import train_test_split

    forest = forest or IsolationForestSettings()
    boosting = boosting or XGBoostSettings(n_rounds=200, max_depth=6)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64).ravel()
    iforest = IsolationForest(
        n_estimators=forest.n_estimators,
        max_samples=min(forest.max_samples, len(x)),
        random_state=seed,
    ).fit(x)
    out: dict[str, Any] = {
        "rows": len(x),
        "features": int(x.shape[1]),
        "anomaly_rate": float(y.mean()),
        "isolation_forest": _metrics(y, -iforest.score_samples(x)),
    }
    x_fit, x_test, y_fit, y_test = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=seed
    )
    params = {
        "objective": "binary:logistic",
        "max_depth": boosting.max_depth,
        "eta": boosting.learning_rate,
        "tree_method": "hist",
        "nthread": boosting.threads or os.cpu_count() or 1,
        "seed": seed,
        "verbosity": 0,
    }
    booster = xgb.train(params, xgb.DMatrix(x_fit, label=y_fit), boosting.n_rounds)
    out["xgboost"] = {
        **_metrics(y_test, booster.predict(xgb.DMatrix(x_test))),
        "test_rows": len(x_test),
    }
    return out


def run_adbench(
    folder: Path, seed: int = 42, progress: Progress = silent, names: list[str] | None = None
) -> dict[str, Any]:
    """Results per data set, or `{"skipped": reason}` when the folder is absent."""
    if not folder.is_dir():
        return {"skipped": f"ADBench folder {folder} not found (set {ADBENCH_ENV} to point at it)"}
    files = sorted(folder.glob("*.npz"))
    if names:
        files = [f for f in files if f.stem in names]
    if not files:
        return {"skipped": f"no .npz data sets in {folder}"}
    results: dict[str, Any] = {}
    for path in files:
        progress(f"[adbench] {path.stem}")
        with np.load(path, allow_pickle=False) as data:
            results[path.stem] = check_dataset(data["X"], data["y"], seed)
    return {"folder": str(folder), "datasets": results}
