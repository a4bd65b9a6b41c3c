"""Keeping the garbage collector off the objects a service holds for its whole life.

A service imports Feast, KServe, gRPC, FastAPI and pandas (~150k objects from Feast alone)
and then, per micro-batch, makes thousands of short-lived objects (messages, dicts, lists).
Every third gen-0 collection pass cascades into older generations, and a full collection
walks every object left from start-up, again and again: py-spy put such pauses on the lines
that allocate. Moving the start-up heap to the permanent generation (`gc.freeze`) leaves the
collector only the batch garbage, which is what it is for.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then hide everything alive now from later collections.

    Call it when start-up is done (imports, clients, configuration), just before the loop
    that runs for the process's life. Objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()
