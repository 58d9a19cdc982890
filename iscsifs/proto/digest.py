# CRC32C header and data digests (RFC 7143 sections 11.1 and 13.1; polynomial 0x1EDC6F41, the
# Castagnoli CRC, computed by the crc32c package with hardware support). A digest is sent as the
# 4 bytes of the CRC in little-endian order: that is how RFC 7143 appendix B's examples and every
# deployed target lay it out, even though the rest of the PDU is big-endian.
# Must not do I/O.

from __future__ import annotations

import struct

from crc32c import crc32c

__all__ = ["DIGEST_LEN", "crc32c", "digest_bytes", "digest_of", "digest_value"]

DIGEST_LEN = 4
_LE32 = struct.Struct("<I")


def digest_of(*parts: bytes | bytearray | memoryview) -> int:
    """CRC32C over the concatenation of parts, without concatenating them."""
    crc = 0
    for part in parts:
        crc = crc32c(part, crc)
    return crc


def digest_bytes(*parts: bytes | bytearray | memoryview) -> bytes:
    """The 4 wire bytes of the digest over parts."""
    return _LE32.pack(digest_of(*parts))


def digest_value(wire: bytes | bytearray | memoryview) -> int:
    """The CRC a peer sent, from its 4 wire bytes."""
    return _LE32.unpack(wire)[0]
