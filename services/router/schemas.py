"""The doors' shared contract: what a scoring request may hold, what a decision looks like,
the errors a door answers with, and the one path from a validated request to the core.

REST and gRPC validate through the same pydantic models, so a client gets the same message
for the same mistake whichever door it uses. Every failure a client can cause is a
`RouterError` carrying its HTTP status; each door translates it once (to a JSON body, or to
a gRPC status). A model outage is not an error: the core leaves the model out of the vote
and the decisions say `degraded`.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Final

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from services.common.anomaly_types import AnomalyType
from services.common.features.definition import FEATURE_DOCS, FEATURE_NAMES
from services.router.coalescing import Coalescer
from services.router.core import ScoredBatch, ScoringCore
from services.router.decision_json import encode_decisions

if TYPE_CHECKING:  # importing Feast takes seconds; a door given explicit features needs none
    from services.common.feast_store.reader import OnlineFeatureReader

ID_MAX_LENGTH: Final = 128
"""Same bound as ids in the event contract (services/common/events/schema.py)."""
FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
"""Models score float32: a larger finite JSON number would silently become infinity."""
_SHOWN: Final = 5


class RouterError(Exception):
    """A request the router cannot serve, with the HTTP status that says why.

    Doors map `status` once: REST answers it with `{"error": message, "problems": [...]}`,
    gRPC with the matching status code and `message` as details.
    """

    def __init__(
        self,
        message: str,
        status: int,
        *,
        problems: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problems = list(problems)
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------- requests


def _features_json_schema() -> dict[str, Any]:
    """All 22 names, required, numbers in float32 range: what the validator enforces."""
    return {
        "type": "object",
        "title": "Features",
        "description": "Every feature of FEATURE_NAMES by name, finite and within float32 "
        "range; no other keys.",
        "properties": {
            name: {
                "type": "number",
                "minimum": -FLOAT32_MAX,
                "maximum": FLOAT32_MAX,
                "description": doc,
            }
            for name, doc in FEATURE_DOCS.items()
        },
        "required": list(FEATURE_NAMES),
        "additionalProperties": False,
    }


Features = Annotated[
    dict[str, Annotated[float, Field(allow_inf_nan=False)]],
    WithJsonSchema(_features_json_schema()),
]

Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH)]


class _Strict(BaseModel):
    """Unknown keys are refused; no type coercion (a string is not a number), as in the
    published schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ScoreItem(_Strict):
    """One event to score: an entity, and its features or none (read from the store)."""

    entity_id: Identifier = Field(description="Account, card or instrument to score.")
    event_id: Identifier | None = Field(
        default=None, description="Carried into the decision; generated when absent."
    )
    features: Features | None = Field(
        default=None,
        description="The event's feature vector; when absent, the entity's latest features "
        "are read from the online store (404 if the store does not know the entity).",
    )

    @field_validator("features")
    @classmethod
    def _all_names_in_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        missing = [name for name in FEATURE_NAMES if name not in v]
        unknown = sorted(name for name in v if name not in FEATURE_DOCS)
        huge = [name for name in FEATURE_NAMES if abs(v.get(name, 0.0)) > FLOAT32_MAX]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} feature(s): {_listed(missing)}")
        if unknown:
            problems.append(f"unknown feature(s): {_listed(unknown)}")
        if huge:
            problems.append(f"outside the float32 range of the models: {_listed(huge)}")
        if problems:
            raise ValueError("; ".join(problems))
        return v


class ScoreBatch(_Strict):
    """Several events at once (at most `router.max_batch_items`)."""

    items: list[ScoreItem] = Field(min_length=1, description="Events to score, in order.")


def _request_shape(value: Any) -> str:
    if isinstance(value, ScoreBatch) or (isinstance(value, dict) and "items" in value):
        return "batch"
    return "item"


ScoreRequest = Annotated[
    Annotated[ScoreItem, Tag("item")] | Annotated[ScoreBatch, Tag("batch")],
    Discriminator(_request_shape),
]
"""A body holding `items` is a batch; any other body is one item."""

_BATCH: Final = TypeAdapter(ScoreBatch)


def parse_batch(data: Any) -> ScoreBatch:
    """Validate plain data (the gRPC door's items) exactly as the REST door does."""
    try:
        return _BATCH.validate_python(data)
    except ValidationError as exc:
        raise invalid_request(describe_errors(exc.errors())) from None


def items_of(request: ScoreItem | ScoreBatch) -> list[ScoreItem]:
    """The items of either request shape."""
    return list(request.items) if isinstance(request, ScoreBatch) else [request]


# --------------------------------------------------------------------------- responses


class TopFeature(BaseModel):
    """A feature far from normal, as a reason for the decision."""

    feature: str
    z: float = Field(
        description="z-score on an asinh scale against the traffic the router has scored "
        "(services/router/feature_baseline.py)."
    )


class Decision(BaseModel):
    """One decision; the same fields as the gRPC answer and the `scores` topic."""

    event_id: str
    entity_id: str
    ts: int = Field(description="Event time, ms since the epoch (the request time here).")
    decided_at: int = Field(description="When the decision was made, ms since the epoch.")
    anomalous: bool
    alert: bool = Field(description="Would alert (after kill switch, suppression, forcing).")
    score: float | None = Field(description="Ensemble score; null when no model scored.")
    threshold: float
    anomaly_type: AnomalyType | None = Field(description="Predicted type; null when unknown.")
    strategy: str = Field(description="Vote rule: weighted, k_of_n, any, all or cascade.")
    degraded: bool = Field(description="A model failed or timed out and was left out.")
    model_scores: dict[str, float | None] = Field(
        description="Calibrated score per model that answered (null: not asked, e.g. cascade)."
    )
    model_versions: dict[str, str] = Field(description="Registry version that answered.")
    explanation: str
    top_features: list[TopFeature]

    @field_validator("score")
    @classmethod
    def _score_finite(cls, v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    @field_validator("model_scores")
    @classmethod
    def _scores_finite(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        # A misbehaving model must not turn a decision into an unserialisable answer (500).
        return {m: s if s is None or math.isfinite(s) else None for m, s in v.items()}


class ScoreResponse(BaseModel):
    """Decisions in the order of the request's items."""

    decisions: list[Decision]


class EntityFeatures(BaseModel):
    """The latest features the online store holds for an entity."""

    entity_id: str
    features: dict[str, float | None] = Field(
        description="Feature name -> value, in FEATURE_NAMES order (null: not stored)."
    )


class ErrorBody(BaseModel):
    """Every error answer of the REST door."""

    error: str = Field(description="What is wrong, and how to fix it when the client can.")
    problems: list[str] = Field(default_factory=list, description="One line per problem.")


# --------------------------------------------------------------------------- errors


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per validation error: `dotted.path = value: message`.

    The REST prefix (`body`) and the request-shape tag are dropped, so both doors name a
    field the same way (`items.3.features.count_1m`). Values are shown with `repr`, never
    as JSON: a NaN input must not make the error answer itself unserialisable.
    """
    problems = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        if loc[:1] in (["item"], ["batch"]):
            loc = loc[1:]
        where = ".".join(loc) or "body"
        kind = str(err.get("type", ""))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            problems.append(f"body is not valid JSON: {detail}".rstrip(": "))
        elif kind == "extra_forbidden":
            problems.append(f"{where}: unknown field (allowed fields are in the OpenAPI schema)")
        elif kind == "missing":
            problems.append(f"{where}: required")
        elif kind == "union_tag_invalid" or isinstance(err.get("input"), dict | list):
            problems.append(f"{where}: {msg}")
        else:
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            problems.append(f"{where} = {shown}: {msg}")
    return problems


def invalid_request(problems: Sequence[str]) -> RouterError:
    """422 with every problem listed (the first few also in the message)."""
    head = "; ".join(problems[:3]) + (f"; (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return RouterError(f"invalid request: {head}", 422, problems=problems)


# --------------------------------------------------------------------------- the shared path


F32Matrix = np.ndarray[Any, np.dtype[np.float32]]
_ToScore = tuple[list[str], list[str], F32Matrix]
"""(event ids, entity ids, feature rows) of one request."""


class _SharedBatch:
    """One core call's decisions, shared by the requests it coalesced; its JSON is made once,
    for all of them, on the first request that asks."""

    def __init__(self, batch: ScoredBatch) -> None:
        self.batch = batch

    @cached_property
    def messages(self) -> list[bytes]:
        return encode_decisions(self.batch)


class ScoredRows:
    """One request's decisions: rows `start`..`stop` of a (maybe coalesced) scored batch.

    The REST door answers with `json()`: the `scores` topic's encoder (`decision_json`), one
    `%` format for the whole coalesced batch, so both carry the same text for a decision.
    Against a `Decision` validated and serialised per row (`loadtest/bench_decision_json.py`):
    3.4 vs 28.8 ms for a 1,000-item batch, 90 vs 466 us for 16; a lone single-event request
    pays ~10 us more (41 vs 30 us: the template is built per call). The gRPC door builds its
    messages from `decisions()`.
    """

    __slots__ = ("_shared", "_start", "_stop")

    def __init__(self, shared: _SharedBatch, start: int, stop: int) -> None:
        self._shared, self._start, self._stop = shared, start, stop

    def decisions(self) -> list[Decision]:
        """Validated decisions, in request order."""
        batch = self._shared.batch
        return [Decision.model_validate(batch.record(i)) for i in range(self._start, self._stop)]

    def json(self) -> bytes:
        """`ScoreResponse` as JSON: the same fields and values as `decisions()` would give
        (numbers written with their rounding's trailing zeros; non-finite ones null)."""
        rows = self._shared.messages[self._start : self._stop]
        return b'{"decisions":[' + b",".join(rows) + b"]}"


class RequestScorer:
    """From validated items to decisions: the one path both doors take into the core.

    Items without features are read from the online store in one batched read per request.
    Store reads are blocking calls (SQLite, redis-py), so they run on one worker thread of
    their own: never on the event loop, and never concurrently on one SQLite connection.
    Concurrent requests share store reads and model calls (`coalescing.Coalescer`): at most
    `max_concurrent` scoring calls are in flight, and what arrives meanwhile goes together in
    the next one; a lone request waits for nothing.
    """

    def __init__(
        self,
        core: ScoringCore,
        reader: OnlineFeatureReader | None,
        *,
        max_items: int,
        max_concurrent: int = 2,
    ) -> None:
        self.core = core
        self.reader = reader
        self.max_items = max_items
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-read")
        self._read_calls: Coalescer[list[str], F32Matrix] = Coalescer(
            self._read_many, len, max_size=max(max_items, 1_000), max_concurrent=1
        )
        self._score_calls: Coalescer[_ToScore, tuple[_SharedBatch, int]] = Coalescer(
            self._score_many, lambda r: len(r[0]), max_size=max(max_items, 1_000),
            max_concurrent=max_concurrent,
        )  # fmt: skip

    def close(self) -> None:
        """Stop the reader thread (requests in flight finish first)."""
        self._reads.shutdown(wait=True)

    async def score(self, items: Sequence[ScoreItem]) -> list[Decision]:
        """Decisions for the items, in order."""
        return (await self.score_rows(items)).decisions()

    async def score_rows(self, items: Sequence[ScoreItem]) -> ScoredRows:
        """The items scored, in order; `track_sequences=False` (a request about an entity
        must not rewrite the history the stream door keeps for it)."""
        if len(items) > self.max_items:
            raise RouterError(
                f"batch of {len(items)} items exceeds the limit of {self.max_items} "
                "(router.max_batch_items); split it into smaller requests",
                413,
            )
        matrix = np.empty((len(items), len(FEATURE_NAMES)), dtype=np.float32)
        stored: list[int] = []
        for i, item in enumerate(items):
            if item.features is None:
                stored.append(i)
            else:
                matrix[i] = [item.features[name] for name in FEATURE_NAMES]
        if stored:
            matrix[stored] = await self._read([items[i].entity_id for i in stored])
        shared, start = await self._score_calls.submit(
            (
                [item.event_id or uuid.uuid4().hex for item in items],
                [item.entity_id for item in items],
                matrix,
            )
        )
        return ScoredRows(shared, start, start + len(items))

    async def _score_many(self, requests: list[_ToScore]) -> list[tuple[_SharedBatch, int]]:
        """One core call for the rows of several requests; each gets (batch, first row)."""
        if len(requests) == 1:
            event_ids, entity_ids, matrix = requests[0]
        else:
            event_ids = [e for r in requests for e in r[0]]
            entity_ids = [e for r in requests for e in r[1]]
            matrix = np.concatenate([r[2] for r in requests])
        batch = await self.core.score(event_ids, entity_ids, matrix, track_sequences=False)
        shared = _SharedBatch(batch)
        starts = np.cumsum([0] + [len(r[0]) for r in requests[:-1]]).tolist()
        return [(shared, start) for start in starts]

    async def _read_many(self, requests: list[list[str]]) -> list[F32Matrix]:
        """One store read for the entities of several requests, split back per request."""
        reader = self._require_reader()
        ids = requests[0] if len(requests) == 1 else [e for r in requests for e in r]
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._reads, reader.read, ids)
        out, start = [], 0
        for r in requests:
            out.append(rows[start : start + len(r)])
            start += len(r)
        return out

    async def features(self, entity_id: str) -> EntityFeatures:
        """The entity's latest stored features; 404 when the store does not know it."""
        reader = self._require_reader()
        loop = asyncio.get_running_loop()
        try:
            values = await loop.run_in_executor(self._reads, reader.read_one, entity_id)
        except Exception as exc:
            _raise_with_status(exc)
            raise
        if values is None:
            raise _unknown([entity_id])
        return EntityFeatures(
            entity_id=entity_id,
            features={k: None if math.isnan(v) else v for k, v in values.items()},
        )

    def _require_reader(self) -> OnlineFeatureReader:
        if self.reader is None:
            raise RouterError(
                "this router has no online store: send the features with each item", 422
            )
        return self.reader

    async def _read(self, entity_ids: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self._require_reader()
        try:
            rows = await self._read_calls.submit(entity_ids)
        except Exception as exc:
            _raise_with_status(exc)
            raise
        finite = np.isfinite(rows)
        unknown = np.isnan(rows).all(axis=1)  # how the reader marks an entity it lacks
        if unknown.any():
            raise _unknown([entity_ids[i] for i in np.flatnonzero(unknown).tolist()])
        partial = ~finite.all(axis=1)
        if partial.any():
            i = int(np.flatnonzero(partial)[0])
            bad = [FEATURE_NAMES[j] for j in np.flatnonzero(~finite[i]).tolist()]
            raise RouterError(
                f"entity {entity_ids[i]!r} has missing or non-finite stored features "
                f"({_listed(bad)}); send its features with the item instead",
                409,
            )
        return rows


def _raise_with_status(exc: Exception) -> None:
    """Re-raise a feature-store failure as the status it carries (`FeatureStoreError.
    http_status`: 503 when the store is unreachable). Returns for anything else: a bug, which
    the caller re-raises as it is."""
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        raise RouterError(str(exc), status) from exc


def _unknown(entity_ids: Sequence[str]) -> RouterError:
    distinct = list(dict.fromkeys(entity_ids))
    shown = _listed([repr(e) for e in distinct])
    return RouterError(
        f"unknown entity: the online store has no features for {shown}; "
        "send the features with the item, or score it once its events have been ingested",
        404,
    )
