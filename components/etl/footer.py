"""Make Spark's Parquet footers byte-identical across JVMs.

parquet-mr keeps each column chunk's encodings in a ``HashSet<Encoding>`` and writes them to the
footer in that set's iteration order, which follows the enum constants' identity hash codes: it
changes from one JVM to the next. The same data written by two processes then differs in a few
footer bytes (``['RLE', 'BIT_PACKED', 'PLAIN']`` vs ``['BIT_PACKED', 'PLAIN', 'RLE']``), and so
does every file's sha256. The encodings are a set by definition, so :func:`sort_encodings` writes
each list in ascending order; the rewritten list has exactly the same length (the same values,
each a varint), so the footer is patched in place and nothing else in the file moves.

The footer is Thrift's compact protocol (parquet-format's ``parquet.thrift``); the walk below
reads it generically and only records where ``FileMetaData.row_groups[*].columns[*].meta_data
.encodings`` lies (field ids 4 -> 1 -> 3 -> 2).
"""

from __future__ import annotations

import struct

MAGIC = b"PAR1"
# Compact protocol type ids.
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
# Field ids from the struct being read to the encodings list.
_PATH = (4, 1, 3, 2)


def footer_span(size: int, tail: bytes) -> tuple[int, int]:
    """``(offset, length)`` of the Thrift footer of a Parquet file of ``size`` bytes, from its
    last 8 bytes (``tail``: footer length, ``PAR1``).

    Raises:
        ValueError: not a Parquet file.
    """
    if size < 12 or tail[4:] != MAGIC:
        raise ValueError("not a Parquet file (no PAR1 magic at the end)")
    (length,) = struct.unpack("<I", tail[:4])
    if length > size - 12:
        raise ValueError(f"damaged Parquet footer: length {length} in a {size}-byte file")
    return size - 8 - length, length


def sort_encodings(footer: bytes) -> bytes:
    """``footer`` with every column chunk's ``encodings`` list in ascending order (same length)."""
    walker = _Walker(footer)
    walker.struct(depth=0)
    out = bytearray(footer)
    for start, end, values in walker.lists:
        encoded = b"".join(_varint(_zigzag(v)) for v in sorted(values))
        assert len(encoded) == end - start, "a re-ordered list must keep its length"
        out[start:end] = encoded
    return bytes(out)


class _Walker:
    """Reads a compact-protocol struct, remembering the spans of the encodings lists."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.lists: list[tuple[int, int, list[int]]] = []

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def struct(self, depth: int) -> None:
        field_id = 0
        while True:
            head = self.byte()
            if head == 0:  # stop
                return
            kind, delta = head & 0x0F, head >> 4
            field_id = field_id + delta if delta else _unzigzag(self.varint())
            on_path = depth < len(_PATH) and field_id == _PATH[depth]
            self.value(kind, depth + 1 if on_path else None)

    def value(self, kind: int, depth: int | None) -> None:
        """Skip (or, on the path to the encodings, descend into) one value of type ``kind``."""
        if kind in (_TRUE, _FALSE):
            return  # a struct field's boolean lives in its type nibble
        if kind == _BYTE:
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            length = self.varint()  # read first: `self.pos += self.varint()` loses the varint
            self.pos += length
        elif kind in (_LIST, _SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if depth == len(_PATH) and elem == _I32:
                start = self.pos
                values = [_unzigzag(self.varint()) for _ in range(size)]
                self.lists.append((start, self.pos, values))
                return
            for _ in range(size):
                if elem in (_TRUE, _FALSE):  # booleans in a container take one byte each
                    self.pos += 1
                else:
                    self.value(elem, depth)
        elif kind == _MAP:
            size = self.varint()
            types = self.byte() if size else 0
            for _ in range(size):
                self.value(types >> 4, None)
                self.value(types & 0x0F, None)
        elif kind == _STRUCT:
            if depth is None:
                self.struct(depth=len(_PATH) + 1)  # off the path: never matches a field id
            else:
                self.struct(depth)
        else:
            raise ValueError(f"damaged Parquet footer: unknown Thrift type {kind} at {self.pos}")


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7
