"""Errors of the feature store layer, each with the HTTP status a door should answer.

A service that cannot reach its online store must say which store and how to fix it,
not surface a redis-py traceback; the router's doors map `http_status` once.
"""

from __future__ import annotations

import re

_SECRET = re.compile(r"(password|username)=[^,]*", re.IGNORECASE)


def redact(connection_string: str) -> str:
    """Hide credentials of a Feast Redis connection string before it reaches a message."""
    return _SECRET.sub(lambda m: f"{m.group(1)}=***", connection_string)


class FeatureStoreError(Exception):
    """Base of feature-store failures."""

    http_status: int = 500


class FeatureStoreUnavailable(FeatureStoreError):
    """The online store cannot be used now: server unreachable or an extra not installed.

    503 because retrying later (or after installing the extra) can succeed.
    """

    http_status = 503


class FeatureStoreMisconfigured(FeatureStoreError):
    """The store configuration can never work (e.g. a Redis connection string without port).

    Raised when the store is built, at start-up: Feast only parses the connection string at
    the first read or write, where the mistake would surface as a KeyError or TypeError on
    every request instead of one message naming the setting. Retrying does not help.
    """


class FeatureStoreNotApplied(FeatureStoreError):
    """The registry lacks our feature view, or holds one with other fields.

    Raised at start-up rather than at the first write: writing to a table Feast never
    created fails deep inside the store with a message that does not say what to run.
    """

    http_status = 503
