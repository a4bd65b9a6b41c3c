"""What can go wrong when delivering alerts, with the status the receiving side gave.

The dispatcher decides retry-or-dead from these objects alone, so every sink (HTTP or
Kafka) translates its failures into them once, in one place, and the decision rule lives
in one place too (`DeliveryError.retryable`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.common.config import ConfigError


class AlertError(Exception):
    """Base of the alert package's errors; `status_code` is what a door would answer."""

    status_code: int = 500


class DeliveryError(AlertError):
    """A sink could not deliver a batch.

    `status` is the receiver's HTTP status (None for network errors, timeouts and Kafka
    errors). `retryable` is False for refusals that repeating cannot fix (4xx other than
    408/429): those alerts are marked dead in the outbox, never retried forever.
    """

    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class PartialDelivery(AlertError):
    """Some alerts of a batch failed, each with its own error; every other one was accepted.

    `failures` maps the index of each failed alert in the batch to its DeliveryError (one
    object may stand for several). A sink that delivers record by record (Kafka) or can
    split a batch (webhook, on 413) raises this instead of a DeliveryError, so that one bad
    alert costs only itself: failing the whole batch marked dead alerts the receiver had
    accepted or never seen, and sent the accepted ones again.
    """

    status_code = 207

    def __init__(self, failures: Mapping[int, DeliveryError]) -> None:
        super().__init__(f"{len(failures)} alert(s) of the batch not delivered")
        self.failures = dict(failures)


class HeldForGrouping(AlertError):
    """Not now: the sink folds these alerts into a later message at `until` (epoch s).

    A deferral, not a failure (like Quix's `SinkBackpressureError`): the dispatcher keeps
    them pending without counting an attempt; they come back together when the grouping
    window ends.
    """

    status_code = 202

    def __init__(self, until: float) -> None:
        super().__init__(f"held for grouping until {until:.3f}")
        self.until = until


class SinkConfigurationError(ConfigError, AlertError):
    """A sink cannot be built from the configuration; the message says which key to set.

    A `ConfigError`, so the CLI reports it as one line with exit code 2. It is raised when
    the sinks are built rather than when the file is loaded because secrets such as the
    routing key arrive from the environment of the running service only.
    """

    status_code = 400

    def __init__(self, problem: str) -> None:
        super().__init__("alerts configuration", [problem])
