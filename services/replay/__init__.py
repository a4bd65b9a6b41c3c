"""`anomaly replay`: a recorded stream through the production pipeline, every decision kept.

For backtesting thresholds and flags before changing them in production: the events of a
JSONL, Parquet or CSV file go through the ingest validator and window-feature engine and the
router's scoring core, with the vote, thresholds and flags of the configuration given, and
every decision (the `scores` topic record) is written to a file, invalid rows to a rejects
file next to it. With ground truth (a labels side file, or a `label` column) the summary says
what the alerts would have caught: TPR, FPR, precision and recall per anomaly type.

Modules: `sources` (reading and validating), `features` (the engine in stream order),
`runner` (scoring in batches), `writers` (decisions and rejects), `summary` (counts, table,
JSON).
"""

from services.replay.errors import ReplayError
from services.replay.runner import MODES, ModelsMode, ReplayRequest, run_replay
from services.replay.sources import FORMATS, EventSource, Reject
from services.replay.summary import ReplaySummary
from services.replay.writers import rejects_path

__all__ = [
    "FORMATS",
    "MODES",
    "EventSource",
    "ModelsMode",
    "Reject",
    "ReplayError",
    "ReplayRequest",
    "ReplaySummary",
    "rejects_path",
    "run_replay",
]
