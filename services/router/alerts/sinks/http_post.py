"""POSTing JSON and turning every HTTP outcome into success or a `DeliveryError`.

Shared by the PagerDuty and webhook sinks so that both follow one retry rule: 408, 429
and 5xx and network errors are retried (429 after its Retry-After); any other non-2xx
answer is a refusal that repeating cannot fix.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping

import httpx

from services.router.alerts.clock import Clock, system_clock
from services.router.alerts.errors import DeliveryError

RETRYABLE_STATUSES = frozenset({408, 425, 429})
"""4xx answers that mean "later", besides every 5xx."""


def make_client(timeout_s: float) -> httpx.Client:
    """An HTTP client with a deadline on every phase (connect at most 5 s)."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        headers={"User-Agent": "anomaly-platform-alerts/1"},
    )


def post_json(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    clock: Clock = system_clock,
) -> httpx.Response:
    """POST `body` as JSON; returns the 2xx response or raises DeliveryError."""
    try:
        response = client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
    except httpx.TimeoutException as exc:
        raise DeliveryError(
            f"timeout posting to {url}: {type(exc).__name__}", status=None, retryable=True
        ) from exc
    except httpx.TransportError as exc:
        raise DeliveryError(
            f"cannot reach {url}: {type(exc).__name__}: {exc}", status=None, retryable=True
        ) from exc
    if response.is_success:
        return response
    raise error_for_response(response, clock())


def error_for_response(response: httpx.Response, now: float) -> DeliveryError:
    """The DeliveryError of a non-2xx answer, with its status and Retry-After."""
    status = response.status_code
    detail = response.text.strip().replace("\n", " ")
    if len(detail) > 500:
        detail = detail[:497] + "..."
    return DeliveryError(
        f"{response.request.url} answered {status}: {detail or response.reason_phrase}",
        status=status,
        retryable=status in RETRYABLE_STATUSES or status >= 500,
        retry_after_s=parse_retry_after(response.headers.get("Retry-After"), now),
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)
