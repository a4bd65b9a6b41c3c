"""Importing Feast without the parts of its import that our services pay for and never use.

Every process that reads or writes features imports Feast: the router, the ingest service,
`anomaly features apply`, replay, the main job and most test servers. Feast 0.67's import
does three things to the whole process that none of them needs:

- **typeguard instrumentation.** Feast decorates its definition classes (FeatureView,
  DataSource, OnDemandFeatureView, Entity, ...) with typeguard's `@typechecked`, which
  re-parses and recompiles their source with `ast` on every import, then type-checks
  arguments at run time. Measured here (`python -X importtime`, 2 cores): ~8 of the 11 s
  that importing this package took once torch was out of the way (3.2 s without it). Our
  definitions are built in code that mypy and the tests check (`definitions.py`), so the
  decorator is made a no-op while Feast's modules bind it, and restored at once: anything
  else that uses typeguard keeps it, and the `feast` CLI, a process of its own, is unchanged.
- **torch.** `feast.torch_wrapper` imports torch whenever it is installed (for the optional
  `to_tensor` conversions), so with the `train` extra every such process carried torch:
  839 MB against 200 MB of resident memory after this import, and ~3.7 s. Feast is told
  torch is absent (`sys.modules["torch"] = None` while it imports, an ImportError that Feast
  catches); a later `import torch` anywhere in the process works as usual. Only Feast's own
  tensor helpers (`to_tensor`, its RAG retriever), which nothing here calls, then refuse.
  A process that already imported torch keeps Feast's full behaviour.
- **Prometheus multi-process variables.** Importing `feast.metrics` sets
  `PROMETHEUS_MULTIPROC_DIR`/`PROMETHEUS_MULTIPROCESS_DIR` for the whole process. Our
  services are single-process and serve their own registry; left set, prometheus_client
  switches parts of itself to multi-process mode (label removal stops working and warns,
  child processes inherit the setting). So prometheus_client is imported first (its value
  store is chosen at import: in-process), `feast.metrics` now rather than on the first
  FeatureStore call (where it used to set the variables, after any guard had run), and what
  Feast added is undone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_PROMETHEUS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def _not_instrumented(target: Any = None, **_options: Any) -> Any:
    """`typeguard.typechecked` that leaves its target as it is (also as `@typechecked()`)."""
    if target is None:
        return lambda decorated: decorated
    return target


@contextmanager
def _typeguard_off() -> Iterator[None]:
    try:
        import typeguard
    except ImportError:  # a Feast that no longer needs it
        yield
        return
    original: Callable[..., Any] = typeguard.typechecked
    typeguard.typechecked = _not_instrumented
    try:
        yield
    finally:
        typeguard.typechecked = original


@contextmanager
def _torch_hidden() -> Iterator[None]:
    if "torch" in sys.modules:  # already loaded: Feast may as well use it
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


@contextmanager
def _prometheus_in_process() -> Iterator[None]:
    import prometheus_client  # noqa: F401  (before Feast: its value store is chosen now)

    before = {name: os.environ.get(name) for name in _PROMETHEUS_ENV}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)


def import_feast() -> None:
    """Import Feast and `feast.metrics` under the three guards above (then a no-op)."""
    with _prometheus_in_process(), _torch_hidden(), _typeguard_off():
        import feast
        import feast.metrics  # noqa: F401
