"""The `scores` topic's JSON, built for a whole batch at once.

`ScoredBatch.record(i)` builds one decision as a dict (REST, gRPC and replay use it), which
costs ~20-40 µs a decision in Python: per-row numpy scalar reads, a Decision object and an
f-string explanation per event, then a dict walk by orjson. At 50,000 decisions/s that alone
is more than a core. Here the same fields are built column by column: each column is turned
into its JSON text once per batch (plain-list comprehensions over `.tolist()`, lookup tables
for booleans and types, shared text for what the whole batch has in common), and each
message is one `%` format of those texts. The output parses to exactly `record(i)` (a test
holds it to that), so every consumer of `scores` reads what it read before.
"""

from __future__ import annotations

from itertools import chain
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import orjson

from models.ensemble import TYPES, BatchDecision

if TYPE_CHECKING:
    from services.router.core import ScoredBatch

_BOOL: Final = ("false", "true")
_TYPE_JSON: Final = ("null", *(encode_basestring(t.value) for t in TYPES))
"""JSON of an anomaly-type code + 1 (code -1 = unknown = null)."""


def _rounded(values: npt.NDArray[np.float64], digits: int) -> list[str]:
    """JSON numbers of `round(x, digits)` (NaN -> null), a whole column in one format call.

    `'%.{digits}f' % x` and `round(x, digits)` both round the exact binary value correctly
    to that many decimals, so the text parses to exactly `round(x, digits)` (written with
    trailing zeros)."""
    n = values.size
    text = (f"%.{digits}f\n" * n % tuple(values.tolist())).split("\n")[:n]
    if np.isnan(values).any():
        return ["null" if t == "nan" else t for t in text]
    return text


_KIND_TEXT: Final = (
    " (threshold for unknown type)",
    *(f" (threshold for {t.value})" for t in TYPES),
)
"""The head's type clause by anomaly-type code + 1."""


def _number_or_missing(values: npt.NDArray[np.float64], prefix: str, suffix: str) -> list[str]:
    text = (f"{prefix}%.4f{suffix}\n" * values.size % tuple(values.tolist())).split("\n")
    text = text[: values.size]
    nan = np.flatnonzero(np.isnan(values)).tolist()
    for i in nan:
        text[i] = f"{prefix}missing{suffix}"
    return text


def explanations(d: BatchDecision, rows: npt.NDArray[np.intp] | None = None) -> list[str]:
    """`d.decision(i).explanation` for every event (or those in `rows`), column-wise: the
    same text, character for character, so the evaluation and the live decisions never
    disagree (a test compares them)."""
    pick: npt.NDArray[np.intp] | slice = slice(None) if rows is None else rows
    strategy = d.strategy
    score = d.score[pick]
    kinds = [_KIND_TEXT[c + 1] for c in d.anomaly_type[pick].tolist()]
    heads = [
        f"{strategy} score {s:.4f} {'>=' if a else '<'} {t:.4f}{k}"
        for s, t, a, k in zip(score.tolist(), d.threshold[pick].tolist(),
                              d.anomalous[pick].tolist(), kinds, strict=True)
    ]  # fmt: skip
    for i in np.flatnonzero(np.isnan(score)).tolist():
        heads[i] = f"{strategy}: no model score{kinds[i]}"
    weighted = strategy in ("weighted", "cascade")
    parts: list[list[str]] = []
    missing: list[tuple[str, npt.NDArray[np.bool_]]] = []
    for m in (*d.voters, *d.shadows):
        values = d.scores[m][pick]
        if m in d.shadows:
            parts.append(_number_or_missing(values, f"{m.value}=", " shadow"))
            continue
        suffix = f" w={d.weights[m]:g}" if weighted else ""
        column = _number_or_missing(values, f"{m.value}=", suffix)
        needed = d.needed[m][pick]
        for i in np.flatnonzero(~needed).tolist():
            column[i] += " not needed"
        parts.append(column)
        missing.append((m.value, needed & np.isnan(values)))
    if parts:
        out = [h + "; " + ", ".join(p) for h, p in zip(heads, zip(*parts, strict=True),
                                                      strict=True)]  # fmt: skip
    else:
        out = [h + "; " for h in heads]
    degraded = np.zeros(len(out), dtype=np.bool_)
    for _, miss in missing:
        degraded |= miss
    for i in np.flatnonzero(degraded).tolist():
        out[i] += "; degraded, missing: " + ", ".join(name for name, miss in missing if miss[i])
    return out


def _literal(json_text: str) -> str:
    """JSON text safe to embed in a `%` template."""
    return json_text.replace("%", "%%")


def encode_decisions(batch: ScoredBatch) -> list[bytes]:
    """One JSON message per decision of `batch`, in batch order; parses to `record(i)`."""
    d = batch.decision
    n = len(batch)
    if n == 0:
        return []
    names = list(d.scores)
    versions = orjson.dumps({m.value: v for m, v in batch.versions.items()}).decode()
    template = (
        '{"event_id":%s,"entity_id":%s,"ts":%d,'
        f'"decided_at":{int(batch.decided_at_ms)},'
        '"anomalous":%s,"alert":%s,"score":%s,"threshold":%s,"anomaly_type":%s,'
        f'"strategy":{_literal(encode_basestring(d.strategy))},'
        '"degraded":%s,"model_scores":{'
        + ",".join(f"{_literal(encode_basestring(m.value))}:%s" for m in names)
        + f'}},"model_versions":{_literal(versions)},"explanation":%s,"top_features":%s}}'
    )
    top = batch.top_features
    tops = (
        [
            orjson.dumps([{"feature": f, "z": round(z, 3)} for f, z in row]).decode()
            if row
            else "[]"
            for row in top
        ]
        if top
        else ["[]"] * n
    )
    columns = (
        map(encode_basestring, batch.event_ids),
        map(encode_basestring, batch.entity_ids),
        batch.ts.tolist(),
        [_BOOL[a] for a in d.anomalous.tolist()],
        [_BOOL[a] for a in np.asarray(batch.alert, dtype=np.bool_).tolist()],
        _rounded(d.score, 6),
        _rounded(d.threshold, 6),
        [_TYPE_JSON[c + 1] for c in d.anomaly_type.tolist()],
        [_BOOL[g] for g in d.degraded.tolist()],
        *(_rounded(d.scores[m], 6) for m in names),
        # Explanations hold only model and type names, numbers and fixed words: no escaping.
        [f'"{text}"' for text in explanations(d)],
        tops,
    )
    # One format over the whole batch, split on newlines: JSON text made by encode_basestring
    # and orjson never holds a raw newline, so each line is exactly one message.
    flat = tuple(chain.from_iterable(zip(*columns, strict=True)))
    return ((template + "\n") * n % flat).encode().split(b"\n")[:n]
