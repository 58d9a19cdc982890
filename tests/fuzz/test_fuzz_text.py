# Fuzzing of the text layer (iscsifs/proto/text.py): key=value decoding (which must round trip
# through encode_text), the TextAssembler of C=1 runs (never above its cap, checked before
# buffering: tracemalloc) and the Negotiator fed a hostile target's answers and offers.

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto import text
from iscsifs.proto.errors import RemoteProtocolError

from . import targets
from .strategies import fuzz_settings, text_bytes


@fuzz_settings(500)
@given(st.one_of(text_bytes(), st.binary(max_size=200)))
def test_decode_text(data: bytes) -> None:
    targets.run("text_decode", data)


@fuzz_settings(300)
@given(st.integers(0, 255), st.integers(0, 255),
       st.one_of(text_bytes(), st.binary(max_size=300),
                 st.integers(1, 40000).map(lambda n: b"K=" + b"v" * n + b"\0")))
def test_text_assembler(b0: int, b1: int, body: bytes) -> None:
    targets.run("text_assembler", bytes([b0, b1]) + body)


@fuzz_settings(500)
@given(st.integers(0, 255), st.lists(text_bytes(), min_size=1, max_size=3))
def test_negotiator(setup: int, rounds: list[bytes]) -> None:
    targets.run("negotiator", bytes([setup]) + b"\xff".join(rounds))


@fuzz_settings(40, deadline_ms=None)
@given(cap=st.sampled_from([8192, 65536]), first=st.integers(0, 8192),
       size=st.integers(1, 1 << 22))
def test_assembler_refuses_before_buffering(cap: int, first: int, size: int) -> None:
    """A segment that would take the text past the cap is refused without being copied."""
    first = min(first, cap)
    asm = text.TextAssembler(cap)
    asm.feed(b"x" * first, cont=True)
    big = memoryview(bytearray(cap - first + size))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            asm.feed(big, cont=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8192, f"{peak} bytes allocated refusing {len(big)} bytes"
    assert not asm.pending
