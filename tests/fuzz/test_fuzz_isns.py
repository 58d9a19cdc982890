# Fuzzing of iSNS (iscsifs/proto/isns.py): the IsnsFramer over streams of real, split and
# damaged messages, and every response parser over every message it yields; TLV decoding and
# the record builders over raw attribute runs. Memory: a message above max_message_size is
# refused once its PDUs pass the cap, holding no more than the cap plus one PDU.

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.proto import isns
from iscsifs.proto.errors import RemoteProtocolError

from . import targets
from .strategies import fuzz_settings, isns_attribute, isns_stream


@fuzz_settings(400)
@given(st.one_of(isns_stream(), st.binary(max_size=200)))
def test_isns_framer(data: bytes) -> None:
    targets.run("isns_framer", data)


@fuzz_settings(300)
@given(st.one_of(st.lists(isns_attribute(), max_size=16).map(
    lambda attrs: b"".join(a.encode() for a in attrs)), st.binary(max_size=120)))
def test_isns_attributes(data: bytes) -> None:
    targets.run("isns_attributes", data)


@fuzz_settings(30, deadline_ms=None)
@given(cap=st.sampled_from([4096, 65536]), pdus=st.integers(1, 40))
def test_isns_message_cap(cap: int, pdus: int) -> None:
    """An endless multi-PDU message stops at the cap: no more than cap + one PDU is held."""
    framer = isns.IsnsFramer(max_message_size=cap)
    chunk = bytes(65532)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(RemoteProtocolError):
            for seq in range(10_000):
                flags = 0x8000 | (0x0400 if seq == 0 else 0)
                framer.receive_data(
                    isns.encode_message.__globals__["_HEADER"].pack(1, 0x8002, len(chunk),
                                                                    flags, 7, seq) + chunk)
                assert framer.next_message() is None
                assert framer.buffered <= cap + len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 4 * (cap + len(chunk)), peak
    del pdus
