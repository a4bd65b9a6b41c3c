"""Static tables the population is drawn from: countries, channels, daily profiles.

Kept apart from the sampling code so that a reviewer can judge realism (who trades when,
what currencies exist) without reading numpy, and so that the tables are tuples: their
order is part of the seeded stream, and a tuple cannot be reordered by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Country:
    """A home or card-use country."""

    code: str
    utc_offset_h: float
    """Standard-time offset; drives each entity's local hour (no DST: a day is a day)."""
    currency: str
    weight: float
    """Relative share of entities homed here, and of legitimate foreign use."""
    venues: tuple[str, ...]
    """Trading venues (MIC codes) an instrument homed here trades on."""


_US = ("XNAS", "XNYS", "ARCX", "BATS", "IEXG")
_EU = ("XETR", "XPAR", "XAMS", "XMIL", "CEUX")

COUNTRIES: Final[tuple[Country, ...]] = (
    Country("US", -5, "USD", 30, _US),
    Country("CA", -5, "CAD", 4, ("XTSE",)),
    Country("MX", -6, "MXN", 3, ("XMEX",)),
    Country("BR", -3, "BRL", 4, ("BVMF",)),
    Country("AR", -3, "ARS", 1, ("XBUE",)),
    Country("GB", 0, "GBP", 8, ("XLON", "CEUX")),
    Country("IE", 0, "EUR", 1, ("XDUB", "XLON")),
    Country("DE", 1, "EUR", 7, ("XETR", "XFRA")),
    Country("FR", 1, "EUR", 6, ("XPAR",)),
    Country("NL", 1, "EUR", 3, ("XAMS",)),
    Country("ES", 1, "EUR", 3, ("XMAD",)),
    Country("IT", 1, "EUR", 4, ("XMIL",)),
    Country("CH", 1, "CHF", 2, ("XSWX",)),
    Country("SE", 1, "SEK", 2, ("XSTO",)),
    Country("PL", 1, "PLN", 2, ("XWAR",)),
    Country("NG", 1, "NGN", 1, ("XNSA",)),
    Country("ZA", 2, "ZAR", 1, ("XJSE",)),
    Country("EG", 2, "EGP", 1, ("XCAI",)),
    Country("TR", 3, "TRY", 2, ("XIST",)),
    Country("AE", 4, "AED", 1, ("XDFM",)),
    Country("IN", 5.5, "INR", 6, ("XNSE", "XBOM")),
    Country("ID", 7, "IDR", 2, ("XIDX",)),
    Country("SG", 8, "SGD", 2, ("XSES",)),
    Country("HK", 8, "HKD", 2, ("XHKG",)),
    Country("CN", 8, "CNY", 5, ("XSHG", "XSHE")),
    Country("JP", 9, "JPY", 5, ("XTKS",)),
    Country("KR", 9, "KRW", 2, ("XKRX",)),
    Country("AU", 10, "AUD", 3, ("XASX",)),
    Country("NZ", 12, "NZD", 1, ("XNZE",)),
    Country("BE", 1, "EUR", 1, _EU),
)
"""At most 64 entries: per-entity country history is a uint64 bit mask."""

PAYMENT_CHANNELS: Final[tuple[str, ...]] = ("pos", "contactless", "web", "app", "moto", "atm")
PAYMENT_CHANNEL_WEIGHTS: Final[tuple[float, ...]] = (30, 25, 25, 15, 3, 2)

VENUES: Final[tuple[str, ...]] = tuple(
    sorted({venue for country in COUNTRIES for venue in country.venues})
)
"""Every venue, in a fixed order (sorted, not set order: the stream must not depend on hashing)."""

CHANNELS: Final[tuple[str, ...]] = PAYMENT_CHANNELS + VENUES
"""One index space for the `channel` field: payment channels first, then venues."""

# Daily profiles by local hour 0..23, interpolated linearly between hours.
PAYMENT_ACTIVITY: Final[tuple[float, ...]] = (
    0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.60, 0.90, 1.00, 1.10, 1.30,
    1.50, 1.30, 1.20, 1.20, 1.30, 1.50, 1.70, 1.80, 1.60, 1.30, 0.90, 0.50,
)  # fmt: skip
"""Card use: quiet nights, a lunch peak and an evening peak."""

PAYMENT_AMOUNT: Final[tuple[float, ...]] = (
    0.75, 0.70, 0.70, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00, 1.05, 1.10,
    1.00, 1.00, 1.05, 1.10, 1.15, 1.20, 1.30, 1.30, 1.25, 1.10, 0.95, 0.85,
)  # fmt: skip
"""Coffee in the morning, groceries and dinners in the evening."""

TRADE_ACTIVITY: Final[tuple[float, ...]] = (
    0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.05, 0.30, 2.20, 1.60, 1.20,
    1.00, 1.00, 1.10, 1.50, 2.00, 0.30, 0.05, 0.03, 0.03, 0.02, 0.02, 0.02,
)  # fmt: skip
"""Exchange hours: the U-shaped intraday volume curve, a trickle outside the session."""

TRADE_QUANTITY: Final[tuple[float, ...]] = (
    0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.60, 0.80, 1.60, 1.20, 1.00,
    0.90, 0.90, 1.00, 1.20, 1.50, 0.70, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50,
)  # fmt: skip
"""Larger orders around the open and the close."""

TRADE_SPREAD: Final[tuple[float, ...]] = (
    2.50, 2.50, 2.50, 2.50, 2.50, 2.50, 2.50, 2.20, 1.80, 1.60, 1.10, 1.00,
    1.00, 1.00, 1.00, 1.05, 1.30, 2.00, 2.50, 2.50, 2.50, 2.50, 2.50, 2.50,
)  # fmt: skip
"""Spreads are wide outside the session and at the open, tight mid-session."""
