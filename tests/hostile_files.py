"""Crafted hostile trace files, built byte by byte in the test (no binary fixtures are committed).

* :func:`npy` -- the bytes of one ``.npy`` member, with a real or a lying header.
* :func:`write_zip` -- a zip of members, each stored, deflated or bzip2-compressed, optionally with a
  lying size in the zip directory.
* :func:`deflate_zeros` / :func:`bzip2_zeros` -- a compressed member that really inflates to a header
  plus ``n`` zero (or other fill) bytes (a decompression bomb), built in a fraction of a second for any ``n``.
* :func:`deflate_then_garbage` -- a member whose data past the header cannot be inflated (to show a
  reader refused it from its header alone).
* :func:`trace_members` -- the members of a small valid trace, to edit one at a time.
"""

from __future__ import annotations

import bz2
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORED, DEFLATED, BZIP2 = 0, 8, 12
_BLOCK = 1 << 20


@dataclass
class Member:
    """One zip member as it lies on disk: its compressed bytes and what the zip directory claims."""

    data: bytes            # the bytes stored in the file (compressed when method != STORED)
    method: int
    crc: int
    file_size: int         # the uncompressed size the zip directory declares


def npy(array=None, *, header: dict | None = None, payload: bytes = b"") -> bytes:
    """A ``.npy`` member: ``array`` written by numpy, or ``header`` (a dict: descr, fortran_order, shape)
    followed by ``payload`` -- so a test can declare any shape and dtype."""
    out = io.BytesIO()
    if header is None:
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
        return out.getvalue()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + payload


def header_for(dtype, shape) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}


def plain(data: bytes, method: int = STORED) -> Member:
    """``data`` stored or compressed honestly."""
    if method == STORED:
        packed = data
    elif method == DEFLATED:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        packed = c.compress(data) + c.flush()
    elif method == BZIP2:
        packed = bz2.compress(data)
    else:
        raise ValueError(method)
    return Member(packed, method, zlib.crc32(data), len(data))


def _deflater():
    return zlib.compressobj(9, zlib.DEFLATED, -15)


def deflate_zeros(head: bytes, n: int, fill: bytes = b"\0") -> Member:
    """A deflated member that inflates to ``head`` + ``n`` bytes ``fill``. Full flushes make every 1 MiB
    block compress to the same bytes, so the stream is built by repetition (about 1 KB per MiB)."""
    block_data = fill * _BLOCK
    c = _deflater()
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block_c = _deflater()
    block = block_c.compress(block_data) + block_c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n, _BLOCK)
    tail_c = _deflater()
    tail = tail_c.compress(fill * rest) + tail_c.flush()
    crc = zlib.crc32(head)
    for _ in range(full):
        crc = zlib.crc32(block_data, crc)
    crc = zlib.crc32(fill * rest, crc)
    return Member(first + block * full + tail, DEFLATED, crc, len(head) + n)


def deflate_then_garbage(head: bytes, n: int) -> Member:
    """A deflated member whose first 8 KiB inflate to ``head`` + zeros and whose remaining compressed bytes
    are garbage, declaring ``len(head) + n`` bytes: a reader that goes past the header fails in zlib."""
    c = _deflater()
    valid = c.compress(head + bytes(8192)) + c.flush(zlib.Z_FULL_FLUSH)
    garbage = bytes(range(256)) * 16
    return Member(valid + garbage, DEFLATED, 0, len(head) + n)


def bzip2_zeros(head: bytes, n: int) -> Member:
    """A bzip2 member that inflates to ``head`` + ``n`` zero bytes (bzip2 packs about 45 MB of zeros per KB)."""
    c = bz2.BZ2Compressor(9)
    parts = [c.compress(head)]
    crc = zlib.crc32(head)
    zeros = bytes(_BLOCK)
    full, rest = divmod(n, _BLOCK)
    for _ in range(full):
        parts.append(c.compress(zeros))
        crc = zlib.crc32(zeros, crc)
    parts.append(c.compress(bytes(rest)))
    crc = zlib.crc32(bytes(rest), crc)
    parts.append(c.flush())
    return Member(b"".join(parts), BZIP2, crc, len(head) + n)


def write_zip(path: Path, members) -> Path:
    """A zip file of ``members`` (name -> bytes, stored; or a :class:`Member`; a dict or a list of pairs, so
    names may repeat). Written by hand, so a member's method and declared size are whatever the test says.
    No zip64: members stay under 4 GiB."""
    out, central = bytearray(), bytearray()
    pairs = list(members.items()) if isinstance(members, dict) else list(members)
    for name, member in pairs:
        if not isinstance(member, Member):
            member = plain(member)
        raw = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, member.method, 0, 0x21, member.crc,
                           len(member.data), member.file_size, len(raw), 0) + raw + member.data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, member.method, 0, 0x21, member.crc,
                               len(member.data), member.file_size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(pairs), len(pairs), len(central), start, 0)
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


def meta_bytes(**overrides) -> bytes:
    """``meta_json`` of a tiny valid trace (model 'tiny': 2 layers, 4 experts, top-2), with overrides."""
    meta = {"format": "specmd-trace", "version": 1, "model": "tiny", "num_layers": 2, "num_experts": 4,
            "top_k": 2, "kind": "synthetic", "source": "tests/hostile_files.py"}
    meta.update(overrides)
    return json.dumps(meta).encode()


def trace_members(num_tokens: int = 3, *, meta: bytes | None = None) -> dict[str, bytes]:
    """The members of a valid tiny trace (one request of ``num_tokens`` tokens), as ``.npy`` bytes."""
    ids = np.tile(np.array([[0, 1], [2, 3]], np.int16), (num_tokens, 1, 1))
    return {"meta_json.npy": npy(np.frombuffer(meta or meta_bytes(), np.uint8)),
            "request_offsets.npy": npy(np.array([0, num_tokens], np.int64)),
            "prompt_lengths.npy": npy(np.array([1], np.int64)),
            "expert_ids.npy": npy(ids)}
