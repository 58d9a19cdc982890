# SCSI command layer: CDB builders, response parsers, LUN addressing, sense decoding, typed SCSI
# errors and the retry policy as data. It knows nothing of iSCSI (docs/design.md rule 10, after libiscsi's
# scsi-lowlevel.c): stdlib only, no I/O, no clock, no logging. The engine carries the bytes built
# here and hands back what the target answered; fs.py translates ScsiError to errno at the edge.
#
# SPC-4 citations use the clause numbers of SPC-4 r36; SBC-3 clauses are cited by title, because
# their numbers moved between revisions (WRITE SAME (16) alone has been 5.42 to 5.50). The CDB builders run once per I/O on the hot path: they pack
# precompiled structs and let struct do the range checks, and only the error path builds messages.

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import NoReturn

__all__ = [
    "ASC_DESCRIPTIONS",
    "RETRY_RULES",
    "AbortedCommand",
    "AcaActive",
    "BlankCheck",
    "BlockLimits",
    "Busy",
    "Capacity",
    "CheckCondition",
    "CodeSet",
    "CopyAborted",
    "DataProtect",
    "Designator",
    "DesignatorAssociation",
    "DesignatorType",
    "DeviceType",
    "HardwareError",
    "IllegalRequest",
    "LbProvisioning",
    "MediumError",
    "MiscompareError",
    "NotReady",
    "Opcode",
    "ProvisioningType",
    "RecoveredError",
    "ReservationConflict",
    "RetryDecision",
    "RetryRule",
    "ScsiError",
    "ScsiParseError",
    "ScsiStatus",
    "Sense",
    "SenseKey",
    "ServiceActionIn16",
    "StandardInquiry",
    "StatusError",
    "TaskAborted",
    "TaskSetFull",
    "UnitAttention",
    "VolumeOverflow",
    "VpdPage",
    "asc_description",
    "cdb_name",
    "decode_lun",
    "decode_sense",
    "describe_sense",
    "encode_lun",
    "error_for_status",
    "inquiry",
    "parse_inquiry",
    "parse_read_capacity10",
    "parse_read_capacity16",
    "parse_report_luns",
    "parse_vpd_block_limits",
    "parse_vpd_device_identification",
    "parse_vpd_lb_provisioning",
    "parse_vpd_supported_pages",
    "parse_vpd_unit_serial",
    "read10",
    "read16",
    "read_capacity10",
    "read_capacity16",
    "read_cdb",
    "report_luns",
    "report_luns_length",
    "retry_decision",
    "synchronize_cache10",
    "synchronize_cache16",
    "test_unit_ready",
    "unmap",
    "unmap_parameter_list",
    "write10",
    "write16",
    "write_cdb",
    "write_same16",
]

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


# --------------------------------------------------------------------------------------------
# Wire codes
# --------------------------------------------------------------------------------------------


class ScsiStatus(IntEnum):
    """SCSI status codes (SAM-5, "Status" clause, table "Status codes")."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class SenseKey(IntEnum):
    """Sense keys (SPC-4 4.5.6 "Sense key and additional sense code definitions").

    All sixteen values are named so that ``SenseKey(byte & 0x0F)`` never fails: 0x0C is the
    obsolete EQUAL, 0x0F is COMPLETED (reserved before SPC-5).
    """

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    EQUAL = 0xC
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF


class Opcode(IntEnum):
    """Operation codes (SPC-4 annex E.3.1 "Operation codes"; SBC-3 clause 5 "Commands for direct
    access block devices"). Those with a builder here, plus common ones named for log lines."""

    TEST_UNIT_READY = 0x00  # SPC-4 6.47 TEST UNIT READY command
    REQUEST_SENSE = 0x03
    READ6 = 0x08
    WRITE6 = 0x0A
    INQUIRY = 0x12  # SPC-4 6.6 INQUIRY command
    MODE_SELECT6 = 0x15
    MODE_SENSE6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY10 = 0x25  # SBC-3 READ CAPACITY (10) command
    READ10 = 0x28  # SBC-3 READ (10) command
    WRITE10 = 0x2A  # SBC-3 WRITE (10) command
    VERIFY10 = 0x2F
    SYNCHRONIZE_CACHE10 = 0x35  # SBC-3 SYNCHRONIZE CACHE (10) command
    WRITE_SAME10 = 0x41
    UNMAP = 0x42  # SBC-3 UNMAP command
    MODE_SELECT10 = 0x55
    MODE_SENSE10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    READ16 = 0x88  # SBC-3 READ (16) command
    COMPARE_AND_WRITE = 0x89
    WRITE16 = 0x8A  # SBC-3 WRITE (16) command
    VERIFY16 = 0x8F
    SYNCHRONIZE_CACHE16 = 0x91  # SBC-3 SYNCHRONIZE CACHE (16) command
    WRITE_SAME16 = 0x93  # SBC-3 WRITE SAME (16) command; NDOB bit from SBC-4
    SERVICE_ACTION_IN16 = 0x9E  # SBC-3: carries READ CAPACITY (16), GET LBA STATUS
    REPORT_LUNS = 0xA0  # SPC-4 6.33 REPORT LUNS command
    MAINTENANCE_IN = 0xA3
    READ12 = 0xA8
    WRITE12 = 0xAA


class ServiceActionIn16(IntEnum):
    """Service actions of SERVICE ACTION IN (16), opcode 0x9E (SBC-3 READ CAPACITY (16) and
    GET LBA STATUS commands)."""

    READ_CAPACITY16 = 0x10
    GET_LBA_STATUS = 0x12


class VpdPage(IntEnum):
    """Vital product data page codes (SPC-4 7.8 "Vital product data parameters"; SBC-3
    "VPD parameters" for the 0xBx pages)."""

    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


class DeviceType(IntEnum):
    """Peripheral device types (SPC-4 6.6.2 "Standard INQUIRY data"; 0x14 from SPC-5). tgtd
    answers STORAGE_ARRAY_CONTROLLER on LUN 0 and DIRECT_ACCESS on its data LUNs. Values
    0x0A, 0x0B and 0x15..0x1D are reserved and have no member: keep raw ints in results."""

    DIRECT_ACCESS = 0x00
    SEQUENTIAL_ACCESS = 0x01
    PRINTER = 0x02
    PROCESSOR = 0x03
    WRITE_ONCE = 0x04
    CD_DVD = 0x05
    SCANNER = 0x06
    OPTICAL_MEMORY = 0x07
    MEDIUM_CHANGER = 0x08
    COMMUNICATIONS = 0x09
    STORAGE_ARRAY_CONTROLLER = 0x0C
    ENCLOSURE_SERVICES = 0x0D
    SIMPLIFIED_DIRECT_ACCESS = 0x0E
    OPTICAL_CARD_READER_WRITER = 0x0F
    BRIDGE_CONTROLLER = 0x10
    OBJECT_STORAGE = 0x11
    AUTOMATION_DRIVE_INTERFACE = 0x12
    SECURITY_MANAGER = 0x13
    HOST_MANAGED_ZONED = 0x14
    WELL_KNOWN_LU = 0x1E
    UNKNOWN = 0x1F


class CodeSet(IntEnum):
    """CODE SET of a designation descriptor (SPC-4 7.8.6 "Device Identification VPD page")."""

    BINARY = 1
    ASCII = 2
    UTF8 = 3


class DesignatorAssociation(IntEnum):
    """ASSOCIATION of a designation descriptor (SPC-4 7.8.6)."""

    LOGICAL_UNIT = 0
    TARGET_PORT = 1
    TARGET_DEVICE = 2


class DesignatorType(IntEnum):
    """DESIGNATOR TYPE of a designation descriptor (SPC-4 7.8.6)."""

    VENDOR_SPECIFIC = 0x0
    T10_VENDOR_ID = 0x1
    EUI64 = 0x2
    NAA = 0x3
    RELATIVE_TARGET_PORT = 0x4
    TARGET_PORT_GROUP = 0x5
    LOGICAL_UNIT_GROUP = 0x6
    MD5_LOGICAL_UNIT = 0x7
    SCSI_NAME_STRING = 0x8
    PROTOCOL_SPECIFIC_PORT = 0x9
    UUID = 0xA


class ProvisioningType(IntEnum):
    """PROVISIONING TYPE of the SBC-3 "Logical Block Provisioning VPD page"."""

    FULL = 0  # fully provisioned, or not reported
    RESOURCE = 1
    THIN = 2


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ScsiError(Exception):
    """Base of every SCSI-level failure: a command that did not end GOOD, or target data that
    does not parse. Not an errno: fs.py translates at the edge."""


class ScsiParseError(ScsiError):
    """The target returned data (parameter data, sense data, a LUN) this layer cannot read."""


# --------------------------------------------------------------------------------------------
# CDB builders
# --------------------------------------------------------------------------------------------
# Precompiled layouts; "x" pads reserved bytes. Field order: opcode, flags byte, ..., control.
_CDB6 = struct.Struct(">BBBHB")  # opcode, byte1, byte2, 16-bit length, control (INQUIRY)
_CDB10_RW = struct.Struct(">BBIBHB")  # opcode, flags, LBA32, group, length16, control
_CDB16_RW = struct.Struct(">BBQIBB")  # opcode, flags, LBA64, length32, group, control
_CDB_RC16 = struct.Struct(">BBQIBB")  # opcode, service action, LBA64, alloc32, PMI, control
_CDB_REPORT_LUNS = struct.Struct(">BxBxxxIxB")  # opcode, select report, alloc32, control
_CDB_UNMAP = struct.Struct(">BB4xBHB")  # opcode, anchor, group, param list len16, control
_UNMAP_HEADER = struct.Struct(">HH4x")  # unmap data length, block descriptor data length
_UNMAP_DESCRIPTOR = struct.Struct(">QI4x")  # LBA64, number of logical blocks32

_pack10 = _CDB10_RW.pack
_pack16 = _CDB16_RW.pack

_TEST_UNIT_READY = bytes(6)
_READ_CAPACITY10 = bytes([Opcode.READ_CAPACITY10]) + bytes(9)

_FUA = 0x08  # SBC-3: byte 1 bit 3 of READ/WRITE (10)/(16)
_IMMED = 0x02  # SBC-3: byte 1 bit 1 of SYNCHRONIZE CACHE
_WS_ANCHOR = 0x10
_WS_UNMAP = 0x08
_WS_NDOB = 0x01

# An UNMAP parameter list carries at most this many descriptors: its length is a 16-bit field.
MAX_UNMAP_DESCRIPTORS = (_U16 - _UNMAP_HEADER.size) // _UNMAP_DESCRIPTOR.size


def _check(cmd: str, name: str, value: object, limit: int, low: int = 0) -> int:
    """Range-check one argument; raise a one-line TypeError/ValueError naming it."""
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{cmd}: {name} must be an int, not {type(value).__name__}") from None
    if not low <= v <= limit:
        raise ValueError(f"{cmd}: {name}={v} out of range {low}..{limit}")
    return v


def _refused(cmd: str, *checks: tuple[str, object, int]) -> NoReturn:
    """Error path of a builder whose struct.pack refused an argument: say which one."""
    for name, value, limit in checks:
        _check(cmd, name, value, limit)
    raise ValueError(f"{cmd}: arguments out of range")  # not reached for int arguments


def test_unit_ready() -> bytes:
    """TEST UNIT READY (SPC-4 6.47): six zero bytes."""
    return _TEST_UNIT_READY


test_unit_ready.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function


def inquiry(evpd: bool = False, page: int = 0, alloc_len: int = 255) -> bytes:
    """INQUIRY (SPC-4 6.6). With ``evpd`` the VPD ``page`` is asked for; without it ``page``
    must be 0 (the target would answer ILLEGAL REQUEST, INVALID FIELD IN CDB). The default
    allocation length of 255 also suits pre-SPC-3 targets that read only its low byte."""
    if not evpd and page != 0:
        raise ValueError(f"INQUIRY: page={page!r} requires evpd=True")
    try:
        return _CDB6.pack(Opcode.INQUIRY, 1 if evpd else 0, page, alloc_len, 0)
    except struct.error:
        _refused("INQUIRY", ("page", page, _U8), ("alloc_len", alloc_len, _U16))


def report_luns(alloc_len: int = 4096, select_report: int = 0) -> bytes:
    """REPORT LUNS (SPC-4 6.33). SPC-4 lets a target refuse an allocation length below 16, so
    it is refused here. If the list is longer than ``alloc_len``, re-issue with
    ``report_luns_length(data)``."""
    if isinstance(alloc_len, int) and 0 <= alloc_len < 16:
        raise ValueError(f"REPORT LUNS: alloc_len={alloc_len} below the minimum of 16")
    try:
        return _CDB_REPORT_LUNS.pack(Opcode.REPORT_LUNS, select_report, alloc_len, 0)
    except struct.error:
        _refused("REPORT LUNS", ("select_report", select_report, _U8),
                 ("alloc_len", alloc_len, _U32))


def read_capacity10() -> bytes:
    """READ CAPACITY (10) (SBC-3) with LBA 0 and PMI 0: the capacity of the whole LU."""
    return _READ_CAPACITY10


def read_capacity16(alloc_len: int = 32) -> bytes:
    """READ CAPACITY (16) (SBC-3): SERVICE ACTION IN (16) / 0x10, LBA 0, PMI 0."""
    try:
        return _CDB_RC16.pack(Opcode.SERVICE_ACTION_IN16, ServiceActionIn16.READ_CAPACITY16,
                              0, alloc_len, 0, 0)
    except struct.error:
        _refused("READ CAPACITY(16)", ("alloc_len", alloc_len, _U32))


def read10(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    """READ (10) (SBC-3): 32-bit LBA, 16-bit transfer length (0 transfers nothing)."""
    try:
        return _pack10(0x28, _FUA if fua else 0, lba, 0, blocks, 0)
    except struct.error:
        _refused("READ(10)", ("lba", lba, _U32), ("blocks", blocks, _U16))


def read16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    """READ (16) (SBC-3): 64-bit LBA, 32-bit transfer length."""
    try:
        return _pack16(0x88, _FUA if fua else 0, lba, blocks, 0, 0)
    except struct.error:
        _refused("READ(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


def write10(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    """WRITE (10) (SBC-3): 32-bit LBA, 16-bit transfer length."""
    try:
        return _pack10(0x2A, _FUA if fua else 0, lba, 0, blocks, 0)
    except struct.error:
        _refused("WRITE(10)", ("lba", lba, _U32), ("blocks", blocks, _U16))


def write16(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    """WRITE (16) (SBC-3): 64-bit LBA, 32-bit transfer length."""
    try:
        return _pack16(0x8A, _FUA if fua else 0, lba, blocks, 0, 0)
    except struct.error:
        _refused("WRITE(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


def read_cdb(lba: int, blocks: int, fua: bool = False) -> bytes:
    """READ (10) when the whole transfer ends within 32-bit LBAs and fits 16 bits of length,
    else READ (16). The end, not just the start, must fit: a target doing READ (10) arithmetic
    in 32 bits would wrap (the Linux sd driver draws the same line)."""
    if blocks <= _U16 and lba + blocks <= 0x1_0000_0000:
        try:
            return _pack10(0x28, _FUA if fua else 0, lba, 0, blocks, 0)
        except struct.error:
            _refused("READ(10)", ("lba", lba, _U32), ("blocks", blocks, _U16))
    try:
        return _pack16(0x88, _FUA if fua else 0, lba, blocks, 0, 0)
    except struct.error:
        _refused("READ(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


def write_cdb(lba: int, blocks: int, fua: bool = False) -> bytes:
    """WRITE (10) or WRITE (16), chosen as in read_cdb."""
    if blocks <= _U16 and lba + blocks <= 0x1_0000_0000:
        try:
            return _pack10(0x2A, _FUA if fua else 0, lba, 0, blocks, 0)
        except struct.error:
            _refused("WRITE(10)", ("lba", lba, _U32), ("blocks", blocks, _U16))
    try:
        return _pack16(0x8A, _FUA if fua else 0, lba, blocks, 0, 0)
    except struct.error:
        _refused("WRITE(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


def synchronize_cache10(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE (10) (SBC-3). blocks=0 means from ``lba`` to the last LBA."""
    try:
        return _pack10(0x35, _IMMED if immed else 0, lba, 0, blocks, 0)
    except struct.error:
        _refused("SYNCHRONIZE CACHE(10)", ("lba", lba, _U32), ("blocks", blocks, _U16))


def synchronize_cache16(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE (16) (SBC-3). blocks=0 means from ``lba`` to the last LBA."""
    try:
        return _pack16(0x91, _IMMED if immed else 0, lba, blocks, 0, 0)
    except struct.error:
        _refused("SYNCHRONIZE CACHE(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


def unmap(param_list_len: int, *, anchor: bool = False) -> bytes:
    """UNMAP (SBC-3); the data-out buffer is ``unmap_parameter_list(...)``."""
    try:
        return _CDB_UNMAP.pack(Opcode.UNMAP, 1 if anchor else 0, 0, param_list_len, 0)
    except struct.error:
        _refused("UNMAP", ("param_list_len", param_list_len, _U16))


def unmap_parameter_list(ranges: Sequence[tuple[int, int]]) -> bytes:
    """UNMAP parameter list (SBC-3 "UNMAP parameter list"): an 8-byte header, then one 16-byte block
    descriptor (LBA, number of logical blocks) per range, in the order given."""
    n = len(ranges)
    if n > MAX_UNMAP_DESCRIPTORS:
        raise ValueError(f"UNMAP: {n} ranges exceed the {MAX_UNMAP_DESCRIPTORS} one list holds")
    size = _UNMAP_HEADER.size + n * _UNMAP_DESCRIPTOR.size
    out = bytearray(size)
    _UNMAP_HEADER.pack_into(out, 0, size - 2, n * _UNMAP_DESCRIPTOR.size)
    offset = _UNMAP_HEADER.size
    pack_into = _UNMAP_DESCRIPTOR.pack_into
    for lba, count in ranges:
        try:
            pack_into(out, offset, lba, count)
        except struct.error:
            _refused("UNMAP descriptor", ("lba", lba, _U64), ("blocks", count, _U32))
        offset += _UNMAP_DESCRIPTOR.size
    return bytes(out)


def write_same16(
    lba: int, blocks: int, *, unmap: bool = False, anchor: bool = False, ndob: bool = False
) -> bytes:
    """WRITE SAME (16) (SBC-3; NDOB "no data-out buffer" from SBC-4).

    ``blocks`` must be at least 1: 0 asks the target to write to the end of the medium, which
    no caller of this block layer means. ANCHOR is only valid together with UNMAP (SBC-3)."""
    if anchor and not unmap:
        raise ValueError("WRITE SAME(16): anchor=True requires unmap=True")
    if isinstance(blocks, int) and blocks == 0:
        raise ValueError("WRITE SAME(16): blocks=0 would mean 'to the end of the medium'")
    flags = (_WS_ANCHOR if anchor else 0) | (_WS_UNMAP if unmap else 0) | (_WS_NDOB if ndob else 0)
    try:
        return _pack16(0x93, flags, lba, blocks, 0, 0)
    except struct.error:
        _refused("WRITE SAME(16)", ("lba", lba, _U64), ("blocks", blocks, _U32))


_OPCODE_NAMES: Mapping[int, str] = MappingProxyType({
    0x00: "TEST UNIT READY",
    0x03: "REQUEST SENSE",
    0x08: "READ(6)",
    0x0A: "WRITE(6)",
    0x12: "INQUIRY",
    0x15: "MODE SELECT(6)",
    0x1A: "MODE SENSE(6)",
    0x1B: "START STOP UNIT",
    0x1E: "PREVENT ALLOW MEDIUM REMOVAL",
    0x25: "READ CAPACITY(10)",
    0x28: "READ(10)",
    0x2A: "WRITE(10)",
    0x2F: "VERIFY(10)",
    0x35: "SYNCHRONIZE CACHE(10)",
    0x41: "WRITE SAME(10)",
    0x42: "UNMAP",
    0x55: "MODE SELECT(10)",
    0x5A: "MODE SENSE(10)",
    0x5E: "PERSISTENT RESERVE IN",
    0x5F: "PERSISTENT RESERVE OUT",
    0x88: "READ(16)",
    0x89: "COMPARE AND WRITE",
    0x8A: "WRITE(16)",
    0x8F: "VERIFY(16)",
    0x91: "SYNCHRONIZE CACHE(16)",
    0x93: "WRITE SAME(16)",
    0x9E: "SERVICE ACTION IN(16)",
    0xA0: "REPORT LUNS",
    0xA3: "MAINTENANCE IN",
    0xA8: "READ(12)",
    0xAA: "WRITE(12)",
})
_SAI16_NAMES: Mapping[int, str] = MappingProxyType({
    0x10: "READ CAPACITY(16)",
    0x12: "GET LBA STATUS",
})


def cdb_name(cdb: bytes) -> str:
    """A short name of a CDB for log lines: "READ(16)", "INQUIRY VPD 0xB0". Never raises."""
    if not cdb:
        return "EMPTY CDB"
    op = cdb[0]
    if op == 0x9E and len(cdb) > 1:
        sa = cdb[1] & 0x1F
        return _SAI16_NAMES.get(sa) or f"SERVICE ACTION IN(16)/0x{sa:02X}"
    if op == 0x12 and len(cdb) > 2 and cdb[1] & 1:
        return f"INQUIRY VPD 0x{cdb[2]:02X}"
    return _OPCODE_NAMES.get(op) or f"OPCODE 0x{op:02X}"


# --------------------------------------------------------------------------------------------
# LUN addressing (SAM-5 4.7)
# --------------------------------------------------------------------------------------------
_LUN_LOWER_LEVELS = (1 << 48) - 1  # bytes 2..7 of a single-level LUN: zero


def encode_lun(n: int) -> int:
    """The 64-bit LUN field (big-endian, as an int) of a single-level LUN (SAM-5 4.7):
    peripheral device addressing (method 00b, bus 0) for n < 256, flat space addressing
    (method 01b) for n < 16384, as the Linux and libiscsi initiators encode them."""
    n = _check("LUN", "n", n, 16383)
    if n < 256:
        return n << 48
    return (0x4000 | n) << 48


def decode_lun(field: int) -> int:
    """The LUN number of a 64-bit LUN field (SAM-5 4.7): peripheral device addressing with bus
    identifier 0, or flat space addressing, at the first level and nothing below it. Other
    addressing methods (logical unit, extended, well-known LUNs) and multi-level LUNs raise
    ScsiParseError: this initiator cannot address them."""
    if not isinstance(field, int) or not 0 <= field <= _U64:
        raise ScsiParseError(f"LUN field {field!r} is not a 64-bit unsigned value")
    method = field >> 62
    if field & _LUN_LOWER_LEVELS:
        raise ScsiParseError(f"LUN 0x{field:016X} is multi-level; only single-level is supported")
    if method == 0:
        bus = (field >> 56) & 0x3F
        if bus:
            raise ScsiParseError(f"LUN 0x{field:016X} addresses bus {bus}; only bus 0 is supported")
        return (field >> 48) & 0xFF
    if method == 1:
        return (field >> 48) & 0x3FFF
    what = "logical unit" if method == 2 else "extended"
    raise ScsiParseError(f"LUN 0x{field:016X} uses {what} addressing, which is not supported")


# --------------------------------------------------------------------------------------------
# Parsers of parameter data
# --------------------------------------------------------------------------------------------
# Allocation length truncation is normal in SCSI: a parser reads the length field of the data,
# keeps min(declared, received) bytes, and reads fields beyond that as zero, which the standard
# defines as "not reported" for every field read that way here. Only data too short to carry
# the fields that define it (a header, an LBA) raises ScsiParseError.


def _ascii(raw: bytes) -> str:
    """SPC-4 ASCII data field: printable ASCII, space padded; stray bytes must not raise."""
    return raw.decode("ascii", "replace").strip(" \x00")


@dataclass(frozen=True, slots=True, kw_only=True)
class StandardInquiry:
    """Standard INQUIRY data (SPC-4 6.6.2). Strings are stripped of padding."""

    peripheral_qualifier: int
    device_type: int
    removable: bool
    lu_cong: bool
    version: int
    normaca: bool
    hisup: bool
    response_data_format: int
    additional_length: int
    sccs: bool
    acc: bool
    tpgs: int
    three_pc: bool
    protect: bool
    encserv: bool
    multip: bool
    cmdque: bool
    vendor: str
    product: str
    revision: str
    version_descriptors: tuple[int, ...]

    @property
    def present(self) -> bool:
        """Peripheral qualifier 000b: a device of this type is connected to this LU."""
        return self.peripheral_qualifier == 0


_INQUIRY_FIXED = struct.Struct(">BBBBBBBB8s16s4s")  # bytes 0..35
_INQUIRY_VERSIONS = struct.Struct(">8H")  # bytes 58..73


def parse_inquiry(data: bytes) -> StandardInquiry:
    """Parse standard INQUIRY data (SPC-4 6.6.2). Needs the 5-byte header; shorter (truncated)
    data yields empty strings and cleared flags for what it does not reach."""
    data = bytes(data)
    if len(data) < 5:
        raise ScsiParseError(f"INQUIRY data of {len(data)} bytes lacks the 5-byte header")
    n = min(len(data), 5 + data[4])
    body = data[:n].ljust(74, b"\0")
    b0, b1, b2, b3, b4, b5, b6, b7, vendor, product, revision = _INQUIRY_FIXED.unpack_from(body)
    versions = _INQUIRY_VERSIONS.unpack_from(body, 58)
    return StandardInquiry(
        peripheral_qualifier=b0 >> 5,
        device_type=b0 & 0x1F,
        removable=bool(b1 & 0x80),
        lu_cong=bool(b1 & 0x40),
        version=b2,
        normaca=bool(b3 & 0x20),
        hisup=bool(b3 & 0x10),
        response_data_format=b3 & 0x0F,
        additional_length=b4,
        sccs=bool(b5 & 0x80),
        acc=bool(b5 & 0x40),
        tpgs=(b5 >> 4) & 0x03,
        three_pc=bool(b5 & 0x08),
        protect=bool(b5 & 0x01),
        encserv=bool(b6 & 0x40),
        multip=bool(b6 & 0x10),
        cmdque=bool(b7 & 0x02),
        vendor=_ascii(vendor),
        product=_ascii(product),
        revision=_ascii(revision),
        version_descriptors=tuple(v for v in versions if v),
    )


def _vpd_body(data: bytes, page: int) -> bytes:
    """The page-length-bounded body of a VPD page (SPC-4 7.8.1), checking the page code."""
    data = bytes(data)
    if len(data) < 4:
        raise ScsiParseError(f"VPD page 0x{page:02X} of {len(data)} bytes lacks the 4-byte header")
    if data[1] != page:
        raise ScsiParseError(f"expected VPD page 0x{page:02X}, got page 0x{data[1]:02X}")
    return data[4 : 4 + int.from_bytes(data[2:4], "big")]


def parse_vpd_supported_pages(data: bytes) -> tuple[int, ...]:
    """Supported VPD Pages page 0x00 (SPC-4 7.8.16): the page codes, in the target's order."""
    return tuple(_vpd_body(data, VpdPage.SUPPORTED_PAGES))


def parse_vpd_unit_serial(data: bytes) -> str:
    """Unit Serial Number page 0x80 (SPC-4 7.8.18). tgtd right-aligns it in spaces: stripped."""
    return _ascii(_vpd_body(data, VpdPage.UNIT_SERIAL_NUMBER))


@dataclass(frozen=True, slots=True, kw_only=True)
class Designator:
    """One designation descriptor of the Device Identification page (SPC-4 7.8.6)."""

    protocol_identifier: int
    code_set: int
    piv: bool
    association: int
    designator_type: int
    value: bytes

    @property
    def text(self) -> str:
        """The value for display: ASCII/UTF-8 decoded and stripped, binary in hex."""
        if self.code_set == CodeSet.ASCII:
            return _ascii(self.value)
        if self.code_set == CodeSet.UTF8:
            return self.value.decode("utf-8", "replace").strip(" \x00")
        return self.value.hex()


def parse_vpd_device_identification(data: bytes) -> tuple[Designator, ...]:
    """Device Identification page 0x83 (SPC-4 7.8.6). A descriptor cut off by the page end or
    by allocation length truncation is left out; the whole ones before it are returned."""
    body = _vpd_body(data, VpdPage.DEVICE_IDENTIFICATION)
    out: list[Designator] = []
    pos = 0
    while pos + 4 <= len(body):
        b0, b1, length = body[pos], body[pos + 1], body[pos + 3]
        end = pos + 4 + length
        if end > len(body):
            break
        out.append(Designator(
            protocol_identifier=b0 >> 4,
            code_set=b0 & 0x0F,
            piv=bool(b1 & 0x80),
            association=(b1 >> 4) & 0x03,
            designator_type=b1 & 0x0F,
            value=body[pos + 4 : end],
        ))
        pos = end
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockLimits:
    """Block Limits VPD page 0xB0 (SBC-3 "Block Limits VPD page"). Lengths are in logical blocks; 0 means "not
    reported" (for the unmap counts: UNMAP not supported). ``unmap_granularity_alignment`` is
    None when UGAVALID is clear."""

    wsnz: bool
    max_compare_and_write_length: int
    optimal_transfer_length_granularity: int
    max_transfer_length: int
    optimal_transfer_length: int
    max_prefetch_length: int
    max_unmap_lba_count: int
    max_unmap_descriptor_count: int
    optimal_unmap_granularity: int
    unmap_granularity_alignment: int | None
    max_write_same_length: int


_BLOCK_LIMITS = struct.Struct(">BBHIIIIIIIQ")  # page bytes 4..43


def parse_vpd_block_limits(data: bytes) -> BlockLimits:
    """Block Limits VPD page 0xB0 (SBC-3). Early targets return the 0x0C-byte page
    without the unmap fields; those then read as 0 (not supported), as SBC-3 intends."""
    body = _vpd_body(data, VpdPage.BLOCK_LIMITS).ljust(_BLOCK_LIMITS.size, b"\0")
    (b4, mcawl, otlg, mtl, otl, mpl, mulc, mudc, oug, uga, mwsl) = _BLOCK_LIMITS.unpack_from(body)
    return BlockLimits(
        wsnz=bool(b4 & 0x01),
        max_compare_and_write_length=mcawl,
        optimal_transfer_length_granularity=otlg,
        max_transfer_length=mtl,
        optimal_transfer_length=otl,
        max_prefetch_length=mpl,
        max_unmap_lba_count=mulc,
        max_unmap_descriptor_count=mudc,
        optimal_unmap_granularity=oug,
        unmap_granularity_alignment=(uga & 0x7FFF_FFFF) if uga & 0x8000_0000 else None,
        max_write_same_length=mwsl,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LbProvisioning:
    """Logical Block Provisioning VPD page 0xB2 (SBC-3). ``lbprz`` is bit 2 of byte 5:
    SBC-3's LBPRZ bit and the low bit of SBC-4's 3-bit LBPRZ field, set in both when unmapped
    blocks read as zeros (the Linux sd driver reads it the same way)."""

    threshold_exponent: int
    lbpu: bool
    lbpws: bool
    lbpws10: bool
    lbprz: bool
    anc_sup: bool
    dp: bool
    minimum_percentage: int
    provisioning_type: int
    threshold_percentage: int


def parse_vpd_lb_provisioning(data: bytes) -> LbProvisioning:
    """Logical Block Provisioning VPD page 0xB2 (SBC-3); missing bytes read as 0."""
    body = _vpd_body(data, VpdPage.LOGICAL_BLOCK_PROVISIONING).ljust(4, b"\0")
    b5, b6 = body[1], body[2]
    return LbProvisioning(
        threshold_exponent=body[0],
        lbpu=bool(b5 & 0x80),
        lbpws=bool(b5 & 0x40),
        lbpws10=bool(b5 & 0x20),
        lbprz=bool(b5 & 0x04),
        anc_sup=bool(b5 & 0x02),
        dp=bool(b5 & 0x01),
        minimum_percentage=b6 >> 3,
        provisioning_type=b6 & 0x07,
        threshold_percentage=body[3],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """READ CAPACITY (10) / (16) parameter data (SBC-3). READ CAPACITY (10) leaves the provisioning
    and alignment fields at their defaults."""

    last_lba: int
    block_size: int
    lbpme: bool = False
    lbprz: bool = False
    lbppbe: int = 0  # logical blocks per physical block exponent
    lowest_aligned_lba: int = 0
    prot_en: bool = False
    p_type: int = 0

    @property
    def num_blocks(self) -> int:
        return self.last_lba + 1

    @property
    def size_bytes(self) -> int:
        return (self.last_lba + 1) * self.block_size

    @property
    def physical_block_size(self) -> int:
        return self.block_size << self.lbppbe

    @property
    def needs_read_capacity16(self) -> bool:
        """READ CAPACITY (10) answers 0xFFFFFFFF when the last LBA does not fit 32 bits."""
        return self.last_lba >= _U32


_RC10 = struct.Struct(">II")
_RC16 = struct.Struct(">QIBBH")  # LBA, block length, P_TYPE|PROT_EN, P_I_EXP|LBPPBE, LBPME..


def parse_read_capacity10(data: bytes) -> Capacity:
    """READ CAPACITY (10) parameter data (SBC-3): 8 bytes, trailing bytes ignored."""
    data = bytes(data)
    if len(data) < _RC10.size:
        raise ScsiParseError(f"READ CAPACITY(10) data of {len(data)} bytes, need 8")
    last_lba, block_size = _RC10.unpack_from(data)
    if block_size == 0:
        raise ScsiParseError("READ CAPACITY(10) reports a block length of 0")
    return Capacity(last_lba=last_lba, block_size=block_size)


def parse_read_capacity16(data: bytes) -> Capacity:
    """READ CAPACITY (16) parameter data (SBC-3). Needs the LBA and block length
    (12 bytes); fields beyond a truncation read as 0."""
    data = bytes(data)
    if len(data) < 12:
        raise ScsiParseError(f"READ CAPACITY(16) data of {len(data)} bytes, need at least 12")
    last_lba, block_size, b12, b13, b14 = _RC16.unpack_from(data[:16].ljust(16, b"\0"))
    if block_size == 0:
        raise ScsiParseError("READ CAPACITY(16) reports a block length of 0")
    return Capacity(
        last_lba=last_lba,
        block_size=block_size,
        lbpme=bool(b14 & 0x8000),
        lbprz=bool(b14 & 0x4000),
        lbppbe=b13 & 0x0F,
        lowest_aligned_lba=b14 & 0x3FFF,
        prot_en=bool(b12 & 0x01),
        p_type=(b12 >> 1) & 0x07,
    )


def report_luns_length(data: bytes) -> int:
    """The allocation length REPORT LUNS needs for the whole list (SPC-4 6.33): if it is
    larger than the one used, the list was truncated and the command should be re-issued."""
    if len(data) < 4:
        raise ScsiParseError(f"REPORT LUNS data of {len(data)} bytes lacks the LUN list length")
    return 8 + int.from_bytes(data[:4], "big")


def parse_report_luns(data: bytes) -> tuple[int, ...]:
    """REPORT LUNS parameter data (SPC-4 6.33): the LUN numbers of the whole 8-byte entries
    received, each decoded by decode_lun (an unsupported addressing method raises)."""
    data = bytes(data)
    if len(data) < 8:
        raise ScsiParseError(f"REPORT LUNS data of {len(data)} bytes lacks the 8-byte header")
    end = 8 + min(len(data) - 8, int.from_bytes(data[:4], "big"))
    return tuple(
        decode_lun(int.from_bytes(data[pos : pos + 8], "big"))
        for pos in range(8, end - 7, 8)
    )


# --------------------------------------------------------------------------------------------
# Sense data (SPC-4 4.5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Sense:
    """Decoded sense data, fixed (SPC-4 4.5.3) or descriptor (SPC-4 4.5.2) format.

    ``information`` and ``command_specific`` are None when the data does not carry them or
    marks them not valid. ``descriptors`` holds (type, whole descriptor) pairs of descriptor
    format data. ``raw`` is the sense data as received (without iSCSI's SenseLength prefix).
    """

    response_code: int
    sense_key: SenseKey
    asc: int
    ascq: int
    valid: bool
    information: int | None
    command_specific: int | None
    sksv: bool
    sense_key_specific: bytes | None
    fru: int
    filemark: bool
    eom: bool
    ili: bool
    descriptors: tuple[tuple[int, bytes], ...]
    raw: bytes

    @property
    def current(self) -> bool:
        return self.response_code in (0x70, 0x72)

    @property
    def deferred(self) -> bool:
        return self.response_code in (0x71, 0x73)

    @property
    def descriptor_format(self) -> bool:
        return self.response_code >= 0x72


def decode_sense(data: bytes) -> Sense:
    """Decode sense data (SPC-4 4.5). Truncated sense data is normal (the SENSE LENGTH of the
    carrying protocol, or the ADDITIONAL SENSE LENGTH, may cut it): fields it does not reach
    read as 0/None, like the Linux scsi_normalize_sense. Raises ScsiParseError for empty data,
    a response code other than 0x70..0x73, or data too short to hold the sense key."""
    raw = bytes(data)
    if not raw:
        raise ScsiParseError("empty sense data")
    code = raw[0] & 0x7F
    if code in (0x70, 0x71):
        return _decode_fixed(code, raw)
    if code in (0x72, 0x73):
        return _decode_descriptor(code, raw)
    raise ScsiParseError(f"sense data response code 0x{code:02X} is not 0x70..0x73")


def _decode_fixed(code: int, raw: bytes) -> Sense:
    if len(raw) < 3:
        raise ScsiParseError(f"fixed format sense data of {len(raw)} bytes lacks the sense key")
    d = raw[: 8 + raw[7]] if len(raw) >= 8 else raw
    n = len(d)
    valid = bool(d[0] & 0x80) and n >= 7
    sksv = n >= 18 and bool(d[15] & 0x80)
    return Sense(
        response_code=code,
        sense_key=SenseKey(d[2] & 0x0F),
        asc=d[12] if n > 12 else 0,
        ascq=d[13] if n > 13 else 0,
        valid=valid,
        information=int.from_bytes(d[3:7], "big") if valid else None,
        command_specific=int.from_bytes(d[8:12], "big") if n >= 12 else None,
        sksv=sksv,
        sense_key_specific=d[15:18] if sksv else None,
        fru=d[14] if n > 14 else 0,
        filemark=bool(d[2] & 0x80),
        eom=bool(d[2] & 0x40),
        ili=bool(d[2] & 0x20),
        descriptors=(),
        raw=raw,
    )


# Sense data descriptor types (SPC-4 4.5.2.1, table "Sense data descriptor types").
_DESC_INFORMATION = 0x00
_DESC_COMMAND_SPECIFIC = 0x01
_DESC_SENSE_KEY_SPECIFIC = 0x02
_DESC_FRU = 0x03
_DESC_STREAM = 0x04
_DESC_BLOCK = 0x05


def _decode_descriptor(code: int, raw: bytes) -> Sense:
    if len(raw) < 2:
        raise ScsiParseError(f"descriptor format sense data of {len(raw)} bytes lacks the sense key")
    d = raw[: 8 + raw[7]] if len(raw) >= 8 else raw
    information = command_specific = sks = None
    fru = 0
    filemark = eom = ili = False
    descriptors: list[tuple[int, bytes]] = []
    pos = 8
    while pos + 2 <= len(d):  # whole descriptors only; a cut-off one is dropped
        dtype, end = d[pos], pos + 2 + d[pos + 1]
        if end > len(d):
            break
        desc = d[pos:end]
        descriptors.append((dtype, desc))
        size = len(desc)
        if dtype == _DESC_INFORMATION and size >= 12 and desc[2] & 0x80:
            information = int.from_bytes(desc[4:12], "big")  # SPC-4 4.5.2.2, VALID set
        elif dtype == _DESC_COMMAND_SPECIFIC and size >= 12:
            command_specific = int.from_bytes(desc[4:12], "big")
        elif dtype == _DESC_SENSE_KEY_SPECIFIC and size >= 7 and desc[4] & 0x80:
            sks = desc[4:7]  # SPC-4 4.5.2.4: SKSV and the 3-byte field start at byte 4
        elif dtype == _DESC_FRU and size >= 4:
            fru = desc[3]
        elif dtype == _DESC_STREAM and size >= 4:  # SSC: FILEMARK, EOM, ILI in byte 3
            filemark, eom = bool(desc[3] & 0x80), bool(desc[3] & 0x40)
            ili = ili or bool(desc[3] & 0x20)
        elif dtype == _DESC_BLOCK and size >= 4:  # SBC: ILI in byte 3
            ili = ili or bool(desc[3] & 0x20)
        pos = end
    return Sense(
        response_code=code,
        sense_key=SenseKey(d[1] & 0x0F),
        asc=d[2] if len(d) > 2 else 0,
        ascq=d[3] if len(d) > 3 else 0,
        valid=information is not None,
        information=information,
        command_specific=command_specific,
        sksv=sks is not None,
        sense_key_specific=sks,
        fru=fru,
        filemark=filemark,
        eom=eom,
        ili=ili,
        descriptors=tuple(descriptors),
        raw=raw,
    )


# ASC/ASCQ descriptions, worded as in SPC-4 annex D "Additional sense codes" (T10 asc-num.txt).
ASC_DESCRIPTIONS: Mapping[tuple[int, int], str] = MappingProxyType({
    (0x00, 0x00): "NO ADDITIONAL SENSE INFORMATION",
    (0x00, 0x06): "I/O PROCESS TERMINATED",
    (0x03, 0x00): "PERIPHERAL DEVICE WRITE FAULT",
    (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x04, 0x02): "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    (0x04, 0x03): "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    (0x04, 0x04): "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS",
    (0x04, 0x07): "LOGICAL UNIT NOT READY, OPERATION IN PROGRESS",
    (0x04, 0x09): "LOGICAL UNIT NOT READY, SELF-TEST IN PROGRESS",
    (0x04, 0x0A): "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    (0x04, 0x0B): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    (0x04, 0x0C): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    (0x04, 0x11): "LOGICAL UNIT NOT READY, NOTIFY (ENABLE SPINUP) REQUIRED",
    (0x05, 0x00): "LOGICAL UNIT DOES NOT RESPOND TO SELECTION",
    (0x08, 0x00): "LOGICAL UNIT COMMUNICATION FAILURE",
    (0x0C, 0x00): "WRITE ERROR",
    (0x10, 0x01): "LOGICAL BLOCK GUARD CHECK FAILED",
    (0x10, 0x02): "LOGICAL BLOCK APPLICATION TAG CHECK FAILED",
    (0x10, 0x03): "LOGICAL BLOCK REFERENCE TAG CHECK FAILED",
    (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR",
    (0x1D, 0x00): "MISCOMPARE DURING VERIFY OPERATION",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x26, 0x01): "PARAMETER NOT SUPPORTED",
    (0x26, 0x02): "PARAMETER VALUE INVALID",
    (0x27, 0x00): "WRITE PROTECTED",
    (0x27, 0x07): "SPACE ALLOCATION FAILED WRITE PROTECT",
    (0x28, 0x00): "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x02): "SCSI BUS RESET OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x04): "DEVICE INTERNAL RESET",
    (0x29, 0x05): "TRANSCEIVER MODE CHANGED TO SINGLE-ENDED",
    (0x29, 0x06): "TRANSCEIVER MODE CHANGED TO LVD",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x00): "PARAMETERS CHANGED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x02): "LOG PARAMETERS CHANGED",
    (0x2A, 0x03): "RESERVATIONS PREEMPTED",
    (0x2A, 0x04): "RESERVATIONS RELEASED",
    (0x2A, 0x05): "REGISTRATIONS PREEMPTED",
    (0x2A, 0x06): "ASYMMETRIC ACCESS STATE CHANGED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x2C, 0x00): "COMMAND SEQUENCE ERROR",
    (0x2F, 0x00): "COMMANDS CLEARED BY ANOTHER INITIATOR",
    (0x31, 0x00): "MEDIUM FORMAT CORRUPTED",
    (0x38, 0x07): "THIN PROVISIONING SOFT THRESHOLD REACHED",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x3E, 0x00): "LOGICAL UNIT HAS NOT SELF-CONFIGURED YET",
    (0x3E, 0x01): "LOGICAL UNIT FAILURE",
    (0x3E, 0x02): "TIMEOUT ON LOGICAL UNIT",
    (0x3E, 0x03): "LOGICAL UNIT FAILED SELF-TEST",
    (0x3F, 0x00): "TARGET OPERATING CONDITIONS HAVE CHANGED",
    (0x3F, 0x01): "MICROCODE HAS BEEN CHANGED",
    (0x3F, 0x03): "INQUIRY DATA HAS CHANGED",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE",
    (0x47, 0x00): "SCSI PARITY ERROR",
    (0x49, 0x00): "INVALID MESSAGE ERROR",
    (0x4B, 0x00): "DATA PHASE ERROR",
    (0x4E, 0x00): "OVERLAPPED COMMANDS ATTEMPTED",
    (0x55, 0x03): "INSUFFICIENT RESOURCES",
    (0x5D, 0x00): "FAILURE PREDICTION THRESHOLD EXCEEDED",
})


def asc_description(asc: int, ascq: int) -> str:
    """The SPC-4 wording of an ASC/ASCQ pair; generic wording for unlisted pairs."""
    text = ASC_DESCRIPTIONS.get((asc, ascq))
    if text is not None:
        return text
    if asc == 0x40 and ascq:
        return f"DIAGNOSTIC FAILURE ON COMPONENT {ascq:02X}H"
    if asc >= 0x80 or ascq >= 0x80:
        return "VENDOR SPECIFIC ADDITIONAL SENSE CODE"
    return "UNKNOWN ADDITIONAL SENSE CODE"


def describe_sense(sense: Sense) -> str:
    """One line, e.g. "UNIT ATTENTION: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00)"."""
    key = sense.sense_key.name.replace("_", " ")
    prefix = "DEFERRED " if sense.deferred else ""
    desc = asc_description(sense.asc, sense.ascq)
    return f"{prefix}{key}: {desc} ({sense.asc:02X}/{sense.ascq:02X})"


# --------------------------------------------------------------------------------------------
# Command outcome errors
# --------------------------------------------------------------------------------------------


class CheckCondition(ScsiError):
    """The command ended CHECK CONDITION. ``sense`` is None when the target sent no sense data
    or sense data that does not decode (then ``raw_sense`` holds what came)."""

    status: int = ScsiStatus.CHECK_CONDITION

    def __init__(self, sense: Sense | None, raw_sense: bytes = b"", detail: str = "") -> None:
        self.sense = sense
        self.raw_sense = sense.raw if sense is not None else raw_sense
        if sense is not None:
            message = describe_sense(sense)
        elif detail:
            message = f"CHECK CONDITION with unreadable sense data: {detail}"
        else:
            message = "CHECK CONDITION without sense data"
        super().__init__(message)

    @property
    def sense_key(self) -> SenseKey | None:
        return self.sense.sense_key if self.sense is not None else None

    @property
    def asc(self) -> int | None:
        return self.sense.asc if self.sense is not None else None

    @property
    def ascq(self) -> int | None:
        return self.sense.ascq if self.sense is not None else None


class RecoveredError(CheckCondition):
    """RECOVERED ERROR: the command completed after recovery; the caller may treat it as GOOD."""


class NotReady(CheckCondition):
    """NOT READY: the LU cannot be accessed now (04/01 becoming ready is worth a retry)."""


class MediumError(CheckCondition):
    """MEDIUM ERROR: unrecovered read (11/00) or write (0C/00) error."""


class HardwareError(CheckCondition):
    """HARDWARE ERROR: a non-recoverable target fault."""


class IllegalRequest(CheckCondition):
    """ILLEGAL REQUEST: bad opcode, field, LBA out of range, unsupported LU: our request."""


class UnitAttention(CheckCondition):
    """UNIT ATTENTION: the target reports an event (reset, LUN inventory change, capacity
    change); the command was not executed and should be retried."""

    @property
    def luns_changed(self) -> bool:
        """REPORTED LUNS DATA HAS CHANGED (3F/0E): re-run REPORT LUNS."""
        return self.asc == 0x3F and self.ascq == 0x0E

    @property
    def reset_occurred(self) -> bool:
        """POWER ON, RESET, OR ... (29/xx); tgtd answers the first command of a session so."""
        return self.asc == 0x29

    @property
    def capacity_changed(self) -> bool:
        """CAPACITY DATA HAS CHANGED (2A/09): re-read the capacity."""
        return self.asc == 0x2A and self.ascq == 0x09


class DataProtect(CheckCondition):
    """DATA PROTECT: write protected (27/xx) or otherwise not permitted."""


class BlankCheck(CheckCondition):
    """BLANK CHECK."""


class CopyAborted(CheckCondition):
    """COPY ABORTED."""


class AbortedCommand(CheckCondition):
    """ABORTED COMMAND: the target aborted it; a retry may succeed."""


class VolumeOverflow(CheckCondition):
    """VOLUME OVERFLOW."""


class MiscompareError(CheckCondition):
    """MISCOMPARE: COMPARE AND WRITE or VERIFY found different data."""


_ERROR_FOR_SENSE_KEY: Mapping[int, type[CheckCondition]] = MappingProxyType({
    SenseKey.RECOVERED_ERROR: RecoveredError,
    SenseKey.NOT_READY: NotReady,
    SenseKey.MEDIUM_ERROR: MediumError,
    SenseKey.HARDWARE_ERROR: HardwareError,
    SenseKey.ILLEGAL_REQUEST: IllegalRequest,
    SenseKey.UNIT_ATTENTION: UnitAttention,
    SenseKey.DATA_PROTECT: DataProtect,
    SenseKey.BLANK_CHECK: BlankCheck,
    SenseKey.COPY_ABORTED: CopyAborted,
    SenseKey.ABORTED_COMMAND: AbortedCommand,
    SenseKey.VOLUME_OVERFLOW: VolumeOverflow,
    SenseKey.MISCOMPARE: MiscompareError,
})


class StatusError(ScsiError):
    """The command ended with a status other than GOOD, CONDITION MET or CHECK CONDITION.
    Used as is for statuses SAM-5 does not define (``status`` then is a plain int)."""

    def __init__(self, status: int) -> None:
        try:
            self.status: int = ScsiStatus(status)
            name = self.status.name.replace("_", " ")
        except ValueError:
            self.status = status
            name = "UNKNOWN STATUS"
        super().__init__(f"{name} (SCSI status 0x{status:02X})")


class Busy(StatusError):
    """BUSY: the LU cannot accept the command now; retry after a delay."""


class ReservationConflict(StatusError):
    """RESERVATION CONFLICT: another I_T nexus holds a reservation."""


class TaskSetFull(StatusError):
    """TASK SET FULL: the target's queue is full; retry after a delay with fewer in flight."""


class AcaActive(StatusError):
    """ACA ACTIVE: an auto contingent allegiance is in effect."""


class TaskAborted(StatusError):
    """TASK ABORTED: the command was aborted by another I_T nexus or a task management call."""


_ERROR_FOR_STATUS: Mapping[int, type[StatusError]] = MappingProxyType({
    ScsiStatus.BUSY: Busy,
    ScsiStatus.RESERVATION_CONFLICT: ReservationConflict,
    ScsiStatus.TASK_SET_FULL: TaskSetFull,
    ScsiStatus.ACA_ACTIVE: AcaActive,
    ScsiStatus.TASK_ABORTED: TaskAborted,
})


def error_for_status(status: int, sense: bytes | None) -> ScsiError | None:
    """The typed error for a command's SCSI status and sense data (without the iSCSI
    SenseLength prefix), or None for GOOD and CONDITION MET. Never raises: sense data that
    does not decode gives a plain CheckCondition saying so."""
    if status == ScsiStatus.GOOD or status == ScsiStatus.CONDITION_MET:
        return None
    if status == ScsiStatus.CHECK_CONDITION:
        if not sense:
            return CheckCondition(None)
        try:
            decoded = decode_sense(sense)
        except ScsiParseError as exc:
            return CheckCondition(None, raw_sense=bytes(sense), detail=str(exc))
        return _ERROR_FOR_SENSE_KEY.get(decoded.sense_key, CheckCondition)(decoded)
    return _ERROR_FOR_STATUS.get(status, StatusError)(status)


# --------------------------------------------------------------------------------------------
# Retry policy (data; the engine sleeps and re-issues)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRule:
    """Retry up to ``max_retries`` times; the k-th retry (k from 1) waits
    min(first_delay_s * factor ** (k - 1), max_delay_s) seconds."""

    max_retries: int
    first_delay_s: float = 0.0
    factor: float = 2.0
    max_delay_s: float = 0.0

    def decide(self, attempt: int) -> RetryDecision:
        if attempt > self.max_retries:
            return _NO_RETRY
        delay = min(self.first_delay_s * self.factor ** (attempt - 1), self.max_delay_s)
        return RetryDecision(retry=True, delay_s=delay)


_NO_RETRY = RetryDecision(retry=False, delay_s=0.0)

RETRY_RULES: Mapping[str, RetryRule] = MappingProxyType({
    # tgtd answers the first command of every session (and of every LUN) with UA 29/00, and
    # each LUN inventory change with 3F/0E; a burst of events can stack several UAs.
    "unit_attention": RetryRule(max_retries=5),
    # The target is momentarily out of resources: back off, ~2.6 s in all.
    "busy": RetryRule(max_retries=10, first_delay_s=0.01, max_delay_s=0.5),
    "task_set_full": RetryRule(max_retries=10, first_delay_s=0.01, max_delay_s=0.5),
    # Transport hiccups inside the target; protection information errors (ASC 0x10) are not
    # transient and are not retried (as in the Linux SCSI midlayer).
    "aborted_command": RetryRule(max_retries=3),
    # NOT READY 04/01, LOGICAL UNIT IS IN PROCESS OF BECOMING READY: ~7.5 s in all.
    "becoming_ready": RetryRule(max_retries=10, first_delay_s=0.1, max_delay_s=1.0),
})


def _rule_for(error: ScsiError) -> RetryRule | None:
    if isinstance(error, UnitAttention):
        return RETRY_RULES["unit_attention"]
    if isinstance(error, Busy):
        return RETRY_RULES["busy"]
    if isinstance(error, TaskSetFull):
        return RETRY_RULES["task_set_full"]
    if isinstance(error, AbortedCommand) and error.asc != 0x10:
        return RETRY_RULES["aborted_command"]
    if isinstance(error, NotReady) and (error.asc, error.ascq) == (0x04, 0x01):
        return RETRY_RULES["becoming_ready"]
    return None


def retry_decision(error: ScsiError, attempt: int) -> RetryDecision:
    """Whether to re-issue a command that failed with ``error`` on its ``attempt``-th try
    (1 for the first), and after how long. Everything not named in RETRY_RULES is final."""
    if attempt < 1:
        raise ValueError(f"retry_decision: attempt={attempt} must be >= 1")
    rule = _rule_for(error)
    return _NO_RETRY if rule is None else rule.decide(attempt)
