"""Where generated chunks go: Kafka, JSONL, Parquet, nowhere; and the labels side file.

Every sink implements `write(chunk)` and `close() -> SinkReport`; pacing and progress
live in the runner, so a sink only has to be fast. The Kafka sink is the hot one: it
produces in a tight loop, asks librdkafka for error-only delivery reports (a Python
callback per successful message would cost as much as encoding it) and counts every
failed or unflushed delivery as an error instead of dropping it silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import KafkaError, KafkaException, Message

from services.common.config.model import KafkaConfig
from services.common.kafka.clients import make_producer
from services.generator.encoding import LabelRecord
from services.generator.spec import GeneratorError
from services.generator.stream import Chunk

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 5.0
_PARQUET_ROWS_PER_GROUP: Final = 131_072
_BUFFER_FULL_WAIT_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class SinkReport:
    """What a sink did with the events it was given."""

    written: int
    """Events handed to the sink."""
    errors: int = 0
    """Events that did not reach the destination (failed or unflushed deliveries)."""
    first_error: str | None = None


class EventSink(Protocol):
    """A destination of generated events."""

    def write(self, chunk: Chunk) -> None:
        """Take the chunk's events (and, for Kafka, its labels)."""

    @property
    def errors(self) -> int:
        """Events known to be lost so far (live sinks learn of failures asynchronously)."""

    def close(self) -> SinkReport:
        """Flush, release resources and report."""


class NullSink:
    """Encodes and discards: the cost of generation plus encoding, without any I/O."""

    def __init__(self) -> None:
        self._written = 0
        self.bytes = 0

    def write(self, chunk: Chunk) -> None:
        """Encode the events (keys included) and drop them."""
        values = chunk.values()
        chunk.keys()
        self._written += len(values)
        self.bytes += sum(map(len, values))

    @property
    def errors(self) -> int:
        """Local writes fail loudly (an exception), never silently."""
        return 0

    def close(self) -> SinkReport:
        """Nothing to flush."""
        return SinkReport(self._written)


class JsonlSink:
    """One compact JSON event per line."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = _open_for_writing(path)
        self._written = 0

    def write(self, chunk: Chunk) -> None:
        """Append the chunk's events."""
        values = chunk.values()
        if values:
            self._file.write(b"\n".join(values))
            self._file.write(b"\n")
        self._written += len(values)

    @property
    def errors(self) -> int:
        """Local writes fail loudly (an exception), never silently."""
        return 0

    def close(self) -> SinkReport:
        """Close the file."""
        self._file.close()
        return SinkReport(self._written)


_EVENT_SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("entity_id", pa.string()),
        ("ts", pa.int64()),
        ("kind", pa.string()),
        ("amount", pa.float64()),
        ("quantity", pa.float64()),
        ("spread_bps", pa.float64()),
        ("instrument", pa.string()),
        ("counterparty", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("currency", pa.string()),
    ]
)

_LABEL_SCHEMA: Final = pa.schema(
    [("event_id", pa.string()), ("entity_id", pa.string()), ("ts", pa.int64()),
     ("label", pa.string())]
)  # fmt: skip


class _BufferedParquet:
    """Row groups of a sensible size even though chunks are small."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        _open_for_writing(path).close()
        self._writer = pq.ParquetWriter(str(path), schema, compression="zstd")
        self._schema = schema
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= _PARQUET_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending))
            self._pending = []
            self._rows = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


class ParquetSink:
    """Events as a Parquet table in their validated form (columns of the contract)."""

    def __init__(self, path: Path) -> None:
        self._out = _BufferedParquet(path, _EVENT_SCHEMA)
        self._written = 0

    def write(self, chunk: Chunk) -> None:
        """Append the chunk's events."""
        columns = chunk.encoder.table_columns(chunk.columns)
        arrays = [
            pa.array(columns[field.name], type=field.type, from_pandas=True)
            for field in _EVENT_SCHEMA
        ]
        self._out.add(pa.Table.from_arrays(arrays, schema=_EVENT_SCHEMA))
        self._written += len(chunk)

    @property
    def errors(self) -> int:
        """Local writes fail loudly (an exception), never silently."""
        return 0

    def close(self) -> SinkReport:
        """Write the last row group and the footer."""
        self._out.close()
        return SinkReport(self._written)


class LabelFile:
    """The ground-truth side file: JSONL or Parquet, chosen by the file's extension."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._parquet: _BufferedParquet | None = None
        self._jsonl: IO[bytes] | None = None
        if label_format(path) == "parquet":
            self._parquet = _BufferedParquet(path, _LABEL_SCHEMA)
        else:
            self._jsonl = _open_for_writing(path)

    def write(self, records: list[LabelRecord]) -> None:
        """Append label records."""
        if not records:
            return
        if self._jsonl is not None:
            self._jsonl.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        elif self._parquet is not None:
            self._parquet.add(pa.Table.from_pylist(list(records), schema=_LABEL_SCHEMA))

    def close(self) -> None:
        """Flush and close the file."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()


def label_format(path: Path) -> str:
    """`jsonl` or `parquet` from the extension; anything else is a user mistake."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise GeneratorError(
        f"labels file {str(path)!r} must end in .jsonl, .ndjson or .parquet (it picks the format)"
    )


def _open_for_writing(path: Path) -> IO[bytes]:
    try:
        return path.open("wb", buffering=1 << 20)
    except OSError as exc:
        raise GeneratorError(f"cannot write {str(path)!r}: {exc.strerror}") from None


class KafkaSink:
    """Events to the events topic (key = entity id), labels to the labels topic (key =
    event id), through one throughput-tuned producer."""

    def __init__(self, cfg: KafkaConfig, **producer_overrides: Any) -> None:
        self._bootstrap = cfg.bootstrap_servers
        self.events_topic = cfg.topics.events.name
        self.labels_topic = cfg.topics.labels.name
        self._errors = 0
        self._first_error: str | None = None
        self._written = 0
        overrides: dict[str, Any] = {
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "logger": logger,
        }
        overrides.update(producer_overrides)
        try:
            self._producer = make_producer(cfg, "generator", **overrides)
        except KafkaException as exc:
            raise GeneratorError(f"invalid Kafka producer settings: {exc.args[0]}") from None
        self._check_topics()

    def _check_topics(self) -> None:
        """Fail before generating anything when the broker or a topic is missing: a user
        mistake should read as one line, not as a million failed deliveries."""
        try:
            metadata = self._producer.list_topics(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0]
            reason = err.str() if isinstance(err, KafkaError) else str(err)
            raise GeneratorError(
                f"cannot reach the Kafka broker at {self._bootstrap} ({reason}); is it running?"
            ) from None
        for topic in (self.events_topic, self.labels_topic):
            if topic not in metadata.topics:
                raise GeneratorError(
                    f"topic {topic!r} does not exist on {self._bootstrap}; "
                    "create the topics with `anomaly topics create`"
                )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors += 1
            if self._first_error is None:
                self._first_error = f"{msg.topic()}: {err.str()}"

    def _produce_blocking(self, topic: str, value: bytes, key: bytes) -> None:
        """Slow path: the local queue is full, so serve delivery reports until it drains."""
        while True:
            self._producer.poll(_BUFFER_FULL_WAIT_S)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue

    def write(self, chunk: Chunk) -> None:
        """Queue the chunk's events and labels; delivery happens in librdkafka's threads."""
        values = chunk.values()
        self._produce_all(self.events_topic, values, chunk.keys())
        labels = chunk.labels()
        if labels:  # ~1% of events: orjson per record is cheap enough here
            self._produce_all(
                self.labels_topic,
                [orjson.dumps(r) for r in labels],
                [r["event_id"].encode() for r in labels],
            )
        self._written += len(values)
        self._producer.poll(0)

    def _produce_all(self, topic: str, values: list[bytes], keys: list[bytes]) -> None:
        produce = self._producer.produce
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self._produce_blocking(topic, value, key)
            except KafkaException as exc:
                self._errors += 1
                if self._first_error is None:
                    self._first_error = f"{topic}: produce failed: {exc.args[0]}"

    @property
    def errors(self) -> int:
        """Failed deliveries reported so far."""
        return self._errors

    def close(self) -> SinkReport:
        """Wait for outstanding deliveries; what is still queued after the timeout failed."""
        undelivered = self._producer.flush(FLUSH_TIMEOUT_S)
        if undelivered:
            self._errors += undelivered
            if self._first_error is None:
                self._first_error = (
                    f"{undelivered} messages still undelivered after {FLUSH_TIMEOUT_S:.0f} s"
                )
        return SinkReport(self._written, self._errors, self._first_error)
