"""The stream door's batch encoders give exactly what the one-decision path gives.

`decision_json` builds the `scores` JSON column-wise for speed; every consumer of `scores`
(the pipeline monitor, the end-to-end test, replay) was written against `ScoredBatch.record`,
so the two must agree on every field for every kind of batch: all strategies, missing and
shadow models, unknown types, ids that need escaping, explanations with top features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from models.ensemble import decide_batch
from services.common.config import PlatformConfig
from services.common.config.model import EnsembleConfig, FeatureFlags, ModelFlag
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.router.alerts import severity_for
from services.router.core import ScoredBatch
from services.router.decision_json import encode_decisions, explanations
from services.router.metrics import observe_many
from services.router.schemas import ScoredRows, ScoreResponse, _SharedBatch

STRATEGIES = ["weighted", "k_of_n", "any", "all", "cascade"]
AWKWARD_IDS = ["plain", 'quo"te', "back\\slash", "new\nline", "ünïcødé-€", "per%cent %s", "\u2028"]


GAPS = ["some-missing", "complete", "none-for-some", "not-finite"]
"""Which scores are NaN: some models' for some events (the general texts); none (every
number formatted by the template itself); every model's for some events (no score at all);
or none, but a misbehaving server answered +-infinity for some (JSON: null)."""


def batch(
    strategy: str,
    seed: int,
    *,
    flags: FeatureFlags | None = None,
    gaps: str = GAPS[0],
    infinite_z: bool = True,
) -> ScoredBatch:
    rng = np.random.default_rng(seed)
    n = 400
    scores: dict[ModelName, Any] = {m: rng.random(n) for m in ModelName}
    if gaps == "not-finite":
        scores[ModelName.XGBOOST][:5] = np.inf
        scores[ModelName.TRANSFORMER][5:9] = -np.inf
    elif gaps != "complete":
        scores[ModelName.XGBOOST][rng.random(n) < 0.1] = np.nan  # failed for some events
        scores[ModelName.TRANSFORMER][rng.random(n) < 0.5] = np.nan  # cascade: not asked
    if gaps == "none-for-some":
        for m in ModelName:
            scores[m][:7] = np.nan
    scores[ModelName.ISOLATION_FOREST][:20] = 1.0 - rng.random(20) * 1e-7  # many digits
    types = rng.integers(-1, 6, n)
    config = EnsembleConfig(strategy=strategy, thresholds={})
    d = decide_batch(scores, types, config, flags)
    alert = d.anomalous & (rng.random(n) < 0.7)
    top = [
        [(FEATURE_NAMES[j], float(z)) for j, z in zip(rng.integers(0, 22, 3), rng.normal(0, 9, 3),
                                                      strict=True)]
        if a else []
        for a in alert.tolist()
    ]  # fmt: skip
    if infinite_z:  # not from the core (it stays finite), but JSON must carry null, as orjson
        top[0] = [(FEATURE_NAMES[0], float("inf"))]
    return ScoredBatch(
        event_ids=[AWKWARD_IDS[i % len(AWKWARD_IDS)] + str(i) for i in range(n)],
        entity_ids=[f"acct-{i % 37}" + AWKWARD_IDS[i % 3] for i in range(n)],
        ts=rng.integers(1_600_000_000_000, 1_700_000_000_000, n).astype(np.int64),
        decision=d,
        alert=alert,
        versions={ModelName.ISOLATION_FOREST: "1", ModelName.XGBOOST: "2"},
        errors={},
        decided_at_ms=1_700_000_000_123,
        top_features=top if seed % 2 else [],
    )


SHADOW = FeatureFlags(
    models={
        ModelName.TRANSFORMER: ModelFlag(shadow=True),
        ModelName.ISOLATION_FOREST: ModelFlag(enabled=False),
    }
)


@pytest.mark.parametrize("gaps", GAPS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("flags", [None, SHADOW], ids=["all-vote", "shadow-and-disabled"])
def test_batch_json_parses_to_the_record_of_every_decision(
    strategy: str, flags: FeatureFlags | None, gaps: str
) -> None:
    for seed in (1, 2):
        scored = batch(strategy, seed, flags=flags, gaps=gaps)
        encoded = encode_decisions(scored)
        assert len(encoded) == len(scored)
        for i, message in enumerate(encoded):
            # What the door produced before: orjson of the record (non-finite floats -> null).
            assert orjson.loads(message) == orjson.loads(orjson.dumps(scored.record(i))), i
            assert b"\n" not in message


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_explanations_are_the_decisions_own(strategy: str) -> None:
    scored = batch(strategy, 3, flags=SHADOW)
    d = scored.decision
    assert explanations(d) == [d.decision(i).explanation for i in range(len(d))]
    plain = batch(strategy, 4).decision
    assert explanations(plain) == [plain.decision(i).explanation for i in range(len(plain))]


def test_empty_batch_encodes_to_nothing() -> None:
    scored = batch("weighted", 1)
    empty = ScoredBatch([], [], np.empty(0, np.int64), decide_batch({}, None, EnsembleConfig()),
                        np.empty(0, np.bool_), {}, {}, 0)  # fmt: skip
    assert encode_decisions(empty) == []
    assert len(encode_decisions(scored)) == len(scored)


def test_observe_many_exposes_what_observe_does() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(0.3, 5_000), [0.01, 0.05, 0.0, 30.0, 1e9]])
    buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("lag_seconds", "x", buckets=buckets, registry=one)
    by_many = Histogram("lag_seconds", "x", buckets=buckets, registry=many)
    for v in values.tolist():
        by_one.observe(v)
    observe_many(by_many, values[:2_000])
    observe_many(by_many, values[2_000:])
    observe_many(by_many, np.empty(0))

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lag_seconds") and "_created" not in line
        }

    want, got = samples(one), samples(many)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("strategy", ["weighted", "cascade"])
def test_alerts_carry_the_decisions_of_their_events(strategy: str) -> None:
    scored = batch(strategy, 1, flags=SHADOW)
    d = scored.decision
    config = PlatformConfig()
    alerts = scored.alerts(config)
    rows = np.flatnonzero(scored.alert).tolist()
    assert rows and [a.event_id for a in alerts] == [scored.event_ids[i] for i in rows]
    for alert, i in zip(alerts, rows, strict=True):
        one = d.decision(i)
        assert alert.explanation["summary"] == one.explanation
        assert alert.threshold == one.threshold
        assert alert.score == min(max(np.nan_to_num(one.score, nan=0.0), 0.0), 1.0)
        assert alert.anomaly_type == one.anomaly_type  # None (unknown) stays unknown
        assert alert.explanation["type_known"] is (one.anomaly_type is not None)
        assert alert.degraded is one.degraded
        assert alert.event_ts == int(scored.ts[i])
        assert alert.model_scores == {
            m.value: float(v[i]) for m, v in d.scores.items() if not np.isnan(v[i])
        }
        assert alert.severity == severity_for(alert.score, alert.anomaly_type, config.alerts)


@pytest.mark.parametrize("gaps", GAPS)
def test_rest_answer_of_each_coalesced_request_is_its_decisions(gaps: str) -> None:
    """The REST door answers with the encoder's text of its own rows of a shared batch; a
    client must read exactly the `Decision` objects the gRPC door builds from the records."""
    scored = batch("cascade", 1, flags=SHADOW, gaps=gaps, infinite_z=False)
    shared = _SharedBatch(scored)
    for start, stop in ((0, 1), (1, 40), (40, len(scored))):
        rows = ScoredRows(shared, start, stop)
        answer = ScoreResponse.model_validate_json(rows.json())
        assert answer.decisions == rows.decisions()
        assert [d.event_id for d in answer.decisions] == scored.event_ids[start:stop]
    assert shared.messages is shared.messages  # encoded once for every request
