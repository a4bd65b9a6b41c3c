"""Window features: exact on hand-computed sequences, stated event-time policy, restorable state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.common.features.columns import columns_from_events, stable_hash
from services.common.features.definition import FEATURE_NAMES, feature_schema_hash
from services.common.features.engine import EngineSettings, FeatureEngine

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z, aligned to every pane
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def ev(i: int, entity: str, t_s: float, amount: float, **extra: Any) -> dict[str, Any]:
    event = {
        "event_id": f"{entity}-{i}",
        "entity_id": entity,
        "ts": T0 + int(t_s * 1000),
        "kind": "payment",
        "amount": float(amount),
    }
    event.update(extra)
    return event


def run(events: list[dict[str, Any]], engine: FeatureEngine | None = None) -> np.ndarray:
    engine = FeatureEngine() if engine is None else engine  # an empty engine is falsy
    return engine.process(columns_from_events(events)).matrix


def f(matrix: np.ndarray, row: int, name: str) -> float:
    return float(matrix[row, COL[name]])


def test_hand_computed_sequence() -> None:
    events = [
        ev(0, "a", 0, 10, counterparty="c1", country="DE", quantity=2),
        ev(1, "a", 30, 20, counterparty="c2", country="DE", quantity=4),
        ev(2, "a", 90, 40, counterparty="c1", country="FR", quantity=10),
    ]
    m = run(events)
    x = [math.log1p(a) for a in (10, 20, 40)]
    # Windows: 1m = 6 panes of 10 s, so at t=90 s it holds [40 s, 90 s]: only the event itself.
    assert [f(m, i, "count_1m") for i in range(3)] == [1, 2, 1]
    assert [f(m, i, "count_5m") for i in range(3)] == [1, 2, 3]
    assert f(m, 2, "amount_sum_1h") == 70
    assert f(m, 2, "amount_sum_1m") == 40
    assert f(m, 2, "amount_mean_5m") == pytest.approx(70 / 3)
    mean_x = sum(x) / 3
    std_x = math.sqrt(sum(v * v for v in x) / 3 - mean_x**2)
    assert f(m, 2, "log_amount_std_1h") == pytest.approx(std_x, rel=1e-5)
    assert f(m, 2, "rate_ratio_1m_1h") == pytest.approx(1 * 60 / 3)
    assert [f(m, i, "time_since_prev_s") for i in range(3)] == [3600, 30, 60]
    # z-score of the third event against the running baseline of the first two.
    base_mean = (x[0] + x[1]) / 2
    base_var = ((x[1] - x[0]) / 2) ** 2
    expected_z = (x[2] - base_mean) / math.sqrt(base_var + 0.05**2)
    assert f(m, 2, "amount_zscore") == pytest.approx(expected_z, rel=1e-5)
    assert f(m, 1, "amount_zscore") == 0  # fewer than two events of history
    # Short moving average: running mean of 10 and 20 before the third event.
    assert f(m, 2, "price_dev_ma") == pytest.approx((40 - 15) / 15, rel=1e-6)
    # Volume against the median sketch: exp(mean log1p q) over the first two.
    median_sketch = math.exp((math.log1p(2) + math.log1p(4)) / 2)
    assert f(m, 2, "volume_ratio_median") == pytest.approx(11 / median_sketch, rel=1e-5)
    assert [f(m, i, "counterparty_novel") for i in range(3)] == [1, 1, 0]
    assert [f(m, i, "country_novel") for i in range(3)] == [1, 0, 1]
    assert f(m, 2, "distinct_counterparties_1h") == 2
    assert f(m, 2, "distinct_countries_1h") == 2
    assert f(m, 2, "entity_events_seen") == pytest.approx(math.log1p(2))
    assert f(m, 2, "global_rate_1m") == pytest.approx(1 / 60)  # the 1m panes hold [40 s, 90 s]


def test_entities_do_not_share_state() -> None:
    m = run([ev(0, "a", 0, 10), ev(0, "b", 1, 99), ev(1, "a", 2, 10)])
    assert f(m, 2, "count_1m") == 2
    assert f(m, 2, "amount_sum_1m") == 20
    assert f(m, 1, "count_1m") == 1


def test_out_of_order_within_lateness_updates_its_own_pane() -> None:
    engine = FeatureEngine(EngineSettings(allowed_lateness_ms=60_000))
    m = run([ev(0, "a", 100, 10), ev(1, "a", 75, 20), ev(2, "a", 105, 30)], engine)
    assert engine.late_events == 0
    assert f(m, 1, "count_1m") == 2  # window ends at the newest time (100 s), holds 75 s too
    assert f(m, 1, "time_since_prev_s") == 0  # never negative
    assert f(m, 2, "count_1m") == 3


def test_late_event_is_scored_but_leaves_state_alone() -> None:
    engine = FeatureEngine(EngineSettings(allowed_lateness_ms=10_000))
    engine.process(columns_from_events([ev(0, "a", 100, 10), ev(1, "a", 110, 12)]))
    before = engine.export_state(np.arange(len(engine)))
    result = engine.process(columns_from_events([ev(2, "a", 50, 5_000)]))
    assert result.late.tolist() == [True]
    assert engine.late_events == 1
    assert engine.export_state(np.arange(len(engine))) == before
    row = result.matrix[0]
    assert row[COL["count_1m"]] == 2  # the late event does not count itself
    assert row[COL["log_amount"]] == pytest.approx(math.log1p(5_000))  # but is still described
    after = run([ev(3, "a", 112, 10)], engine)
    assert f(after, 0, "count_1m") == 3


def stream(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    entities = rng.zipf(1.5, n) % 50
    t = np.cumsum(rng.exponential(0.4, n))
    t = t - rng.uniform(0, 5, n) * (rng.random(n) < 0.1)  # some out-of-order events
    out = []
    for i in range(n):
        extra: dict[str, Any] = {
            "counterparty": f"cp{rng.integers(0, 30)}",
            "country": ["DE", "FR", "US"][rng.integers(0, 3)],
            "quantity": float(rng.lognormal(1, 1)),
        }
        if i % 3 == 0:
            extra["spread_bps"] = float(rng.uniform(1, 20))
        out.append(ev(i, f"e{entities[i]}", float(t[i]), float(rng.lognormal(3, 1)), **extra))
    return out


@pytest.mark.parametrize("batch", [1, 7, 250])
def test_features_do_not_depend_on_batch_boundaries(batch: int) -> None:
    events = stream(1_500, seed=3)
    whole = run(events)
    engine = FeatureEngine()
    parts = [
        engine.process(columns_from_events(events[i : i + batch])).matrix
        for i in range(0, len(events), batch)
    ]
    cut = np.vstack(parts)
    per_event = [i for i, name in enumerate(FEATURE_NAMES) if name != "global_rate_1m"]
    np.testing.assert_array_equal(cut[:, per_event], whole[:, per_event])


def test_checkpoint_restore_continues_exactly() -> None:
    events = stream(2_000, seed=5)
    first, second = events[:1_200], events[1_200:]
    original = FeatureEngine()
    original.process(columns_from_events(first, partitions=[0] * len(first)))
    records = original.export_state(np.arange(len(original)))
    restored = FeatureEngine(capacity=4)  # forces growth during import
    assert restored.import_state(records) == len(original)
    cols = columns_from_events(second, partitions=[0] * len(second))
    a = original.process(cols).matrix
    b = restored.process(cols).matrix
    per_event = [i for i, name in enumerate(FEATURE_NAMES) if name != "global_rate_1m"]
    np.testing.assert_array_equal(a[:, per_event], b[:, per_event])


def test_corrupt_checkpoint_is_refused() -> None:
    engine = FeatureEngine()
    engine.process(columns_from_events([ev(0, "a", 0, 1)]))
    ((entity, partition, blob),) = engine.export_state(np.arange(1))
    with pytest.raises(ValueError, match="expected"):
        FeatureEngine().import_state([(entity, partition, blob[:-8])])
    with pytest.raises(ValueError, match="layout version"):
        FeatureEngine().import_state([(entity, partition, b"XX9:" + blob[4:])])


def test_state_of_an_older_layout_starts_cold_instead_of_failing_the_restore() -> None:
    """After an upgrade that added features (FE1 -> FE3), the changelog still holds FE1
    blobs: the restore skips them (those entities start empty) and restores the rest."""
    engine = FeatureEngine()
    engine.process(columns_from_events([ev(0, "a", 0, 1), ev(1_000, "b", 0, 1)]))
    (a, b) = engine.export_state(np.arange(2))
    old = (a[0], a[1], b"FE1:" + a[2][4:-16])  # an FE1 blob: no inter-arrival baselines
    restored = FeatureEngine()
    assert restored.import_state([old, b]) == 1
    assert restored.stale_states == 1
    assert restored.slot("a") is None and restored.slot("b") is not None


def test_release_partition_frees_only_its_entities() -> None:
    engine = FeatureEngine(capacity=2)
    events = [ev(0, "p0-a", 0, 1), ev(0, "p1-a", 0, 1), ev(0, "p0-b", 0, 1)]
    engine.process(columns_from_events(events, partitions=[0, 1, 0]))
    assert engine.release_partition(0) == 2
    assert len(engine) == 1 and engine.slot("p1-a") is not None and engine.slot("p0-a") is None
    # A released entity that comes back starts from a blank history.
    m = run([ev(1, "p0-a", 1, 1)], engine)
    assert f(m, 0, "count_1m") == 1 and f(m, 0, "entity_events_seen") == 0


def test_counterparty_memory_is_bounded_and_evicts_least_recent() -> None:
    engine = FeatureEngine(EngineSettings(counterparty_memory=2))
    m = run(
        [
            ev(0, "a", 0, 1, counterparty="x"),
            ev(1, "a", 1, 1, counterparty="y"),
            ev(2, "a", 2, 1, counterparty="x"),  # refresh x
            ev(3, "a", 3, 1, counterparty="z"),  # evicts y, the least recently seen
            ev(4, "a", 4, 1, counterparty="x"),
            ev(5, "a", 5, 1, counterparty="y"),
        ],
        engine,
    )
    assert [f(m, i, "counterparty_novel") for i in range(6)] == [1, 1, 0, 1, 0, 1]
    assert max(f(m, i, "distinct_counterparties_1h") for i in range(6)) == 2


def test_metric_samples_use_their_value_and_may_be_negative() -> None:
    samples = [
        {
            "event_id": f"m{i}",
            "entity_id": "host/cpu",
            "ts": T0 + i * 1000,
            "kind": "metric",
            "value": v,
        }
        for i, v in enumerate([-3.0, -2.0, 5.0])
    ]
    m = run(samples)
    assert f(m, 2, "log_amount") == pytest.approx(math.log1p(5.0))
    assert f(m, 0, "log_amount") == pytest.approx(-math.log1p(3.0))
    assert f(m, 2, "amount_sum_1m") == 0.0
    assert np.isfinite(m).all()


def test_stable_hash_is_process_independent_and_nonzero() -> None:
    assert stable_hash("DE") == stable_hash("DE") != stable_hash("FR")
    assert stable_hash("") != 0
    # Checkpointed state holds these hashes: changing the function breaks every restore.
    assert stable_hash("counterparty-1") == 7627884926578984335


def test_schema_hash_tracks_names() -> None:
    assert len(feature_schema_hash()) == 16
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 25


def test_the_largest_accepted_values_keep_every_feature_finite() -> None:
    """MAX_MAGNITUDE is what validation lets in; an hour of it, mixed with the smallest values
    (zero quantities and spreads, tiny amounts), must still give finite float32 features, or
    one event would leave an entity with infinite sums for an hour (and NaN after)."""
    from services.common.events.schema import MAX_MAGNITUDE

    events: list[dict[str, Any]] = []
    for i in range(3_600):
        big = i % 2 == 0
        events.append(
            ev(i, "whale", i * 1.0, MAX_MAGNITUDE if big else 1e-9, kind="trade",
               quantity=MAX_MAGNITUDE if big else 0.0, spread_bps=MAX_MAGNITUDE if big else 0.0)
        )  # fmt: skip
    metric = [
        {"event_id": f"m-{i}", "entity_id": "host", "ts": T0 + i * 1000, "kind": "metric",
         "value": MAX_MAGNITUDE * (-1) ** i}
        for i in range(600)
    ]  # fmt: skip
    matrix = run(events + metric)
    bad = np.argwhere(~np.isfinite(matrix))
    assert bad.size == 0, [(int(r), FEATURE_NAMES[c]) for r, c in bad[:5]]


def test_events_of_an_entity_on_a_second_partition_update_its_state() -> None:
    """Offsets are positions in one partition. An entity first seen on partition 0 at offset
    1,000 whose next events come on partition 1 at offsets 0-9 (a producer not keyed by
    entity, or another partitioner) used to have them all taken for re-deliveries: described,
    never added to its windows. They now count, and are counted as misrouted; re-deliveries
    on its own partition are still recognised."""
    engine = FeatureEngine()
    home = [ev(i, "acct", i * 1.0, 10.0) for i in range(5)]
    first = engine.process(columns_from_events(home, [0] * 5, range(1_000, 1_005)))
    assert first.misrouted == 0
    other = [ev(5 + i, "acct", 5.0 + i, 10.0) for i in range(10)]
    result = engine.process(columns_from_events(other, [1] * 10, range(10)))
    assert result.misrouted == 10
    assert [f(result.matrix, i, "count_1m") for i in range(10)] == [6.0 + i for i in range(10)]
    again = engine.process(columns_from_events(home[-2:], [0, 0], [1_003, 1_004]))
    assert f(again.matrix, 1, "count_1m") == 15.0, "a re-delivery at home is not re-applied"


def test_gap_shift_measures_a_burst_against_the_entity_own_pace() -> None:
    """A quiet entity (an event every 30 s) bursting at 0.2 s gaps stands out; a busy one
    whose usual gap is 0.2 s does not, though both send at the same instantaneous rate:
    the fixed windows cannot tell them apart this way, the entity's pace can."""
    shift, recent = FEATURE_NAMES.index("gap_shift"), FEATURE_NAMES.index("log_gap_recent")
    quiet = [ev(i, "quiet", 30.0 * i, 10) for i in range(40)]
    quiet += [ev(40 + i, "quiet", 30.0 * 39 + 0.2 * (i + 1), 10) for i in range(10)]
    busy = [ev(i, "busy", 0.2 * i, 10) for i in range(50)]
    q, b = run(quiet), run(busy)
    assert abs(q[39, shift]) < 0.1, "a steady pace is no shift"
    assert q[42:, shift].min() > 1.5, "the burst is far faster than the quiet entity's pace"
    assert np.abs(b[5:, shift]).max() < 0.1, "the busy entity's own pace is no burst"
    assert q[39, recent] == pytest.approx(math.log1p(30.0), rel=1e-6)
    assert b[-1, recent] == pytest.approx(math.log1p(0.2), rel=1e-3)
    assert q[0, recent] == pytest.approx(math.log1p(3600.0)) and q[0, shift] == 0.0


def test_counterparty_streak_counts_a_run_at_one_counterparty() -> None:
    """A run at one merchant (card testing) grows the streak; another counterparty starts a
    new one, and an event without a counterparty neither extends nor breaks it."""
    col = FEATURE_NAMES.index("counterparty_streak")
    events = [ev(0, "a", 0, 10, counterparty="m1"), ev(1, "a", 1, 10, counterparty="m2")]
    events += [ev(2 + i, "a", 2 + i, 1, counterparty="m3") for i in range(5)]
    events += [ev(7, "a", 8, 10), ev(8, "a", 9, 10, counterparty="m3")]
    got = np.expm1(run(events)[:, col]).round(6).tolist()
    assert got == [1, 1, 1, 2, 3, 4, 5, 0, 6]


HOUR = 3_600.0
TTL = EngineSettings(idle_ttl_ms=int(2 * HOUR * 1000))


def _history(entity: str, start_s: float = 0) -> list[dict[str, Any]]:
    """Six events over ten minutes, with counterparties, a country, quantities and spreads."""
    return [
        ev(i, entity, start_s + 100 * i, 20 + i, counterparty=f"c{i % 2}", country="DE",
           quantity=3, spread_bps=4.0)
        for i in range(6)
    ]  # fmt: skip


def test_an_entity_idle_past_the_ttl_starts_over_as_a_new_one() -> None:
    """Its next event gets the features a never-seen entity's first event gets (the same
    event into an empty engine), history, novelty memory and baselines all forgotten; one
    idle for less keeps every bit of it."""
    back_after = ev(9, "a", 500 + 2 * HOUR + 1, 35, counterparty="c0", country="DE", quantity=3)
    engine = FeatureEngine(TTL)
    run(_history("a"), engine)
    returned = run([back_after], engine)[0]
    first_sight = run([back_after], FeatureEngine(TTL))[0]
    per_event = [i for i, name in enumerate(FEATURE_NAMES) if name != "global_rate_1m"]
    np.testing.assert_array_equal(returned[per_event], first_sight[per_event])
    assert returned[COL["counterparty_novel"]] == 1 and returned[COL["entity_events_seen"]] == 0

    within = ev(9, "a", 500 + 2 * HOUR - 1, 35, counterparty="c0", country="DE", quantity=3)
    engine = FeatureEngine(TTL)
    run(_history("a"), engine)
    row = run([within], engine)[0]
    assert row[COL["counterparty_novel"]] == 0
    assert row[COL["entity_events_seen"]] == pytest.approx(math.log1p(6))
    # Without a TTL (0) even a year of silence keeps the history.
    engine = FeatureEngine(EngineSettings(idle_ttl_ms=0))
    run(_history("a"), engine)
    a_year_later = dict(back_after, ts=T0 + 365 * 86_400_000)
    assert run([a_year_later], engine)[0][COL["entity_events_seen"]] == pytest.approx(math.log1p(6))


def test_expire_idle_frees_only_idle_slots_and_changes_no_feature() -> None:
    """Expiry by the newest event time frees memory; an expired entity that comes back gets
    the same features whether its slot was freed first or not (the kernel's own check)."""

    def feed(engine: FeatureEngine, expire: bool) -> tuple[np.ndarray, list[tuple[str, int]]]:
        history = _history("quiet") + _history("busy")
        engine.process(columns_from_events(history, partitions=[3] * len(history)))
        engine.process(
            columns_from_events([ev(20, "busy", 3 * HOUR, 20, counterparty="c0")], partitions=[3])
        )
        expired = engine.expire_idle() if expire else []
        back = [ev(21, "quiet", 3 * HOUR + 5, 20, counterparty="c1", country="DE")]
        return engine.process(columns_from_events(back, partitions=[3])).matrix, expired

    swept = FeatureEngine(TTL)
    with_sweep, expired = feed(swept, expire=True)
    without_sweep, _ = feed(FeatureEngine(TTL), expire=False)
    assert expired == [("quiet", 3)]
    np.testing.assert_array_equal(with_sweep, without_sweep)
    # The busy entity (seen at 3 h) kept its slot; the quiet one came back on a fresh slot.
    assert len(swept) == 2 and swept.expire_idle() == []
    # Only the partitions asked for.
    engine = FeatureEngine(TTL)
    engine.process(
        columns_from_events(_history("p0") + _history("p1"), partitions=[0] * 6 + [1] * 6)
    )
    engine.process(columns_from_events([ev(30, "p2", 3 * HOUR, 1)], partitions=[2]))
    assert engine.expire_idle({1}) == [("p1", 1)]
    assert engine.slot("p0") is not None and engine.slot("p1") is None
    assert FeatureEngine(EngineSettings(idle_ttl_ms=0)).expire_idle() == []


def test_restored_state_sets_the_clock_idle_expiry_measures_by() -> None:
    engine = FeatureEngine(TTL)
    engine.process(
        columns_from_events(_history("old") + _history("new", 3 * HOUR), partitions=[0] * 12)
    )
    restored = FeatureEngine(TTL)
    restored.import_state(engine.export_state(np.arange(len(engine))))
    assert restored.newest_ts == engine.newest_ts == T0 + int((3 * HOUR + 500) * 1000)
    assert restored.expire_idle() == [("old", 0)]
