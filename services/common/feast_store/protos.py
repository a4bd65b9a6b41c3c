"""Building many Feast `Value` / `EntityKey` protos at once, cheaply.

`online_write_batch` takes one `Value` proto per feature value: 22 per entity row. With
upb, every top-level message owns a separately allocated arena, and constructing one
(`Value(float_val=x)`) costs ~0.6 µs here, about 14 µs per row: more than the whole
rest of our side of the write. Sub-messages of a repeated field instead live in their
parent's arena. So we write the wire bytes of one `RepeatedValue` holding every value
of the batch with numpy (fixed 7 bytes per float), parse it once in C, and hand out its
elements: real `Value` messages, byte-identical to `Value(float_val=x)` (a test checks),
at ~0.15 µs each. Entity keys get the same treatment through Feast's `OnlineReadRequest`
(a `repeated EntityKey`), with the bytes joined in Python.

The elements keep their parent's arena alive, so nothing here outlives its data. Nobody
mutates them: the stores only read and serialise the values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from feast.protos.feast.serving.Connector_pb2 import OnlineReadRequest
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

NULL_VALUE: Final = ValueProto()
"""Feast's missing value: what a NaN in a pushed DataFrame becomes (read back as None)."""

# Wire format constants (https://protobuf.dev/programming-guides/encoding/).
_LEN = 2  # wire type of strings, bytes and sub-messages
_I32 = 5  # wire type of float
_REPEATED_VALUE_VAL = 1  # RepeatedValue.val
_VALUE_FLOAT_VAL = 6  # Value.float_val
_VALUE_STRING_VAL = 2  # Value.string_val
_ENTITY_KEY_JOIN_KEYS = 1  # EntityKey.join_keys
_ENTITY_KEY_VALUES = 2  # EntityKey.entity_values
_REQUEST_ENTITY_KEYS = 1  # OnlineReadRequest.entityKeys


def _tag(field: int, wire_type: int) -> int:
    return (field << 3) | wire_type


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_FLOAT_ELEMENT_PREFIX: Final = bytes(
    [_tag(_REPEATED_VALUE_VAL, _LEN), 5, _tag(_VALUE_FLOAT_VAL, _I32)]
)
"""Before each float: `val` element tag, its length (tag + 4 bytes), `float_val` tag."""


def float_values(matrix: npt.NDArray[np.float32]) -> list[ValueProto]:
    """One `Value(float_val=x)` per element of `matrix`, row-major; NaN -> NULL_VALUE."""
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    count = flat.size
    wire = np.empty((count, 7), dtype=np.uint8)
    wire[:, :3] = np.frombuffer(_FLOAT_ELEMENT_PREFIX, dtype=np.uint8)
    # Little-endian, as protobuf's fixed32 is.
    wire[:, 3:] = flat.astype("<f4", copy=False).view(np.uint8).reshape(count, 4)
    values: list[ValueProto] = list(RepeatedValue.FromString(wire.tobytes()).val)
    nan_positions = np.flatnonzero(np.isnan(flat))
    for position in nan_positions.tolist():
        values[position] = NULL_VALUE
    return values


def entity_keys(join_key: str, entity_ids: Sequence[str]) -> list[EntityKeyProto]:
    """`EntityKey(join_keys=[join_key], entity_values=[Value(string_val=id)])` per id."""
    key_name = join_key.encode()
    head = bytes([_tag(_ENTITY_KEY_JOIN_KEYS, _LEN)]) + _varint(len(key_name)) + key_name
    values_tag = bytes([_tag(_ENTITY_KEY_VALUES, _LEN)])
    string_tag = bytes([_tag(_VALUE_STRING_VAL, _LEN)])
    element_tag = bytes([_tag(_REQUEST_ENTITY_KEYS, _LEN)])
    parts: list[bytes] = []
    append = parts.append
    for entity_id in entity_ids:
        raw = entity_id.encode()
        value = string_tag + _varint(len(raw)) + raw
        key = head + values_tag + _varint(len(value)) + value
        append(element_tag + _varint(len(key)) + key)
    return list(OnlineReadRequest.FromString(b"".join(parts)).entityKeys)
