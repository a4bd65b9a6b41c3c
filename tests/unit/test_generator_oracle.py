"""The oracle ceiling: its noise model is the generator's, its budget is kept, and it is an
upper bound (never below a detector that sees less)."""

from __future__ import annotations

import numpy as np

from services.common.anomaly_types import AnomalyType
from services.generator import StreamSpec
from services.generator.anomalies import CODE
from services.generator.columns import NORMAL_CODE
from services.generator.oracle import noise_cdf, oracle_ceiling
from services.generator.population import heavy_tail_noise

SPEC = StreamSpec(seed=11, entities=400, anomaly_rate=0.03, payment_share=0.5, rate=2_000.0)


def test_noise_cdf_is_the_generators_noise_with_its_clipped_tails() -> None:
    samples = np.sort(heavy_tail_noise(np.random.default_rng(3), 400_000))
    grid = np.linspace(-5.0, 5.0, 401)
    empirical = np.searchsorted(samples, grid, side="right") / samples.size
    assert np.abs(empirical - noise_cdf(grid)).max() < 0.004
    # The clipped tails are point masses at the clip: the CDF jumps there, as the samples do.
    top = samples.max()
    mass = float((samples == top).mean())
    assert mass > 0.001
    jump = float(noise_cdf(np.array([top]))[0] - noise_cdf(np.array([np.nextafter(top, 0)]))[0])
    assert abs(jump - mass) < 0.001


def test_ceiling_keeps_its_budget_and_grows_with_it() -> None:
    tight = oracle_ceiling(SPEC, 20_000, 80_000, 0.001)
    loose = oracle_ceiling(SPEC, 20_000, 80_000, 0.01)
    assert tight["events"] == 60_000 and tight["anomalies"] > 1_000
    assert tight["fpr"] <= 0.001 and loose["fpr"] <= 0.01
    assert loose["fpr"] > 0.005  # the budget is spent, not left unused
    assert tight["tpr"] < loose["tpr"] < 1.0
    for handed in ("velocity_burst", "spread_blowout", "novelty_jump", "slow_drift"):
        assert tight["recall_per_type"][handed] == 1.0
    # Price spikes on payments hide in heavy tails even for the oracle; at FPR 1% it still
    # finds most of them.
    assert 0.2 < tight["payment_price_spike_recall"] < loose["payment_price_spike_recall"]


def test_ceiling_is_above_a_detector_that_knows_as_much() -> None:
    """Given the same hand-overs, a z-score of the published amount against each entity's
    *true* level and dispersion, spending the whole budget on payments, must not beat the
    oracle's likelihood ratio (Neyman-Pearson): if it did, the ceiling would not be one."""
    from services.generator.oracle import _measured_part  # the oracle's own view of the stream

    part, pop = _measured_part(SPEC, 20_000, 80_000)
    oracle = oracle_ceiling(SPEC, 20_000, 80_000, 0.003)
    normal = part.label == NORMAL_CODE
    spikes = (part.label == CODE[AnomalyType.PRICE_SPIKE]) & ~part.is_trade
    hard = spikes | (part.label == CODE[AnomalyType.VOLUME_BURST])
    z = np.where(
        part.is_trade,
        -np.inf,
        (np.log(part.amount) - np.log(pop.level[part.entity])) / pop.dispersion[part.entity],
    )
    threshold = np.sort(z[normal])[::-1][int(0.003 * normal.sum())]
    detected = (~normal & ~hard) | (spikes & (z > threshold))
    z_tpr = float(detected.sum() / (~normal).sum())
    assert 0.5 < z_tpr <= oracle["tpr"]
