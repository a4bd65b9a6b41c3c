"""Model code, training, ONNX export, registry and evaluation; needs no broker or server.

Where to look:

* `dataset`: events (+ labels) -> feature rows via the shared FeatureEngine;
* `sequences`: per-entity sequences of recent rows (Transformer input), batch and streaming;
* `isolation_forest`, `xgb_classifier`, `transformer`: the three detectors;
* `calibration`: raw score -> share of held-out normal traffic below it ([0, 1]);
* `training`: split, fit, calibrate, export, parity check, publish (`train_all`);
* `registry`: immutable versions on disk and `Registry.load(...) -> LoadedModel`;
* `ensemble`: the vote (`decide`, `decide_batch`, `needs_transformer`), shared with the router;
* `evaluation`, `baselines`, `metrics`, `report`, `adbench`: held-out figures and reports;
* `metric_series`: univariate metric CSVs through the same features and models.
"""
