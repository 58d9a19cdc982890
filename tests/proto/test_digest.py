# Tests of iscsifs/proto/digest.py: the CRC32C vectors of RFC 7143 appendix B.4 (identical to RFC
# 3720 B.4), the little-endian wire order of the 4 digest bytes, and digest_of over parts being
# the digest of their concatenation. A bit-at-a-time reference CRC (written from the polynomial,
# not from the crc32c package) checks the fast path independently.

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsifs.proto.digest import DIGEST_LEN, digest_bytes, digest_of, digest_value

# Reflected form of the Castagnoli polynomial 0x1EDC6F41 (RFC 7143 section 13.1).
_POLY_REFLECTED = 0x82F63B78


def reference_crc32c(data: bytes) -> int:
    """CRC32C one bit at a time: initial value all ones, reflected, final complement."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY_REFLECTED if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# RFC 7143 appendix B.4: (data, the CRC bytes as the RFC prints them, i.e. in wire order).
RFC_B4_VECTORS = [
    pytest.param(bytes(32), "aa 36 91 8a", id="32-zero-bytes"),
    pytest.param(b"\xff" * 32, "43 ab a8 62", id="32-ones"),
    pytest.param(bytes(range(32)), "4e 79 dd 46", id="32-incrementing"),
    pytest.param(bytes(range(31, -1, -1)), "5c db 3f 11", id="32-decrementing"),
    pytest.param(
        bytes.fromhex(
            "01c00000"  # opcode SCSI Command; F|R; reserved
            "00000000"  # TotalAHSLength 0; DataSegmentLength 0
            "00000000"  # LUN
            "00000000"  # LUN
            "14000000"  # Initiator Task Tag
            "00000400"  # Expected Data Transfer Length 1024
            "00000014"  # CmdSN
            "00000018"  # ExpStatSN
            "28000000"  # CDB: READ(10)
            "00000000"  # CDB
            "02000000"  # CDB
            "00000000"  # CDB
        ),
        "56 3a 96 d9",
        id="scsi-read10-pdu",
    ),
]


@pytest.mark.parametrize(("data", "wire"), RFC_B4_VECTORS)
def test_rfc7143_b4_vectors(data: bytes, wire: str) -> None:
    expected = bytes.fromhex(wire)
    assert digest_bytes(data) == expected
    assert len(digest_bytes(data)) == DIGEST_LEN == 4
    # The RFC prints the digest in wire order; as an integer that is little-endian.
    assert digest_of(data) == int.from_bytes(expected, "little")
    assert digest_value(expected) == digest_of(data)
    assert reference_crc32c(data) == digest_of(data)


def test_digest_of_nothing_is_zero() -> None:
    assert digest_of() == 0
    assert digest_of(b"") == 0
    assert digest_bytes() == b"\0\0\0\0"


def test_every_buffer_type_gives_the_same_digest() -> None:
    data = bytes(range(256)) * 3
    want = reference_crc32c(data)
    assert digest_of(data) == want
    assert digest_of(bytearray(data)) == want
    assert digest_of(memoryview(data)) == want
    assert digest_of(memoryview(bytearray(data))[100:], memoryview(data)[:0], data[:100]) != want
    assert digest_of(memoryview(data)[:100], bytearray(data[100:])) == want


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_digest_of_parts_equals_digest_of_whole(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    parts = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert b"".join(parts) == data
    assert digest_of(*parts) == digest_of(data) == reference_crc32c(data)
    assert digest_bytes(*parts) == digest_of(data).to_bytes(4, "little")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=100))
def test_digest_value_reads_back_digest_bytes(data: bytes) -> None:
    assert digest_value(digest_bytes(data)) == digest_of(data)
    assert digest_value(bytearray(digest_bytes(data))) == digest_of(data)
