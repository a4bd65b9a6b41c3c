"""Structured logging, configured once from `main()`.

Services log one JSON object per line so that cluster log pipelines can index fields
(event ids, partitions, model names) without regexes; the CLI uses a plain format for
people. Calling `configure_logging` twice is harmless, which lets tests and `main()`
both call it.
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any, Literal

import orjson

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_logging(level: str = "INFO", fmt: Literal["json", "plain"] = "json") -> None:
    """Set up the root logger; repeat calls replace the previous setup instead of stacking."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"main": formatter},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "main",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            # Per-request access lines cost about a quarter of a model server's throughput.
            "loggers": {"uvicorn.access": {"level": "WARNING"}},
        }
    )
