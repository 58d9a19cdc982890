# The iSCSI wire format: every PDU of RFC 7143 section 11 as a frozen dataclass, its encoding
# (basic header segment, additional header segments, data segment, padding, CRC32C digests) and
# an incremental framer that turns received bytes into whole PDUs.
#
# Must not do I/O or keep session state: sequence numbers, tasks and negotiation live in
# connection.py and login.py. The framer is built like asyncio's BufferedProtocol
# (get_buffer / buffer_updated) so that the engine can recv_into memory the framer chooses: the
# payload of a Data-In PDU can land directly in the buffer of the read that asked for it, with no
# copy (the "placer" callback decides where). Layouts are precompiled structs: packing or
# unpacking one header costs about 0.2 us, and the hot path of a session does it per PDU.

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from .digest import DIGEST_LEN, crc32c, digest_value
from .errors import LocalProtocolError, RemoteProtocolError
from .serial import RESERVED_TAG

BHS_LEN = 48
MAX_DATA_SEGMENT = (1 << 24) - 1  # DataSegmentLength is 24 bits (RFC 7143 11.2.1.5)

Buffer = bytes | bytearray | memoryview


class Opcode(IntEnum):
    """PDU opcodes (RFC 7143 section 11.1.1). Initiator opcodes are 0x00-0x1f, target 0x20-0x3f."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class Stage(IntEnum):
    """Login stages for CSG/NSG (RFC 7143 section 11.12.3)."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class TaskAttribute(IntEnum):
    """SCSI task attributes in the SCSI Command PDU (RFC 7143 section 11.3.1)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class TmfFunction(IntEnum):
    """Task management functions (RFC 7143 section 11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(IntEnum):
    """Task management function responses (RFC 7143 section 11.6.1)."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class ScsiResponseCode(IntEnum):
    """iSCSI-level response of the SCSI Response PDU (RFC 7143 section 11.4.3)."""

    COMMAND_COMPLETED = 0x00
    TARGET_FAILURE = 0x01


class LogoutReason(IntEnum):
    """Logout request reason codes (RFC 7143 section 11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    """Logout response codes (RFC 7143 section 11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class SnackType(IntEnum):
    """SNACK types (RFC 7143 section 11.16.1)."""

    DATA_R2T = 0
    STATUS = 1
    DATA_ACK = 2
    RDATA = 3


class AsyncEvent(IntEnum):
    """Asynchronous message events (RFC 7143 section 11.9.1)."""

    SCSI_ASYNC_EVENT = 0
    LOGOUT_REQUEST = 1
    CONNECTION_DROP = 2
    SESSION_DROP = 3
    NEGOTIATION_REQUEST = 4
    TASK_TERMINATION = 5
    VENDOR_SPECIFIC = 255


class RejectReason(IntEnum):
    """Reject reasons (RFC 7143 section 11.17.1)."""

    RESERVED = 0x01
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class AhsType(IntEnum):
    """Additional header segment types (RFC 7143 section 11.2.2.3)."""

    EXTENDED_CDB = 1
    BIDI_READ_LENGTH = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Ahs:
    """One additional header segment. `data` is everything after the AHSType byte, starting
    with the type-specific byte; AHSLength on the wire is len(data)."""

    ahs_type: int
    data: bytes


# Flag bits of byte 1 shared by several PDUs.
F_BIT = 0x80
C_BIT = 0x40
I_BIT = 0x40  # in byte 0: immediate delivery

# SCSI Command flags (RFC 7143 11.3).
CMD_READ = 0x40
CMD_WRITE = 0x20
# SCSI Response / Data-In residual flags (RFC 7143 11.4.5.1, 11.7.5).
FLAG_BIDI_OVERFLOW = 0x10
FLAG_BIDI_UNDERFLOW = 0x08
FLAG_OVERFLOW = 0x04
FLAG_UNDERFLOW = 0x02
DATA_IN_ACK = 0x40
DATA_IN_STATUS = 0x01


def _pad_len(n: int) -> int:
    return -n & 3


# --------------------------------------------------------------------------------------------
# The PDUs. Field order follows the wire. `lun` is the raw 64-bit LUN field (SAM addressing is
# scsi.py's business); tags and sequence numbers are unsigned 32-bit ints.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NopOut:
    """NOP-Out (RFC 7143 section 11.18)."""

    opcode: ClassVar[Opcode] = Opcode.NOP_OUT
    immediate: bool = True
    lun: int = 0
    itt: int
    ttt: int = RESERVED_TAG
    cmdsn: int
    exp_statsn: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScsiCommand:
    """SCSI Command (RFC 7143 section 11.3). `data` is immediate data, `ahs` carries extended
    CDBs and the bidirectional read length."""

    opcode: ClassVar[Opcode] = Opcode.SCSI_COMMAND
    immediate: bool = False
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = TaskAttribute.SIMPLE
    lun: int = 0
    itt: int
    expected_length: int
    cmdsn: int
    exp_statsn: int
    cdb: bytes
    ahs: tuple[Ahs, ...] = ()
    data: Buffer = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMgmtRequest:
    """SCSI Task Management Function Request (RFC 7143 section 11.5)."""

    opcode: ClassVar[Opcode] = Opcode.TASK_MGMT_REQUEST
    immediate: bool = True
    function: int
    lun: int = 0
    itt: int
    referenced_tag: int = RESERVED_TAG
    cmdsn: int
    exp_statsn: int
    ref_cmdsn: int = 0
    exp_datasn: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginRequest:
    """Login Request (RFC 7143 section 11.12). Always immediate."""

    opcode: ClassVar[Opcode] = Opcode.LOGIN_REQUEST
    transit: bool
    cont: bool = False
    csg: int
    nsg: int
    version_max: int = 0
    version_min: int = 0
    isid: bytes
    tsih: int
    itt: int
    cid: int
    cmdsn: int
    exp_statsn: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class TextRequest:
    """Text Request (RFC 7143 section 11.10)."""

    opcode: ClassVar[Opcode] = Opcode.TEXT_REQUEST
    immediate: bool = False
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int
    ttt: int = RESERVED_TAG
    cmdsn: int
    exp_statsn: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataOut:
    """SCSI Data-Out (RFC 7143 section 11.7)."""

    opcode: ClassVar[Opcode] = Opcode.DATA_OUT
    final: bool
    lun: int = 0
    itt: int
    ttt: int = RESERVED_TAG
    exp_statsn: int
    datasn: int
    buffer_offset: int
    data: Buffer = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogoutRequest:
    """Logout Request (RFC 7143 section 11.14)."""

    opcode: ClassVar[Opcode] = Opcode.LOGOUT_REQUEST
    immediate: bool = True
    reason: int = LogoutReason.CLOSE_SESSION
    itt: int
    cid: int = 0
    cmdsn: int
    exp_statsn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnackRequest:
    """SNACK Request (RFC 7143 section 11.16). `ttt` is the SNACK Tag for R-Data SNACK."""

    opcode: ClassVar[Opcode] = Opcode.SNACK_REQUEST
    snack_type: int
    lun: int = 0
    itt: int
    ttt: int = RESERVED_TAG
    exp_statsn: int
    begrun: int
    run_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NopIn:
    """NOP-In (RFC 7143 section 11.19). A TTT other than 0xffffffff asks for a NOP-Out echo."""

    opcode: ClassVar[Opcode] = Opcode.NOP_IN
    lun: int = 0
    itt: int
    ttt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScsiResponse:
    """SCSI Response (RFC 7143 section 11.4). `data` holds SenseLength + sense + response data."""

    opcode: ClassVar[Opcode] = Opcode.SCSI_RESPONSE
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    response: int = ScsiResponseCode.COMMAND_COMPLETED
    status: int
    itt: int
    snack_tag: int = 0
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    exp_datasn: int = 0
    bidi_residual: int = 0
    residual: int = 0
    data: bytes = b""

    @property
    def sense(self) -> bytes:
        """The sense data without its 2-byte SenseLength prefix (empty when there is none)."""
        return sense_from_segment(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMgmtResponse:
    """SCSI Task Management Function Response (RFC 7143 section 11.6)."""

    opcode: ClassVar[Opcode] = Opcode.TASK_MGMT_RESPONSE
    response: int
    itt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginResponse:
    """Login Response (RFC 7143 section 11.13)."""

    opcode: ClassVar[Opcode] = Opcode.LOGIN_RESPONSE
    transit: bool
    cont: bool = False
    csg: int
    nsg: int
    version_max: int = 0
    version_active: int = 0
    isid: bytes
    tsih: int
    itt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    status_class: int
    status_detail: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class TextResponse:
    """Text Response (RFC 7143 section 11.11)."""

    opcode: ClassVar[Opcode] = Opcode.TEXT_RESPONSE
    final: bool
    cont: bool = False
    lun: int = 0
    itt: int
    ttt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataIn:
    """SCSI Data-In (RFC 7143 section 11.7). With `status_present` it also carries the status."""

    opcode: ClassVar[Opcode] = Opcode.DATA_IN
    final: bool
    ack: bool = False
    overflow: bool = False
    underflow: bool = False
    status_present: bool = False
    status: int = 0
    lun: int = 0
    itt: int
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int
    max_cmdsn: int
    datasn: int
    buffer_offset: int
    residual: int = 0
    data: Buffer = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogoutResponse:
    """Logout Response (RFC 7143 section 11.15)."""

    opcode: ClassVar[Opcode] = Opcode.LOGOUT_RESPONSE
    response: int
    itt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    time2wait: int = 0
    time2retain: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class R2T:
    """Ready To Transfer (RFC 7143 section 11.8)."""

    opcode: ClassVar[Opcode] = Opcode.R2T
    lun: int = 0
    itt: int
    ttt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    r2tsn: int
    buffer_offset: int
    desired_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncMessage:
    """Asynchronous Message (RFC 7143 section 11.9). `data` holds SenseLength + sense + event
    data for SCSI asynchronous events."""

    opcode: ClassVar[Opcode] = Opcode.ASYNC_MESSAGE
    lun: int = 0
    itt: int = RESERVED_TAG
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    async_event: int
    async_vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0
    data: bytes = b""

    @property
    def sense(self) -> bytes:
        return sense_from_segment(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """Reject (RFC 7143 section 11.17). `data` is the header of the rejected PDU."""

    opcode: ClassVar[Opcode] = Opcode.REJECT
    reason: int
    itt: int = RESERVED_TAG
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    datasn: int = 0
    data: bytes = b""


InitiatorPdu = (
    NopOut | ScsiCommand | TaskMgmtRequest | LoginRequest | TextRequest | DataOut | LogoutRequest
    | SnackRequest
)
TargetPdu = (
    NopIn | ScsiResponse | TaskMgmtResponse | LoginResponse | TextResponse | DataIn
    | LogoutResponse | R2T | AsyncMessage | Reject
)
Pdu = InitiatorPdu | TargetPdu


def sense_from_segment(data: Buffer) -> bytes:
    """Strip the 2-byte SenseLength of a SCSI Response / Async Message data segment
    (RFC 7143 section 11.4.7). A SenseLength longer than the segment is a protocol error."""
    if len(data) < 2:
        return b""
    n = (data[0] << 8) | data[1]
    if n > len(data) - 2:
        raise RemoteProtocolError(
            f"SenseLength {n} exceeds the {len(data) - 2} bytes of sense data received"
        )
    return bytes(data[2 : 2 + n])


# --------------------------------------------------------------------------------------------
# Header layouts. Each struct covers all 48 bytes of the BHS. The 4 bytes at offset 4 are
# TotalAHSLength (1 byte) and DataSegmentLength (3 bytes), packed together as one int.
# --------------------------------------------------------------------------------------------

S_NOP_OUT = struct.Struct(">BBH I Q I I I I 16x")
S_SCSI_COMMAND = struct.Struct(">BBH I Q I I I I 16s")
S_TMF_REQUEST = struct.Struct(">BBH I Q I I I I I I 8x")
S_LOGIN_REQUEST = struct.Struct(">BBBB I 6s H I H 2x I I 16x")
S_TEXT_REQUEST = S_NOP_OUT
S_DATA_OUT = struct.Struct(">BBH I Q I I 4x I 4x I I 4x")
S_LOGOUT_REQUEST = struct.Struct(">BBH I 8x I H 2x I I 16x")
S_SNACK = struct.Struct(">BBH I Q I I 4x I 8x I I")
S_NOP_IN = struct.Struct(">BBH I Q I I I I I 12x")
S_SCSI_RESPONSE = struct.Struct(">BBBB I 8x I I I I I I I I")
S_TMF_RESPONSE = struct.Struct(">BBBB I 8x I 4x I I I 12x")
S_LOGIN_RESPONSE = struct.Struct(">BBBB I 6s H I 4x I I I BB 10x")
S_TEXT_RESPONSE = S_NOP_IN
S_DATA_IN = struct.Struct(">BBBB I Q I I I I I I I I")
S_LOGOUT_RESPONSE = struct.Struct(">BBBB I 8x I 4x I I I 4x H H 4x")
S_R2T = struct.Struct(">BBH I Q I I I I I I I I")
S_ASYNC = struct.Struct(">BBH I Q I 4x I I I BB H H H 4x")
S_REJECT = struct.Struct(">BBBB I 8x I 4x I I I I 8x")

# Common prefix: opcode byte, flags byte, 2 bytes, then (TotalAHSLength << 24 | DSL).
S_PREFIX = struct.Struct(">BB2xI")
# ITT is at offset 16 in every PDU.
S_ITT = struct.Struct(">16xI")
_LE32 = struct.Struct("<I")
_U16 = struct.Struct(">H")
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

for _s in (
    S_NOP_OUT, S_SCSI_COMMAND, S_TMF_REQUEST, S_LOGIN_REQUEST, S_DATA_OUT, S_LOGOUT_REQUEST,
    S_SNACK, S_NOP_IN, S_SCSI_RESPONSE, S_TMF_RESPONSE, S_LOGIN_RESPONSE, S_DATA_IN,
    S_LOGOUT_RESPONSE, S_R2T, S_ASYNC, S_REJECT,
):
    assert _s.size == BHS_LEN, _s.format


def _lens(ahs_words: int, dsl: int) -> int:
    if ahs_words > 255:
        raise LocalProtocolError(f"{4 * ahs_words} bytes of AHS exceed TotalAHSLength (1020)")
    if dsl > MAX_DATA_SEGMENT:
        raise LocalProtocolError(f"data segment of {dsl} bytes exceeds the 24-bit length field")
    return (ahs_words << 24) | dsl


def _login_flags(transit: bool, cont: bool, csg: int, nsg: int) -> int:
    if not (0 <= csg <= 3 and 0 <= nsg <= 3):
        raise LocalProtocolError(f"login stage out of range: CSG={csg} NSG={nsg}")
    return (F_BIT if transit else 0) | (C_BIT if cont else 0) | (csg << 2) | nsg


def _encode_ahs(ahs: tuple[Ahs, ...]) -> bytes:
    out = bytearray()
    for a in ahs:
        if not 1 <= len(a.data) <= 0xFFFF:
            raise LocalProtocolError(f"AHS data length {len(a.data)} out of range")
        out += _U16.pack(len(a.data))
        out.append(a.ahs_type)
        out += a.data
        out += _ZERO_PAD[len(out) & 3]
    return bytes(out)


def _decode_ahs(raw: bytes) -> tuple[Ahs, ...]:
    out = []
    pos = 0
    while pos < len(raw):
        if pos + 3 > len(raw):
            raise RemoteProtocolError("truncated additional header segment")
        length = (raw[pos] << 8) | raw[pos + 1]
        ahs_type = raw[pos + 2]
        end = pos + 3 + length
        if length == 0 or end > len(raw):
            raise RemoteProtocolError(f"AHS length {length} does not fit TotalAHSLength")
        out.append(Ahs(ahs_type=ahs_type, data=bytes(raw[pos + 3 : end])))
        pos = end + (-(end) & 3)
    return tuple(out)


def encode_header(pdu: Pdu) -> bytes:
    """The BHS followed by any AHS: the bytes the header digest covers."""
    op = type(pdu).opcode
    data_len = len(pdu.data) if hasattr(pdu, "data") else 0
    if op is Opcode.SCSI_COMMAND:
        assert isinstance(pdu, ScsiCommand)
        ahs = _encode_ahs(pdu.ahs)
        cdb = pdu.cdb
        if len(cdb) > 16:
            raise LocalProtocolError("CDBs longer than 16 bytes go in an extended CDB AHS")
        flags = (
            (F_BIT if pdu.final else 0) | (CMD_READ if pdu.read else 0)
            | (CMD_WRITE if pdu.write else 0) | (pdu.attr & 7)
        )
        bhs = S_SCSI_COMMAND.pack(
            op | (I_BIT if pdu.immediate else 0), flags, 0, _lens(len(ahs) // 4, data_len),
            pdu.lun, pdu.itt, pdu.expected_length, pdu.cmdsn, pdu.exp_statsn, cdb,
        )
        return bhs + ahs
    return _ENCODERS[op](pdu, data_len)


def _enc_nop_out(p: NopOut, n: int) -> bytes:
    return S_NOP_OUT.pack(
        p.opcode | (I_BIT if p.immediate else 0), F_BIT, 0, _lens(0, n), p.lun, p.itt, p.ttt,
        p.cmdsn, p.exp_statsn,
    )


def _enc_tmf(p: TaskMgmtRequest, n: int) -> bytes:
    if not 0 <= p.function <= 0x7F:
        raise LocalProtocolError(f"task management function {p.function} out of range")
    return S_TMF_REQUEST.pack(
        p.opcode | (I_BIT if p.immediate else 0), F_BIT | p.function, 0, _lens(0, n), p.lun,
        p.itt, p.referenced_tag, p.cmdsn, p.exp_statsn, p.ref_cmdsn, p.exp_datasn,
    )


def _enc_login_request(p: LoginRequest, n: int) -> bytes:
    if len(p.isid) != 6:
        raise LocalProtocolError("ISID must be 6 bytes")
    return S_LOGIN_REQUEST.pack(
        p.opcode | I_BIT, _login_flags(p.transit, p.cont, p.csg, p.nsg), p.version_max,
        p.version_min, _lens(0, n), p.isid, p.tsih, p.itt, p.cid, p.cmdsn, p.exp_statsn,
    )


def _enc_text_request(p: TextRequest, n: int) -> bytes:
    return S_TEXT_REQUEST.pack(
        p.opcode | (I_BIT if p.immediate else 0),
        (F_BIT if p.final else 0) | (C_BIT if p.cont else 0), 0, _lens(0, n), p.lun, p.itt,
        p.ttt, p.cmdsn, p.exp_statsn,
    )


def _enc_data_out(p: DataOut, n: int) -> bytes:
    return S_DATA_OUT.pack(
        p.opcode, F_BIT if p.final else 0, 0, _lens(0, n), p.lun, p.itt, p.ttt, p.exp_statsn,
        p.datasn, p.buffer_offset,
    )


def _enc_logout_request(p: LogoutRequest, n: int) -> bytes:
    return S_LOGOUT_REQUEST.pack(
        p.opcode | (I_BIT if p.immediate else 0), F_BIT | (p.reason & 0x7F), 0, _lens(0, n),
        p.itt, p.cid, p.cmdsn, p.exp_statsn,
    )


def _enc_snack(p: SnackRequest, n: int) -> bytes:
    return S_SNACK.pack(
        p.opcode, F_BIT | (p.snack_type & 0x0F), 0, _lens(0, n), p.lun, p.itt, p.ttt,
        p.exp_statsn, p.begrun, p.run_length,
    )


def _enc_nop_in(p: NopIn, n: int) -> bytes:
    return S_NOP_IN.pack(
        p.opcode, F_BIT, 0, _lens(0, n), p.lun, p.itt, p.ttt, p.statsn, p.exp_cmdsn, p.max_cmdsn
    )


def _enc_scsi_response(p: ScsiResponse, n: int) -> bytes:
    flags = (
        F_BIT | (FLAG_BIDI_OVERFLOW if p.bidi_overflow else 0)
        | (FLAG_BIDI_UNDERFLOW if p.bidi_underflow else 0)
        | (FLAG_OVERFLOW if p.overflow else 0) | (FLAG_UNDERFLOW if p.underflow else 0)
    )
    return S_SCSI_RESPONSE.pack(
        p.opcode, flags, p.response, p.status, _lens(0, n), p.itt, p.snack_tag, p.statsn,
        p.exp_cmdsn, p.max_cmdsn, p.exp_datasn, p.bidi_residual, p.residual,
    )


def _enc_tmf_response(p: TaskMgmtResponse, n: int) -> bytes:
    return S_TMF_RESPONSE.pack(
        p.opcode, F_BIT, p.response, 0, _lens(0, n), p.itt, p.statsn, p.exp_cmdsn, p.max_cmdsn
    )


def _enc_login_response(p: LoginResponse, n: int) -> bytes:
    if len(p.isid) != 6:
        raise LocalProtocolError("ISID must be 6 bytes")
    return S_LOGIN_RESPONSE.pack(
        p.opcode, _login_flags(p.transit, p.cont, p.csg, p.nsg), p.version_max,
        p.version_active, _lens(0, n), p.isid, p.tsih, p.itt, p.statsn, p.exp_cmdsn,
        p.max_cmdsn, p.status_class, p.status_detail,
    )


def _enc_text_response(p: TextResponse, n: int) -> bytes:
    return S_TEXT_RESPONSE.pack(
        p.opcode, (F_BIT if p.final else 0) | (C_BIT if p.cont else 0), 0, _lens(0, n), p.lun,
        p.itt, p.ttt, p.statsn, p.exp_cmdsn, p.max_cmdsn,
    )


def _enc_data_in(p: DataIn, n: int) -> bytes:
    flags = (
        (F_BIT if p.final else 0) | (DATA_IN_ACK if p.ack else 0)
        | (FLAG_OVERFLOW if p.overflow else 0) | (FLAG_UNDERFLOW if p.underflow else 0)
        | (DATA_IN_STATUS if p.status_present else 0)
    )
    return S_DATA_IN.pack(
        p.opcode, flags, 0, p.status if p.status_present else 0, _lens(0, n), p.lun, p.itt,
        p.ttt, p.statsn, p.exp_cmdsn, p.max_cmdsn, p.datasn, p.buffer_offset, p.residual,
    )


def _enc_logout_response(p: LogoutResponse, n: int) -> bytes:
    return S_LOGOUT_RESPONSE.pack(
        p.opcode, F_BIT, p.response, 0, _lens(0, n), p.itt, p.statsn, p.exp_cmdsn, p.max_cmdsn,
        p.time2wait, p.time2retain,
    )


def _enc_r2t(p: R2T, n: int) -> bytes:
    return S_R2T.pack(
        p.opcode, F_BIT, 0, _lens(0, n), p.lun, p.itt, p.ttt, p.statsn, p.exp_cmdsn,
        p.max_cmdsn, p.r2tsn, p.buffer_offset, p.desired_length,
    )


def _enc_async(p: AsyncMessage, n: int) -> bytes:
    return S_ASYNC.pack(
        p.opcode, F_BIT, 0, _lens(0, n), p.lun, p.itt, p.statsn, p.exp_cmdsn, p.max_cmdsn,
        p.async_event, p.async_vcode, p.parameter1, p.parameter2, p.parameter3,
    )


def _enc_reject(p: Reject, n: int) -> bytes:
    return S_REJECT.pack(
        p.opcode, F_BIT, p.reason, 0, _lens(0, n), p.itt, p.statsn, p.exp_cmdsn, p.max_cmdsn,
        p.datasn,
    )


_ENCODERS: dict[Opcode, Callable[..., bytes]] = {
    Opcode.NOP_OUT: _enc_nop_out,
    Opcode.TASK_MGMT_REQUEST: _enc_tmf,
    Opcode.LOGIN_REQUEST: _enc_login_request,
    Opcode.TEXT_REQUEST: _enc_text_request,
    Opcode.DATA_OUT: _enc_data_out,
    Opcode.LOGOUT_REQUEST: _enc_logout_request,
    Opcode.SNACK_REQUEST: _enc_snack,
    Opcode.NOP_IN: _enc_nop_in,
    Opcode.SCSI_RESPONSE: _enc_scsi_response,
    Opcode.TASK_MGMT_RESPONSE: _enc_tmf_response,
    Opcode.LOGIN_RESPONSE: _enc_login_response,
    Opcode.TEXT_RESPONSE: _enc_text_response,
    Opcode.DATA_IN: _enc_data_in,
    Opcode.LOGOUT_RESPONSE: _enc_logout_response,
    Opcode.R2T: _enc_r2t,
    Opcode.ASYNC_MESSAGE: _enc_async,
    Opcode.REJECT: _enc_reject,
}


def encode_parts(
    pdu: Pdu, *, header_digest: bool = False, data_digest: bool = False
) -> list[Buffer]:
    """The PDU as a list of buffers for a gathering write (sendmsg): header (+ digest), then the
    data segment itself, not copied, then padding (+ digest)."""
    header = encode_header(pdu)
    if header_digest:
        header += _LE32.pack(crc32c(header))
    data: Buffer = getattr(pdu, "data", b"")
    if not data:
        return [header]
    pad = _ZERO_PAD[len(data) & 3]
    if data_digest:
        crc = crc32c(pad, crc32c(data)) if pad else crc32c(data)
        return [header, data, pad + _LE32.pack(crc)]
    return [header, data, pad] if pad else [header, data]


def encode(pdu: Pdu, *, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """The whole PDU as one bytes object."""
    return b"".join(encode_parts(pdu, header_digest=header_digest, data_digest=data_digest))


# --------------------------------------------------------------------------------------------
# Decoding.
# --------------------------------------------------------------------------------------------


def _dec_nop_out(h: Buffer, ahs: bytes, data: Buffer) -> NopOut:
    b0, _f, _, _, lun, itt, ttt, cmdsn, exp_statsn = S_NOP_OUT.unpack_from(h)
    return NopOut(immediate=bool(b0 & I_BIT), lun=lun, itt=itt, ttt=ttt, cmdsn=cmdsn,
                  exp_statsn=exp_statsn, data=bytes(data))


def _dec_scsi_command(h: Buffer, ahs: bytes, data: Buffer) -> ScsiCommand:
    b0, f, _, _, lun, itt, edtl, cmdsn, exp_statsn, cdb = S_SCSI_COMMAND.unpack_from(h)
    return ScsiCommand(
        immediate=bool(b0 & I_BIT), final=bool(f & F_BIT), read=bool(f & CMD_READ),
        write=bool(f & CMD_WRITE), attr=f & 7, lun=lun, itt=itt, expected_length=edtl,
        cmdsn=cmdsn, exp_statsn=exp_statsn, cdb=cdb, ahs=_decode_ahs(ahs), data=bytes(data),
    )


def _dec_tmf(h: Buffer, ahs: bytes, data: Buffer) -> TaskMgmtRequest:
    b0, f, _, _, lun, itt, ref, cmdsn, exp_statsn, ref_cmdsn, exp_datasn = (
        S_TMF_REQUEST.unpack_from(h)
    )
    return TaskMgmtRequest(
        immediate=bool(b0 & I_BIT), function=f & 0x7F, lun=lun, itt=itt, referenced_tag=ref,
        cmdsn=cmdsn, exp_statsn=exp_statsn, ref_cmdsn=ref_cmdsn, exp_datasn=exp_datasn,
    )


def _dec_login_request(h: Buffer, ahs: bytes, data: Buffer) -> LoginRequest:
    _b0, f, vmax, vmin, _, isid, tsih, itt, cid, cmdsn, exp_statsn = (
        S_LOGIN_REQUEST.unpack_from(h)
    )
    return LoginRequest(
        transit=bool(f & F_BIT), cont=bool(f & C_BIT), csg=(f >> 2) & 3, nsg=f & 3,
        version_max=vmax, version_min=vmin, isid=isid, tsih=tsih, itt=itt, cid=cid,
        cmdsn=cmdsn, exp_statsn=exp_statsn, data=bytes(data),
    )


def _dec_text_request(h: Buffer, ahs: bytes, data: Buffer) -> TextRequest:
    b0, f, _, _, lun, itt, ttt, cmdsn, exp_statsn = S_TEXT_REQUEST.unpack_from(h)
    return TextRequest(
        immediate=bool(b0 & I_BIT), final=bool(f & F_BIT), cont=bool(f & C_BIT), lun=lun,
        itt=itt, ttt=ttt, cmdsn=cmdsn, exp_statsn=exp_statsn, data=bytes(data),
    )


def _dec_data_out(h: Buffer, ahs: bytes, data: Buffer) -> DataOut:
    _b0, f, _, _, lun, itt, ttt, exp_statsn, datasn, off = S_DATA_OUT.unpack_from(h)
    return DataOut(final=bool(f & F_BIT), lun=lun, itt=itt, ttt=ttt, exp_statsn=exp_statsn,
                   datasn=datasn, buffer_offset=off, data=data)


def _dec_logout_request(h: Buffer, ahs: bytes, data: Buffer) -> LogoutRequest:
    b0, f, _, _, itt, cid, cmdsn, exp_statsn = S_LOGOUT_REQUEST.unpack_from(h)
    return LogoutRequest(immediate=bool(b0 & I_BIT), reason=f & 0x7F, itt=itt, cid=cid,
                         cmdsn=cmdsn, exp_statsn=exp_statsn)


def _dec_snack(h: Buffer, ahs: bytes, data: Buffer) -> SnackRequest:
    _b0, f, _, _, lun, itt, ttt, exp_statsn, begrun, run = S_SNACK.unpack_from(h)
    return SnackRequest(snack_type=f & 0x0F, lun=lun, itt=itt, ttt=ttt, exp_statsn=exp_statsn,
                        begrun=begrun, run_length=run)


def _dec_nop_in(h: Buffer, ahs: bytes, data: Buffer) -> NopIn:
    _b0, _f, _, _, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn = S_NOP_IN.unpack_from(h)
    return NopIn(lun=lun, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=exp_cmdsn,
                 max_cmdsn=max_cmdsn, data=bytes(data))


def _dec_scsi_response(h: Buffer, ahs: bytes, data: Buffer) -> ScsiResponse:
    (_b0, f, response, status, _, itt, snack_tag, statsn, exp_cmdsn, max_cmdsn, exp_datasn,
     bidi_residual, residual) = S_SCSI_RESPONSE.unpack_from(h)
    return ScsiResponse(
        bidi_overflow=bool(f & FLAG_BIDI_OVERFLOW), bidi_underflow=bool(f & FLAG_BIDI_UNDERFLOW),
        overflow=bool(f & FLAG_OVERFLOW), underflow=bool(f & FLAG_UNDERFLOW),
        response=response, status=status, itt=itt, snack_tag=snack_tag, statsn=statsn,
        exp_cmdsn=exp_cmdsn, max_cmdsn=max_cmdsn, exp_datasn=exp_datasn,
        bidi_residual=bidi_residual, residual=residual, data=bytes(data),
    )


def _dec_tmf_response(h: Buffer, ahs: bytes, data: Buffer) -> TaskMgmtResponse:
    _b0, _f, response, _, _, itt, statsn, exp_cmdsn, max_cmdsn = S_TMF_RESPONSE.unpack_from(h)
    return TaskMgmtResponse(response=response, itt=itt, statsn=statsn, exp_cmdsn=exp_cmdsn,
                            max_cmdsn=max_cmdsn)


def _dec_login_response(h: Buffer, ahs: bytes, data: Buffer) -> LoginResponse:
    (_b0, f, vmax, vact, _, isid, tsih, itt, statsn, exp_cmdsn, max_cmdsn, sclass,
     sdetail) = S_LOGIN_RESPONSE.unpack_from(h)
    return LoginResponse(
        transit=bool(f & F_BIT), cont=bool(f & C_BIT), csg=(f >> 2) & 3, nsg=f & 3,
        version_max=vmax, version_active=vact, isid=isid, tsih=tsih, itt=itt, statsn=statsn,
        exp_cmdsn=exp_cmdsn, max_cmdsn=max_cmdsn, status_class=sclass, status_detail=sdetail,
        data=bytes(data),
    )


def _dec_text_response(h: Buffer, ahs: bytes, data: Buffer) -> TextResponse:
    _b0, f, _, _, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn = S_TEXT_RESPONSE.unpack_from(h)
    return TextResponse(
        final=bool(f & F_BIT), cont=bool(f & C_BIT), lun=lun, itt=itt, ttt=ttt, statsn=statsn,
        exp_cmdsn=exp_cmdsn, max_cmdsn=max_cmdsn, data=bytes(data),
    )


def _dec_data_in(h: Buffer, ahs: bytes, data: Buffer) -> DataIn:
    (_b0, f, _, status, _, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn, datasn, off,
     residual) = S_DATA_IN.unpack_from(h)
    return DataIn(
        final=bool(f & F_BIT), ack=bool(f & DATA_IN_ACK), overflow=bool(f & FLAG_OVERFLOW),
        underflow=bool(f & FLAG_UNDERFLOW), status_present=bool(f & DATA_IN_STATUS),
        status=status, lun=lun, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=exp_cmdsn,
        max_cmdsn=max_cmdsn, datasn=datasn, buffer_offset=off, residual=residual, data=data,
    )


def _dec_logout_response(h: Buffer, ahs: bytes, data: Buffer) -> LogoutResponse:
    (_b0, _f, response, _, _, itt, statsn, exp_cmdsn, max_cmdsn, t2w,
     t2r) = S_LOGOUT_RESPONSE.unpack_from(h)
    return LogoutResponse(response=response, itt=itt, statsn=statsn, exp_cmdsn=exp_cmdsn,
                          max_cmdsn=max_cmdsn, time2wait=t2w, time2retain=t2r)


def _dec_r2t(h: Buffer, ahs: bytes, data: Buffer) -> R2T:
    (_b0, _f, _, _, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn, r2tsn, off,
     length) = S_R2T.unpack_from(h)
    return R2T(lun=lun, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=exp_cmdsn,
               max_cmdsn=max_cmdsn, r2tsn=r2tsn, buffer_offset=off, desired_length=length)


def _dec_async(h: Buffer, ahs: bytes, data: Buffer) -> AsyncMessage:
    (_b0, _f, _, _, lun, itt, statsn, exp_cmdsn, max_cmdsn, event, vcode, p1, p2,
     p3) = S_ASYNC.unpack_from(h)
    return AsyncMessage(
        lun=lun, itt=itt, statsn=statsn, exp_cmdsn=exp_cmdsn, max_cmdsn=max_cmdsn,
        async_event=event, async_vcode=vcode, parameter1=p1, parameter2=p2, parameter3=p3,
        data=bytes(data),
    )


def _dec_reject(h: Buffer, ahs: bytes, data: Buffer) -> Reject:
    _b0, _f, reason, _, _, itt, statsn, exp_cmdsn, max_cmdsn, datasn = S_REJECT.unpack_from(h)
    return Reject(reason=reason, itt=itt, statsn=statsn, exp_cmdsn=exp_cmdsn,
                  max_cmdsn=max_cmdsn, datasn=datasn, data=bytes(data))


_DECODERS: dict[int, Callable[[Buffer, bytes, Buffer], Pdu]] = {
    Opcode.NOP_OUT: _dec_nop_out,
    Opcode.SCSI_COMMAND: _dec_scsi_command,
    Opcode.TASK_MGMT_REQUEST: _dec_tmf,
    Opcode.LOGIN_REQUEST: _dec_login_request,
    Opcode.TEXT_REQUEST: _dec_text_request,
    Opcode.DATA_OUT: _dec_data_out,
    Opcode.LOGOUT_REQUEST: _dec_logout_request,
    Opcode.SNACK_REQUEST: _dec_snack,
    Opcode.NOP_IN: _dec_nop_in,
    Opcode.SCSI_RESPONSE: _dec_scsi_response,
    Opcode.TASK_MGMT_RESPONSE: _dec_tmf_response,
    Opcode.LOGIN_RESPONSE: _dec_login_response,
    Opcode.TEXT_RESPONSE: _dec_text_response,
    Opcode.DATA_IN: _dec_data_in,
    Opcode.LOGOUT_RESPONSE: _dec_logout_response,
    Opcode.R2T: _dec_r2t,
    Opcode.ASYNC_MESSAGE: _dec_async,
    Opcode.REJECT: _dec_reject,
}

#: PDUs that must have no data segment (RFC 7143 section 11).
_NO_DATA = frozenset({
    Opcode.TASK_MGMT_REQUEST, Opcode.LOGOUT_REQUEST, Opcode.SNACK_REQUEST,
    Opcode.TASK_MGMT_RESPONSE, Opcode.LOGOUT_RESPONSE, Opcode.R2T,
})


class Frame:
    """One received PDU before decoding: its BHS, AHS and data segment.

    When the framer's placer gave a destination for the data segment, `data` is that
    destination view (already filled) and `placed` is True. A plain slotted class rather than
    a frozen dataclass: the framer makes one per PDU on the receive path, where a frozen
    dataclass's __init__ costs four times as much. Treat it as immutable.
    """

    __slots__ = ("ahs", "data", "data_digest_ok", "header", "placed")

    def __init__(self, *, header: bytes, ahs: bytes, data: Buffer, placed: bool = False,
                 data_digest_ok: bool = True) -> None:
        self.header = header
        self.ahs = ahs
        self.data = data
        self.placed = placed
        self.data_digest_ok = data_digest_ok

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.header, self.ahs, bytes(self.data), self.placed, self.data_digest_ok) == (
            other.header, other.ahs, bytes(other.data), other.placed, other.data_digest_ok)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Frame(opcode=0x{self.opcode:02x}, itt=0x{self.itt:08x}, "
                f"data={len(self.data)} bytes, placed={self.placed}, "
                f"data_digest_ok={self.data_digest_ok})")

    @property
    def opcode(self) -> int:
        return self.header[0] & 0x3F

    @property
    def itt(self) -> int:
        return S_ITT.unpack_from(self.header)[0]


def decode_frame(frame: Frame) -> Pdu:
    """Decode a frame into its PDU dataclass. Unknown opcodes and data on PDUs that allow
    none are RemoteProtocolErrors."""
    op = frame.opcode
    dec = _DECODERS.get(op)
    if dec is None:
        raise RemoteProtocolError(f"unknown PDU opcode 0x{op:02x}")
    if op in _NO_DATA and len(frame.data):
        raise RemoteProtocolError(
            f"{Opcode(op).name} carries a {len(frame.data)}-byte data segment; none is allowed"
        )
    return dec(frame.header, frame.ahs, frame.data)


def decode(
    wire: Buffer, *, header_digest: bool = False, data_digest: bool = False
) -> Pdu:
    """Decode exactly one whole PDU from wire (trailing bytes are an error)."""
    framer = Framer(header_digest=header_digest, data_digest=data_digest,
                    max_data_segment=MAX_DATA_SEGMENT)
    framer.receive_data(wire)
    frame = framer.next_frame()
    if frame is None:
        raise RemoteProtocolError(f"incomplete PDU ({len(wire)} bytes)")
    if framer.pending_bytes() or framer.next_frame() is not None:
        raise RemoteProtocolError("bytes after the PDU")
    if not frame.data_digest_ok:
        raise RemoteProtocolError("data digest mismatch")
    return decode_frame(frame)


# --------------------------------------------------------------------------------------------
# The framer.
# --------------------------------------------------------------------------------------------


class HeaderDigestError(RemoteProtocolError):
    """A header digest did not match: the PDU's length fields cannot be trusted, so the stream
    is lost (RFC 7143 section 7.8: the connection must be dropped and recovered)."""


#: placer(header) -> a writable view of exactly DataSegmentLength bytes where the data segment
#: should land, or None to let the framer keep it in a buffer of its own.
Placer = Callable[[bytes], memoryview | None]

_HEADER, _DATA_STAGED, _DATA_DIRECT, _TRAILER = range(4)


class Framer:
    """Incremental PDU framer, BufferedProtocol style.

        view = framer.get_buffer()        # recv_into(view)
        framer.buffer_updated(n)
        while (frame := framer.next_frame()) is not None: ...

    Headers and small data segments go through a staging buffer; when a placer gives a
    destination for a data segment, the bytes already staged are copied there and the rest is
    received directly into it. A DataSegmentLength above max_data_segment is refused before any
    of the segment is buffered. Errors are sticky: after one, every call raises it again.
    """

    def __init__(
        self,
        *,
        header_digest: bool = False,
        data_digest: bool = False,
        max_data_segment: int = 8192,
        placer: Placer | None = None,
        on_frame: Callable[[Frame], None] | None = None,
        staging_size: int = 256 * 1024,
        direct_threshold: int = 16 * 1024,
    ) -> None:
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.max_data_segment = max_data_segment
        self.placer = placer
        # With on_frame, each frame is handed over the moment it is complete, before the next
        # header is parsed: the placer's decision for PDU n+1 may depend on PDU n's handling.
        self.on_frame = on_frame
        self._staging = bytearray(max(staging_size, 4096))
        self._sview = memoryview(self._staging)
        self._start = 0  # first unparsed byte in staging
        self._end = 0  # end of received bytes in staging
        self._state = _HEADER
        self._direct_threshold = direct_threshold
        self._frames: list[Frame] = []
        self._error: Exception | None = None
        # State of the PDU being received.
        self._header = b""
        self._ahs = b""
        self._dsl = 0
        self._dest: memoryview | None = None
        self._owned: bytearray | None = None
        self._filled = 0
        # After a large data segment another one is likely (Data-In of a big READ): receive
        # only up to the next header then, so its data goes straight to where it belongs
        # instead of into staging and then copied (the copy cost 7 % of the daemon's time at
        # 1 MiB reads, QD8). Small PDUs keep filling staging, many per recv.
        self._big = False

    # -- the receive side ------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Where the next recv_into should write."""
        if self._error is not None:
            raise self._error
        if self._state == _DATA_DIRECT:
            assert self._dest is not None
            return self._dest[self._filled : self._dsl]
        if self._end == len(self._staging):
            self._compact()
        if self._big:
            state = self._state
            hlen = BHS_LEN + (DIGEST_LEN if self.header_digest else 0)
            if state == _HEADER:
                want = hlen - (self._end - self._start)
            elif state == _TRAILER:  # the padding and digest, and the header after them
                want = (-self._dsl & 3) + (DIGEST_LEN if self.data_digest else 0) + hlen \
                    - (self._end - self._start)
            else:
                want = 0
            if want > 0:
                return self._sview[self._end : self._end + want]
        return self._sview[self._end :]

    def buffer_updated(self, n: int) -> None:
        """n bytes were written into the view get_buffer() returned."""
        if self._error is not None:
            raise self._error
        if n <= 0:
            return
        try:
            if self._state == _DATA_DIRECT:
                self._filled += n
                if self._filled == self._dsl:
                    self._state = _TRAILER
            else:
                self._end += n
            self._parse()
        except Exception as e:
            self._error = e
            raise

    def receive_data(self, data: Buffer) -> None:
        """Copying convenience for tests and slow paths: feed bytes."""
        mv = memoryview(data).cast("B")
        while len(mv):
            buf = self.get_buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)

    def next_frame(self) -> Frame | None:
        if self._frames:
            return self._frames.pop(0)
        if self._error is not None:
            raise self._error
        return None

    def frames(self) -> list[Frame]:
        """All frames completed so far, in order."""
        out, self._frames = self._frames, []
        if not out and self._error is not None:
            raise self._error
        return out

    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a completed frame."""
        staged = self._end - self._start
        if self._state in (_DATA_STAGED, _DATA_DIRECT, _TRAILER):
            hd = DIGEST_LEN if self.header_digest else 0
            return staged + self._filled + len(self._header) + len(self._ahs) + hd
        return staged

    @property
    def at_pdu_boundary(self) -> bool:
        return self._state == _HEADER and self._end == self._start

    def take_unparsed(self) -> bytes:
        """Bytes received after the last whole PDU, handed to the next framer when the stream
        changes framing (login -> full feature phase turns digests on)."""
        if self._state != _HEADER or self._frames:
            raise LocalProtocolError("take_unparsed() in the middle of a PDU")
        out = bytes(self._staging[self._start : self._end])
        self._start = self._end = 0
        return out

    # -- internals -------------------------------------------------------------------------

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._staging[:n] = self._staging[self._start : self._end]
            self._start, self._end = 0, n
        if n == len(self._staging):  # a header larger than staging: grow (bounded by AHS max)
            self._staging.extend(bytes(len(self._staging)))
            self._sview = memoryview(self._staging)

    def _parse(self) -> None:
        staging = self._staging
        while True:
            state = self._state
            if state == _HEADER:
                avail = self._end - self._start
                if avail < BHS_LEN:
                    break
                s = self._start
                ahs_words = staging[s + 4]
                if not ahs_words and not self.header_digest and self._fast_pdu(s, avail):
                    continue
                hlen = BHS_LEN + 4 * ahs_words
                need = hlen + (DIGEST_LEN if self.header_digest else 0)
                if avail < need:
                    if need > len(staging) - s:
                        self._compact()
                    break
                header = bytes(staging[s : s + hlen])
                if self.header_digest:
                    want = digest_value(staging[s + hlen : s + need])
                    got = crc32c(header)
                    if want != got:
                        raise HeaderDigestError(
                            f"header digest mismatch (got 0x{got:08x}, PDU says 0x{want:08x})"
                        )
                self._start = s + need
                dsl = ((staging[s + 5] << 16) | (staging[s + 6] << 8) | staging[s + 7])
                self._header = header[:BHS_LEN]
                self._ahs = header[BHS_LEN:]
                self._dsl = dsl
                self._filled = 0
                self._big = dsl >= self._direct_threshold
                if dsl == 0:
                    self._deliver(Frame(header=self._header, ahs=self._ahs, data=b""))
                    continue
                if dsl > self.max_data_segment:
                    op = header[0] & 0x3F
                    raise RemoteProtocolError(
                        f"data segment of {dsl} bytes (opcode 0x{op:02x}) exceeds the "
                        f"{self.max_data_segment} bytes we declared"
                    )
                dest = self.placer(self._header) if self.placer is not None else None
                if dest is not None:
                    if len(dest) != dsl:
                        raise LocalProtocolError("placer returned a view of the wrong length")
                    self._dest = dest
                    self._owned = None
                else:
                    self._owned = bytearray(dsl)
                    self._dest = memoryview(self._owned)
                self._state = _DATA_STAGED
            elif state == _DATA_STAGED:
                dest = self._dest
                assert dest is not None
                take = min(self._end - self._start, self._dsl - self._filled)
                if take:
                    s = self._start
                    dest[self._filled : self._filled + take] = self._sview[s : s + take]
                    self._start = s + take
                    self._filled += take
                if self._filled == self._dsl:
                    self._state = _TRAILER
                    continue
                # Staging is drained. Receive the rest in place when it is big enough to pay
                # for the extra recv call, else keep staging (small segments batch better).
                if self._dsl - self._filled >= self._direct_threshold:
                    self._state = _DATA_DIRECT
                    self._start = self._end = 0
                break
            elif state == _DATA_DIRECT:
                break
            else:  # _TRAILER: padding and data digest
                dsl = self._dsl
                pad = -dsl & 3
                tlen = pad + (DIGEST_LEN if self.data_digest else 0)
                if self._end - self._start < tlen:
                    if tlen > len(staging) - self._start:
                        self._compact()
                    break
                s = self._start
                self._start = s + tlen
                dest = self._dest
                assert dest is not None
                data_ok = True
                if self.data_digest:
                    crc = crc32c(dest)
                    if pad:
                        crc = crc32c(staging[s : s + pad], crc)
                    data_ok = crc == digest_value(staging[s + pad : s + tlen])
                # A bad data digest is not sticky: the header was good, the stream is still in
                # step, and the connection decides between recovery (ERL 1) and a drop (ERL 0).
                frame = Frame(
                    header=self._header, ahs=self._ahs,
                    data=dest if self._owned is None else bytes(self._owned),
                    placed=self._owned is None, data_digest_ok=data_ok,
                )
                self._dest = None
                self._owned = None
                self._state = _HEADER
                self._deliver(frame)

    def _fast_pdu(self, s: int, avail: int) -> bool:
        """The common case in one step: a PDU without AHS or header digest whose data segment,
        padding and digest are all staged already (small responses, many per recv). Returns
        False, consuming nothing, when the general state machine has to handle it."""
        staging = self._staging
        dsl = (staging[s + 5] << 16) | (staging[s + 6] << 8) | staging[s + 7]
        pad = -dsl & 3
        dd = DIGEST_LEN if (self.data_digest and dsl) else 0
        end = s + BHS_LEN + dsl + pad + dd
        if end - s > avail or dsl > self.max_data_segment:
            return False
        self._big = False
        header = bytes(staging[s : s + BHS_LEN])
        if not dsl:
            self._start = end
            self._deliver(Frame(header=header, ahs=b"", data=b""))
            return True
        dest = self.placer(header) if self.placer is not None else None
        d0 = s + BHS_LEN
        if dest is not None:
            if len(dest) != dsl:
                raise LocalProtocolError("placer returned a view of the wrong length")
            dest[:] = self._sview[d0 : d0 + dsl]
            data: Buffer = dest
        else:
            data = bytes(staging[d0 : d0 + dsl])
        ok = True
        if dd:
            crc = crc32c(self._sview[d0 : d0 + dsl + pad])
            ok = crc == digest_value(staging[end - DIGEST_LEN : end])
        self._start = end
        self._deliver(Frame(header=header, ahs=b"", data=data, placed=dest is not None,
                            data_digest_ok=ok))
        return True

    def _deliver(self, frame: Frame) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)
        else:
            self._frames.append(frame)
