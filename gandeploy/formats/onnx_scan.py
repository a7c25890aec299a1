"""What an ONNX file refers to outside itself, read from its protobuf wire format with the standard library (the
serving install has no `onnx`). gandeploy's exports keep every weight inside the file; a tensor stored as external
data names a file that no manifest checksum covers (and `../` leaves the export), so such a file is refused.

The walk follows the fields of onnx.proto3 that can hold a TensorProto: ModelProto.graph (7) and .functions (25),
GraphProto.node (1), .initializer (5) and .sparse_initializer (15), FunctionProto.node (7), NodeProto.attribute (5),
AttributeProto.t (5), .g (6), .tensors (10), .graphs (11), .sparse_tensor (22), .sparse_tensors (23),
SparseTensorProto.values (1) and .indices (2); a TensorProto is external when its data_location (14) is 1 or it has
external_data entries (13).
"""

from __future__ import annotations

# message kind -> {field number: kind of the message it holds}
_FIELDS = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_MAX_DEPTH = 64  # subgraphs nest (If, Loop); deeper than this is not a model


class WireError(ValueError):
    """Not a protobuf message."""


def external_tensors(data: bytes) -> int:
    """How many tensors of the ONNX model `data` store their values outside the file; WireError when `data` is not
    a protobuf message."""
    return _walk(memoryview(data), "model", 0)


def _walk(buf: memoryview, kind: str, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise WireError("nested too deeply")
    found = 0
    for number, wire, value in _fields(buf):
        if kind == "tensor":
            if (number == 14 and wire == 0 and value == 1) or (number == 13 and wire == 2):
                return 1
        elif wire == 2 and number in _FIELDS[kind]:
            found += _walk(value, _FIELDS[kind][number], depth + 1)
    return found


def _fields(buf: memoryview):
    """(field number, wire type, value): varints as int, length-delimited fields as memoryview."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise WireError("a field runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:  # groups (3, 4) are not used by onnx.proto; anything else is not protobuf
            raise WireError(f"wire type {wire}")
        if pos > end or number == 0:
            raise WireError("truncated")
        yield number, wire, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
