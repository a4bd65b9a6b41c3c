#!/usr/bin/env python3
"""Alert outbox and PagerDuty sink: what `enqueue` costs the router, and delivery throughput.

- enqueue latency p50/p99 for batches of 1 and 100 alerts: the router waits for this
  before committing its offsets, and every call is a durable SQLite commit (WAL,
  synchronous=FULL, so one fsync per call, whatever the batch size);
- dispatch throughput to the local PagerDuty receiver (uvicorn on a free port), with
  grouping off so that every alert is one Events API request (the worst case), and with
  grouping on over a few keys (a burst folds into one trigger per key).

The file system decides the enqueue numbers (fsync); run on the disk the outbox will use.

    .venv/bin/python loadtest/bench_alerts.py [--alerts 2000] [--reps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from services.common.anomaly_types import AnomalyType  # noqa: E402
from services.common.config.model import AlertsConfig, KafkaConfig, PagerDutySink  # noqa: E402
from services.router.alerts import Alert, AlertDelivery, AlertMetrics  # noqa: E402
from services.router.alerts.outbox import Outbox  # noqa: E402
from services.router.alerts.pagerduty_receiver import ReceiverServer  # noqa: E402


def make_alert(i: int, entities: int) -> Alert:
    return Alert(
        event_id=f"ev-{i}",
        entity_id=f"acct-{i % entities}",
        anomaly_type=AnomalyType.PRICE_SPIKE,
        score=0.97,
        threshold=0.9,
        model_scores={"xgboost": 0.98, "isolation_forest": 0.93, "transformer": 0.95},
        severity="error",
        event_ts=1_767_571_200_000 + i,
        decided_at=1_767_571_200_000 + i + 4,
        explanation={"top_features": [["amount_z_1h", 4.2], ["amount_z_5m", 3.9]]},
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def bench_enqueue(workdir: Path, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Outbox(workdir / "enqueue.db", ["pagerduty", "kafka"]) as outbox:
        serial = 0
        for size in (1, 100):
            latencies = []
            for _ in range(reps):
                batch = [make_alert(serial + j, 1000) for j in range(size)]
                serial += size
                start = time.perf_counter()
                outbox.enqueue(batch)
                latencies.append(time.perf_counter() - start)
            out[f"batch_{size}"] = {
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 3),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
                "alerts_per_s": round(size * reps / sum(latencies)),
            }
    return out


def bench_dispatch(workdir: Path, alerts: int, entities: int, window_s: float) -> dict[str, Any]:
    with ReceiverServer() as receiver:
        cfg = AlertsConfig(
            sinks=[
                PagerDutySink(
                    type="pagerduty",
                    url=receiver.enqueue_url,
                    group_window_s=window_s,
                    resolve_after_s=0,
                )
            ],
            outbox_path=str(workdir / f"dispatch-{entities}-{window_s}.db"),
            routing_key=SecretStr("R" * 32),
            dispatch_batch_size=min(alerts, 10_000),
        )
        metrics = AlertMetrics(CollectorRegistry())
        with AlertDelivery.from_config(cfg, KafkaConfig(), metrics=metrics) as delivery:
            delivery.enqueue([make_alert(i, entities) for i in range(alerts)])
            start = time.perf_counter()
            while delivery.dispatch_once().delivered:
                pass
            elapsed = time.perf_counter() - start
            delivered = delivery.outbox.stats()["pagerduty"].delivered
        requests = len(receiver.state.requests)
    return {
        "alerts": alerts,
        "delivered": delivered,
        "keys": entities,
        "group_window_s": window_s,
        "requests": requests,
        "seconds": round(elapsed, 3),
        "alerts_per_s": round(delivered / elapsed),
        "requests_per_s": round(requests / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--alerts", type=int, default=2000, help="Alerts per dispatch run.")
    parser.add_argument("--reps", type=int, default=200, help="Enqueue calls per batch size.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        workdir = Path(tmp)
        report = {
            "enqueue": bench_enqueue(workdir, args.reps),
            "dispatch_ungrouped": bench_dispatch(workdir, args.alerts, args.alerts, 0),
            "dispatch_grouped": bench_dispatch(workdir, args.alerts, 10, 60),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
