# Fuzzing of the PDU framer and decoder (iscsifs/proto/pdu.py): streams of real PDUs with right
# or wrong digests, damaged at the fields the framer trusts, fed whole, byte by byte and in odd
# chunks, with and without a placer; raw bytes too. Memory: a data segment above
# max_data_segment is refused before it is buffered (tracemalloc), and a framer that hands its
# frames on holds about one segment, whatever the stream.

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto import pdu
from iscsifs.proto.digest import crc32c
from iscsifs.proto.errors import RemoteProtocolError

from . import targets
from .strategies import framer_input, fuzz_settings, pdu_stream


@fuzz_settings(400)
@given(framer_input())
def test_framer_structured(data: bytes) -> None:
    targets.run("pdu_framer", data)


@fuzz_settings(200)
@given(st.binary(max_size=400))
def test_framer_raw_bytes(data: bytes) -> None:
    targets.run("pdu_framer", data)


@fuzz_settings(200)
@given(st.booleans(), st.booleans(), st.data())
def test_decode_one_pdu(hd: bool, dd: bool, draw: st.DataObject) -> None:
    stream = draw.draw(pdu_stream(header_digest=hd, data_digest=dd))
    targets.run("pdu_decode", bytes([hd | dd << 1]) + stream)


def _header(opcode: int, dsl: int, ahs_words: int, header_digest: bool) -> bytes:
    bhs = bytearray(48)
    bhs[0] = opcode
    bhs[4] = ahs_words
    bhs[5:8] = dsl.to_bytes(3, "big")
    out = bytes(bhs) + bytes(4 * ahs_words)
    return out + (struct.pack("<I", crc32c(out)) if header_digest else b"")


@fuzz_settings(60, deadline_ms=None)
@given(
    limit=st.integers(16384, 1 << 20),
    excess=st.integers(1, (1 << 24) - 1),
    opcode=st.sampled_from([0x25, 0x21, 0x20, 0x24, 0x23, 0x32, 0x3F, 0x01]),
    ahs_words=st.sampled_from([0, 1, 255]),
    header_digest=st.booleans(),
    follow=st.integers(0, 65536),
)
def test_oversized_segment_refused_before_buffering(
    limit: int, excess: int, opcode: int, ahs_words: int, header_digest: bool, follow: int
) -> None:
    """The header alone decides: RemoteProtocolError, and no allocation near the segment's
    size (or even the limit's) happened to receive it."""
    dsl = min(limit + excess, (1 << 24) - 1)
    if dsl <= limit:
        return
    framer = pdu.Framer(header_digest=header_digest, max_data_segment=limit)
    wire = _header(opcode, dsl, ahs_words, header_digest) + bytes(follow)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            framer.receive_data(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16384, f"{peak} bytes allocated while refusing a {dsl}-byte segment"


@fuzz_settings(60, deadline_ms=None)
@given(limit=st.sampled_from([512, 8192, 65536]), hd=st.booleans(), dd=st.booleans(),
       data=st.data())
def test_framer_memory_bounded_by_one_segment(limit: int, hd: bool, dd: bool,
                                              data: st.DataObject) -> None:
    """Whatever the stream, a framer that hands frames on as they complete holds at most one
    data segment of up to `limit` bytes (twice: the buffer and the frame's copy) on top of
    its staging area."""
    stream = data.draw(pdu_stream(header_digest=hd, data_digest=dd))
    stream += data.draw(st.one_of(st.just(b""), st.just(_header(0x25, limit, 0, hd)
                                                        + bytes(limit))))
    seen: list[int] = []
    framer = pdu.Framer(header_digest=hd, data_digest=dd, max_data_segment=limit,
                        on_frame=lambda f: seen.append(len(f.data)))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            for i in range(0, len(stream), 1000):
                framer.receive_data(stream[i : i + 1000])
        except RemoteProtocolError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(n <= limit for n in seen)
    assert peak <= 2 * limit + 32768, f"{peak} bytes held for segments of at most {limit}"
