"""Generic webhook: one JSON POST per batch.

Body: `{"alerts": [<alert>, ...]}` where each alert is `Alert.to_json()`; an object rather
than a bare array so that fields can be added later without breaking receivers. Retries
follow `http_post` (408/429/5xx/network); a 413 splits the batch. A batch may arrive more
than once, so receivers should deduplicate by (`event_id`, `anomaly_type`).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from services.common.config.model import AlertSinkConfig, WebhookSink
from services.router.alerts.alert import Alert
from services.router.alerts.errors import DeliveryError, PartialDelivery
from services.router.alerts.sinks.base import AlertSink, SinkContext
from services.router.alerts.sinks.http_post import make_client, post_json


def webhook_body(batch: Sequence[Alert]) -> bytes:
    """The POST body of a batch (alerts are already JSON; no re-encoding)."""
    return b'{"alerts":[' + b",".join(alert.to_json() for alert in batch) + b"]}"


class WebhookAlertSink(AlertSink):
    """POSTs batches of alerts to one URL with the configured headers."""

    def __init__(self, name: str, cfg: WebhookSink, client: httpx.Client | None = None) -> None:
        super().__init__(name)
        self._cfg = cfg
        self._headers = {key: value.get_secret_value() for key, value in cfg.headers.items()}
        self._client = client or make_client(cfg.timeout_s)

    @classmethod
    def from_config(cls, name: str, cfg: AlertSinkConfig, ctx: SinkContext) -> WebhookAlertSink:
        """Build from a `type: webhook` section."""
        if not isinstance(cfg, WebhookSink):
            raise TypeError(f"expected a webhook sink section, got {cfg.type}")
        return cls(name, cfg)

    def write(self, batch: Sequence[Alert]) -> None:
        """One POST with every alert of the batch; halves of it after a 413.

        A receiver's body limit is no reason to give up a batch: the halves are posted
        (and halved again) until they fit, and only an alert that is still too large on
        its own is refused, alone (PartialDelivery). Any other failure stops the posting:
        that part and all not yet posted fail with it, the parts accepted stay delivered.
        """
        failures: dict[int, DeliveryError] = {}
        todo = [(0, len(batch))]  # half-open ranges of the batch, next one last
        while todo:
            start, end = todo.pop()
            body = webhook_body(batch[start:end])
            try:
                post_json(self._client, self._cfg.url, body, self._headers)
            except DeliveryError as exc:
                if exc.status == 413 and end - start > 1:
                    middle = (start + end) // 2
                    todo += [(middle, end), (start, middle)]
                    continue
                if exc.status == 413:
                    failures[start] = DeliveryError(
                        f"alert {batch[start].event_id} alone is too large for {self._cfg.url} "
                        f"({len(body)} bytes): {exc}",
                        status=413,
                        retryable=False,
                    )
                    continue
                for first, last in [(start, end), *todo]:
                    failures.update(dict.fromkeys(range(first, last), exc))
                break
        if len(failures) == len(batch) and len({id(e) for e in failures.values()}) == 1:
            raise failures[0]  # one answer for the whole batch, as before any split
        if failures:
            raise PartialDelivery(failures)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
