"""`anomaly replay` end to end on a generated, labelled stream with a few broken lines.

The stream runs through the real validator, window-feature engine and scoring core, against
the session's model server (`--models served`) and against the registry in-process
(`--models registry`); the two must agree. Thresholds edited in a copy of the configuration
must move the alert count the right way, and every output format must carry the same
decisions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from services.cli.main import app
from services.common.config import PlatformConfig, load_config
from services.common.events import EventError, parse_event
from services.common.model_names import ModelName
from services.generator import StreamSpec, generate_batch
from services.replay import ReplayError, ReplayRequest, ReplaySummary, rejects_path, run_replay
from tests.integration.conftest import ModelServer

pytestmark = pytest.mark.integration

EVENTS = 3_000
BAD_LINES = {
    10: b"this is not json",
    501: b'{"event_id":"b1","entity_id":"e","ts":1700000000,"kind":"trade","amount":3.0}',
    1_202: b'{"event_id":"b2","entity_id":"e","ts":1767571200000,"kind":"trade","amount":-1}',
    2_003: b"",
}
"""Line number -> content: JSON garbage, seconds for ms, a negative amount, a blank line."""


def _reason(raw: bytes) -> str:
    try:
        parse_event(raw)
    except EventError as exc:
        return exc.reason
    raise AssertionError(f"{raw!r} is valid")


class Stream:
    """A generated JSONL stream with broken lines, its labels and its valid events."""

    def __init__(self, root: Path) -> None:
        batch = generate_batch(StreamSpec(seed=17, entities=150, anomaly_rate=0.04), EVENTS)
        self.values = batch.values
        self.labels = {r["event_id"]: r["label"] for r in batch.labels}
        self.events = root / "stream.jsonl"
        lines: list[bytes] = []
        good = iter(batch.values)
        while len(lines) < EVENTS + len(BAD_LINES):
            line_no = len(lines) + 1
            lines.append(BAD_LINES[line_no] if line_no in BAD_LINES else next(good))
        self.events.write_bytes(b"\n".join(lines) + b"\n")
        self.labels_file = root / "labels.jsonl"
        self.labels_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in batch.labels))
        self.event_ids = [orjson.loads(v)["event_id"] for v in batch.values]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return Stream(tmp_path_factory.mktemp("replay-stream"))


def _config(
    path: Path,
    model_store: Path,
    server: ModelServer | None = None,
    threshold: float | None = None,
) -> PlatformConfig:
    """A configuration file like a user's edited copy of config/platform.yaml."""
    data: dict[str, Any] = {"model_store": {"path": str(model_store)}}
    if server is not None:
        data["serving"] = {
            "endpoints": {
                m.value: {"rest_url": server.http, "grpc_target": server.grpc, "timeout_ms": 60_000}
                for m in ModelName
            }
        }
    if threshold is not None:
        data["ensemble"] = {
            "default_threshold": threshold,
            "thresholds": {kind: threshold for kind in
                           ("price_spike", "volume_burst", "velocity_burst", "spread_blowout",
                            "novelty_jump", "slow_drift")},
        }  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def registry_run(
    stream: Stream, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ReplaySummary, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("replay-registry")
    cfg = _config(work / "platform.yaml", model_store)
    out = work / "decisions.jsonl"
    summary = run_replay(
        ReplayRequest(stream.events, out, labels=stream.labels_file, models="registry"), cfg
    )
    return summary, _read_jsonl(out)


def test_one_decision_per_valid_event_and_every_bad_line_in_the_rejects_file(
    stream: Stream, registry_run: tuple[ReplaySummary, list[dict[str, Any]]]
) -> None:
    summary, decisions = registry_run
    assert [d["event_id"] for d in decisions] == stream.event_ids
    assert summary.events_read == EVENTS + len(BAD_LINES)
    assert summary.rejected == len(BAD_LINES)
    assert summary.decisions == EVENTS
    rejects = _read_jsonl(rejects_path(summary.output))
    assert [r["line"] for r in rejects] == sorted(BAD_LINES)
    for r in rejects:
        assert r["reason"] == _reason(BAD_LINES[r["line"]])
        assert r["raw"] == BAD_LINES[r["line"]].decode()
    assert "below the minimum" in rejects[1]["reason"] and rejects[1]["field"] == "ts"
    # The same record as the `scores` topic, with the label of the side file.
    first = decisions[0]
    assert set(first["model_scores"]) == {m.value for m in ModelName}
    assert first["model_versions"]["xgboost"] == "2"  # latest, as the server's default
    labelled = {d["event_id"]: d["label"] for d in decisions if d["label"] != "normal"}
    assert labelled == stream.labels
    assert summary.degraded == 0 and not summary.model_errors


def test_summary_counts_alerts_by_type_and_detection_from_the_labels(
    registry_run: tuple[ReplaySummary, list[dict[str, Any]]], tmp_path: Path
) -> None:
    summary, decisions = registry_run
    alerts = [d for d in decisions if d["alert"]]
    assert summary.alerts == len(alerts) > 0
    by_type: dict[str, int] = {}
    for d in alerts:
        by_type[d["anomaly_type"] or "unknown"] = by_type.get(d["anomaly_type"] or "unknown", 0) + 1
    assert summary.alerts_by_type == by_type
    positives = [d for d in decisions if d["label"] != "normal"]
    caught = sum(d["alert"] for d in positives)
    false_alerts = sum(d["alert"] for d in decisions if d["label"] == "normal")
    det = summary.detection
    assert det is not None
    assert det["tpr"] == pytest.approx(caught / len(positives))
    assert det["fpr"] == pytest.approx(false_alerts / (len(decisions) - len(positives)))
    spikes = [d for d in positives if d["label"] == "price_spike"]
    assert det["recall_per_type"]["price_spike"] == pytest.approx(
        sum(d["alert"] for d in spikes) / len(spikes)
    )
    assert summary.unmatched_labels == 0
    path = tmp_path / "summary.json"
    summary.write_json(path)
    data = json.loads(path.read_text())
    assert data["rejected"] == len(BAD_LINES) and data["labels"]["tpr"] == det["tpr"]
    table = summary.format_table()
    assert "TPR" in table and "recall price_spike" in table and f"{summary.decisions:,}" in table


def test_served_and_registry_decisions_agree(
    stream: Stream,
    model_store: Path,
    model_server: ModelServer,
    registry_run: tuple[ReplaySummary, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path / "platform.yaml", model_store, model_server)
    out = tmp_path / "served.jsonl"
    summary = run_replay(ReplayRequest(stream.events, out, models="served"), cfg)
    served = _read_jsonl(out)
    local = registry_run[1]
    assert summary.decisions == len(served) == len(local) and summary.degraded == 0
    for s, r in zip(served, local, strict=True):
        assert s["event_id"] == r["event_id"]
        assert s["model_versions"] == r["model_versions"]
        for m in ModelName:
            assert s["model_scores"][m.value] == pytest.approx(r["model_scores"][m.value], abs=1e-5)
        assert s["score"] == pytest.approx(r["score"], abs=1e-5)
        assert (s["anomalous"], s["anomaly_type"]) == (r["anomalous"], r["anomaly_type"])


def test_served_without_servers_fails_with_a_hint(
    stream: Stream, model_store: Path, tmp_path: Path
) -> None:
    from local_kafka import free_port

    port = free_port()
    cfg = _config(tmp_path / "platform.yaml", model_store)
    endpoints = {
        m: e.model_copy(update={"grpc_target": f"127.0.0.1:{port}", "timeout_ms": 500})
        for m, e in cfg.serving.endpoints.items()
    }
    cfg = cfg.model_copy(
        update={"serving": cfg.serving.model_copy(update={"endpoints": endpoints})}
    )
    out = tmp_path / "none.jsonl"
    with pytest.raises(ReplayError, match=r"no model answered.*--models registry"):
        run_replay(ReplayRequest(stream.events, out, models="served"), cfg)
    assert not out.exists()  # a failed replay never leaves a file that looks finished


def test_stricter_threshold_fewer_alerts_looser_more(
    stream: Stream,
    model_store: Path,
    registry_run: tuple[ReplaySummary, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    base = registry_run[0]  # default thresholds: 0.9
    alerts = {}
    for threshold in (0.5, 0.999):
        cfg = _config(tmp_path / f"t{threshold}.yaml", model_store, threshold=threshold)
        out = tmp_path / f"t{threshold}.jsonl"
        summary = run_replay(
            ReplayRequest(stream.events, out, labels=stream.labels_file, models="registry"), cfg
        )
        alerts[threshold] = summary.alerts
        decisions = _read_jsonl(out)
        assert all(d["threshold"] == threshold for d in decisions)
        assert all(d["score"] >= threshold - 1e-6 for d in decisions if d["alert"])
        assert summary.detection is not None and base.detection is not None
        if threshold < 0.9:
            assert summary.detection["fpr"] >= base.detection["fpr"]
        else:
            assert summary.detection["fpr"] <= base.detection["fpr"]
    assert alerts[0.999] < base.alerts < alerts[0.5]


def test_parquet_in_and_out_carries_the_same_decisions(
    stream: Stream,
    model_store: Path,
    registry_run: tuple[ReplaySummary, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    events = [orjson.loads(v) for v in stream.values]
    fields = list(dict.fromkeys(k for e in events for k in e))  # every field any event has
    table = pa.Table.from_pydict({f: [e.get(f) for e in events] for f in fields})
    labels = [stream.labels.get(e["event_id"]) for e in events]  # empty cell = normal
    table = table.append_column("label", pa.array(labels, pa.string()))
    source = tmp_path / "stream.parquet"
    pq.write_table(table, source)
    cfg = _config(tmp_path / "platform.yaml", model_store)
    out = tmp_path / "decisions.parquet"
    summary = run_replay(ReplayRequest(source, out, models="registry"), cfg)
    assert summary.rejected == 0 and summary.format == "parquet"
    assert summary.labels_source is not None and "label column" in summary.labels_source
    assert summary.detection == registry_run[0].detection
    got = pq.read_table(out).to_pylist()
    expected = registry_run[1]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g["event_id"] == e["event_id"] and g["label"] == e["label"]
        for m in ModelName:
            assert g[f"model_scores.{m.value}"] == pytest.approx(e["model_scores"][m.value])
            assert g[f"model_versions.{m.value}"] == e["model_versions"][m.value]
        assert (g["score"], g["alert"]) == (pytest.approx(e["score"]), e["alert"])
    assert json.loads(got[0]["top_features"]) == expected[0]["top_features"]


def test_parquet_rows_that_break_the_contract_are_rejected_by_row_number(
    model_store: Path, tmp_path: Path
) -> None:
    base = {"entity_id": "acct-1", "kind": "payment", "amount": 12.5}
    rows = [{**base, "event_id": f"e{i}", "ts": 1_767_571_200_000 + i * 1000} for i in range(20)]
    rows[4]["amount"] = -3.0
    rows[7]["kind"] = "refund"
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    cfg = _config(tmp_path / "platform.yaml", model_store)
    out = tmp_path / "bad.csv"
    summary = run_replay(ReplayRequest(source, out, models="registry"), cfg)
    assert (summary.decisions, summary.rejected) == (18, 2)
    rejects = _read_jsonl(rejects_path(out))
    assert [(r["line"], r["field"]) for r in rejects] == [(5, "amount"), (8, "kind")]
    assert json.loads(rejects[0]["raw"])["amount"] == -3.0
    decided = pacsv.read_csv(out).to_pydict()
    assert decided["event_id"] == [r["event_id"] for i, r in enumerate(rows) if i not in (4, 7)]


def test_metric_series_spike_scores_above_the_median(model_store: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, spike = 600, 450
    start = 1_767_571_200_000
    values = 100 + 5 * np.sin(np.arange(n) / 20) + rng.normal(0, 1, n)
    values[spike] = 2_000.0
    source = tmp_path / "cpu_host7.csv"
    lines = ["timestamp,value"] + [f"{start + i * 10_000},{v:.4f}" for i, v in enumerate(values)]
    lines.insert(101, f"{start},not-a-number")  # file line 102
    source.write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path / "platform.yaml", model_store)
    out = tmp_path / "scores.csv"
    summary = run_replay(ReplayRequest(source, out, models="registry"), cfg)
    assert summary.shape == "metric series"
    assert (summary.decisions, summary.rejected) == (n, 1)
    assert _read_jsonl(rejects_path(out))[0]["line"] == 102
    table = pacsv.read_csv(out).to_pydict()
    assert set(table["entity_id"]) == {"cpu_host7"}
    scores = np.asarray(table["score"], np.float64)
    assert table["ts"][spike] == start + spike * 10_000
    assert scores[spike] > np.median(scores)
    assert not any(math.isnan(s) for s in scores)


def test_cli_replays_writes_the_summary_json_and_refuses_mistakes(
    stream: Stream, model_store: Path, tmp_path: Path
) -> None:
    cli = CliRunner()
    config = tmp_path / "platform.yaml"
    _config(config, model_store, threshold=0.95)
    out = tmp_path / "cli.jsonl"
    summary = tmp_path / "summary.json"
    args = ["replay", str(stream.events), "--out", str(out), "--labels", str(stream.labels_file),
            "--models", "registry", "-c", str(config), "--summary-json", str(summary),
            "-q"]  # fmt: skip
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["decisions"] == EVENTS and data["rejected"] == len(BAD_LINES)
    assert "alerts" in result.stdout and "TPR" in result.stdout
    assert all(d["threshold"] == 0.95 for d in _read_jsonl(out))

    wrong = cli.invoke(app, ["replay", str(stream.events), "--out", str(tmp_path / "x.txt"),
                             "--models", "registry", "-c", str(config)])  # fmt: skip
    assert wrong.exit_code == 2 and ".jsonl, .parquet or .csv" in wrong.output
    mode = cli.invoke(app, ["replay", str(stream.events), "--out", str(out),
                            "--models", "laptop", "-c", str(config)])  # fmt: skip
    assert mode.exit_code == 2 and "served or registry" in mode.output


def test_strategy_and_flags_of_the_configuration_decide(
    stream: Stream,
    model_store: Path,
    registry_run: tuple[ReplaySummary, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    alerting = sorted({d["entity_id"] for d in registry_run[1] if d["alert"]})
    suppressed = alerting[0]
    config = tmp_path / "platform.yaml"
    config.write_text(yaml.safe_dump({
        "model_store": {"path": str(model_store)},
        "ensemble": {"strategy": "cascade", "cascade": {"uncertain_low": 0.5,
                                                        "uncertain_high": 0.99}},
        "flags": {"models": {"isolation_forest": {"enabled": False}},
                  "suppressed_entities": [suppressed]},
    }))  # fmt: skip
    out = tmp_path / "cascade.jsonl"
    summary = run_replay(ReplayRequest(stream.events, out, models="registry"), load_config(config))
    decisions = _read_jsonl(out)
    assert summary.decisions == EVENTS and summary.degraded == 0
    assert {d["strategy"] for d in decisions} == {"cascade"}
    assert all(d["model_scores"]["isolation_forest"] is None for d in decisions)  # not called
    assert all("isolation_forest" not in d["model_versions"] for d in decisions)
    asked = [d["model_scores"]["transformer"] is not None for d in decisions]
    assert 0 < sum(asked) < len(decisions)  # only the uncertain band went to the Transformer
    mine = [d for d in decisions if d["entity_id"] == suppressed]
    assert mine and not any(d["alert"] for d in mine)
