# Tests of iscsifs/proto/pdu.py: golden byte tables for every PDU of RFC 7143 section 11, the
# framer (whole, byte by byte, split at every position, trailing bytes, digests, padding, the
# placer that receives data segments in place) and hypothesis properties.
#
# Every golden byte string below was written by hand from the field diagrams of RFC 7143
# section 11 (one comment per 4-byte word), never produced by the encoder. Digests are checked
# against a bit-at-a-time CRC32C written here from the polynomial, and the CRC itself against
# the vectors of RFC 7143 appendix B.4 (see test_digest.py).

from __future__ import annotations

import re
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsifs.proto import pdu as P
from iscsifs.proto.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.proto.pdu import (
    R2T,
    Ahs,
    AhsType,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    Frame,
    Framer,
    HeaderDigestError,
    LoginRequest,
    LoginResponse,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Opcode,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    SnackType,
    TaskAttribute,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
    TmfResponse,
    decode,
    decode_frame,
    encode,
    encode_header,
    encode_parts,
    sense_from_segment,
)

from .test_digest import reference_crc32c


def h(text: str) -> bytes:
    """Hex with '#' comments and any whitespace."""
    return bytes.fromhex(re.sub(r"#[^\n]*", "", text).replace(" ", "").replace("\n", ""))


LUN1 = 0x0001_0000_0000_0000  # LUN 1, single level peripheral addressing (SAM)
LUN2 = 0x0002_0000_0000_0000
ISID = bytes.fromhex("23456789abcd")

# --------------------------------------------------------------------------------------------
# Golden PDUs. Each entry: (pdu, wire bytes, header length = BHS + AHS).
# --------------------------------------------------------------------------------------------

NOP_OUT = NopOut(
    immediate=True, lun=LUN1, itt=0x0A0B0C0D, ttt=0xFFFFFFFF, cmdsn=0x10, exp_statsn=0x20,
    data=b"ping",
)
NOP_OUT_WIRE = h("""
    40 80 00 00  # 11.18 NOP-Out: I | opcode 0x00; F; reserved
    00 00 00 04  # TotalAHSLength 0; DataSegmentLength 4
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    0a 0b 0c 0d  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag (none)
    00 00 00 10  # CmdSN
    00 00 00 20  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    70 69 6e 67  # ping data "ping" (no padding)
""")

# The SCSI Read PDU of RFC 7143 appendix B.4 (its header digest is 56 3a 96 d9).
SCSI_READ_B4 = ScsiCommand(
    immediate=False, final=True, read=True, write=False, attr=TaskAttribute.UNTAGGED, lun=0,
    itt=0x14000000, expected_length=0x400, cmdsn=0x14, exp_statsn=0x18,
    cdb=bytes.fromhex("28000000000000000200000000000000"),
)
SCSI_READ_B4_WIRE = h("""
    01 c0 00 00  # 11.3 SCSI Command: opcode 0x01; F | R, ATTR 0 untagged; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    14 00 00 00  # Initiator Task Tag
    00 00 04 00  # Expected Data Transfer Length 1024
    00 00 00 14  # CmdSN
    00 00 00 18  # ExpStatSN
    28 00 00 00  # CDB
    00 00 00 00  # CDB
    02 00 00 00  # CDB
    00 00 00 00  # CDB
""")

SCSI_READ10 = ScsiCommand(
    immediate=False, final=True, read=True, attr=TaskAttribute.SIMPLE, lun=LUN1,
    itt=0x12345678, expected_length=0x1000, cmdsn=0x101, exp_statsn=0x202,
    cdb=bytes.fromhex("28000000001000000800000000000000"),
)
SCSI_READ10_WIRE = h("""
    01 c1 00 00  # 11.3 SCSI Command: opcode 0x01; F | R, ATTR 1 simple; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    12 34 56 78  # Initiator Task Tag
    00 00 10 00  # Expected Data Transfer Length 4096
    00 00 01 01  # CmdSN
    00 00 02 02  # ExpStatSN
    28 00 00 00  # CDB: READ(10), LBA 0x10
    00 10 00 00  # CDB
    08 00 00 00  # CDB: 8 blocks
    00 00 00 00  # CDB
""")

# Bidirectional command with a 32-byte CDB: an extended CDB AHS (11.2.2.4) and a bidirectional
# read data length AHS (11.2.2.5), plus 3 bytes of immediate data.
CDB32 = bytes([0x7F, *range(1, 32)])
SCSI_EXT_BIDI = ScsiCommand(
    immediate=False, final=True, read=True, write=True, attr=TaskAttribute.ORDERED, lun=LUN1,
    itt=0x0000ABCD, expected_length=3, cmdsn=7, exp_statsn=9, cdb=CDB32[:16],
    ahs=(
        Ahs(ahs_type=AhsType.EXTENDED_CDB, data=b"\0" + CDB32[16:]),
        # reserved byte, then the 4-byte bidirectional read length
        Ahs(ahs_type=AhsType.BIDI_READ_LENGTH, data=bytes.fromhex("00 00000400")),
    ),
    data=b"xyz",
)
SCSI_EXT_BIDI_WIRE = h("""
    01 e2 00 00  # 11.3 SCSI Command: opcode 0x01; F | R | W, ATTR 2 ordered; reserved
    07 00 00 03  # TotalAHSLength 7 words; DataSegmentLength 3
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 ab cd  # Initiator Task Tag
    00 00 00 03  # Expected Data Transfer Length 3
    00 00 00 07  # CmdSN
    00 00 00 09  # ExpStatSN
    7f 01 02 03  # CDB bytes 0-15
    04 05 06 07  # CDB
    08 09 0a 0b  # CDB
    0c 0d 0e 0f  # CDB
    00 11 01 00  # AHS: AHSLength 17 (CDB length - 15), AHSType 1 extended CDB, reserved
    10 11 12 13  # extended CDB: CDB bytes 16-31
    14 15 16 17  # extended CDB
    18 19 1a 1b  # extended CDB
    1c 1d 1e 1f  # extended CDB (ends on a word: no AHS padding)
    00 05 02 00  # AHS: AHSLength 5, AHSType 2 bidirectional read length, reserved
    00 00 04 00  # Bidirectional Read Expected Data Transfer Length 1024
    78 79 7a 00  # immediate data "xyz"; 1 pad byte
""")

TMF_REQUEST = TaskMgmtRequest(
    immediate=True, function=TmfFunction.ABORT_TASK, lun=LUN2, itt=0x00000AAA,
    referenced_tag=0x12345678, cmdsn=0x33, exp_statsn=0x44, ref_cmdsn=0x30, exp_datasn=5,
)
TMF_REQUEST_WIRE = h("""
    42 81 00 00  # 11.5 Task Management Request: I | opcode 0x02; F | function 1 ABORT TASK
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 02 00 00  # LUN
    00 00 00 00  # LUN
    00 00 0a aa  # Initiator Task Tag
    12 34 56 78  # Referenced Task Tag
    00 00 00 33  # CmdSN
    00 00 00 44  # ExpStatSN
    00 00 00 30  # RefCmdSN
    00 00 00 05  # ExpDataSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
""")

TMF_RESPONSE = TaskMgmtResponse(
    response=TmfResponse.TASK_DOES_NOT_EXIST, itt=0x00000AAA, statsn=0x55, exp_cmdsn=0x34,
    max_cmdsn=0x53,
)
TMF_RESPONSE_WIRE = h("""
    22 80 01 00  # 11.6 Task Management Response: opcode 0x22; F; Response 1; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 0a aa  # Initiator Task Tag
    00 00 00 00  # reserved
    00 00 00 55  # StatSN
    00 00 00 34  # ExpCmdSN
    00 00 00 53  # MaxCmdSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
""")

LOGIN_REQUEST = LoginRequest(
    transit=True, cont=False, csg=1, nsg=3, version_max=0, version_min=0, isid=ISID,
    tsih=0x0102, itt=0x0A000001, cid=3, cmdsn=0x10, exp_statsn=0x20,
    data=b"HeaderDigest=None\0",
)
LOGIN_REQUEST_WIRE = h("""
    43 87 00 00  # 11.12 Login Request: I | opcode 0x03; T, CSG 1, NSG 3; Version-max, -min 0
    00 00 00 12  # TotalAHSLength 0; DataSegmentLength 18
    23 45 67 89  # ISID
    ab cd 01 02  # ISID; TSIH 0x0102
    0a 00 00 01  # Initiator Task Tag
    00 03 00 00  # CID 3; reserved
    00 00 00 10  # CmdSN
    00 00 00 20  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    48 65 61 64  # "Head"
    65 72 44 69  # "erDi"
    67 65 73 74  # "gest"
    3d 4e 6f 6e  # "=Non"
    65 00 00 00  # "e" NUL; 2 pad bytes
""")

LOGIN_RESPONSE = LoginResponse(
    transit=False, cont=False, csg=0, nsg=0, version_max=0, version_active=0, isid=ISID,
    tsih=0, itt=0x0A000001, statsn=0x30, exp_cmdsn=0x10, max_cmdsn=0x11, status_class=1,
    status_detail=1, data=b"TargetAddress=127.0.0.2:3260,1\0",
)
LOGIN_RESPONSE_WIRE = h("""
    23 00 00 00  # 11.13 Login Response: opcode 0x23; T 0, CSG 0, NSG 0; Version-max, -active 0
    00 00 00 1f  # TotalAHSLength 0; DataSegmentLength 31
    23 45 67 89  # ISID
    ab cd 00 00  # ISID; TSIH 0
    0a 00 00 01  # Initiator Task Tag
    00 00 00 00  # reserved
    00 00 00 30  # StatSN
    00 00 00 10  # ExpCmdSN
    00 00 00 11  # MaxCmdSN
    01 01 00 00  # Status-Class 1 redirection, Status-Detail 1 moved temporarily; reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    54 61 72 67  # "Targ"
    65 74 41 64  # "etAd"
    64 72 65 73  # "dres"
    73 3d 31 32  # "s=12"
    37 2e 30 2e  # "7.0."
    30 2e 32 3a  # "0.2:"
    33 32 36 30  # "3260"
    2c 31 00 00  # ",1" NUL; 1 pad byte
""")

TEXT_REQUEST = TextRequest(
    immediate=False, final=True, cont=False, lun=0, itt=0x00000BBB, ttt=0xFFFFFFFF,
    cmdsn=0x21, exp_statsn=0x31, data=b"SendTargets=All\0",
)
TEXT_REQUEST_WIRE = h("""
    04 80 00 00  # 11.10 Text Request: opcode 0x04; F; reserved
    00 00 00 10  # TotalAHSLength 0; DataSegmentLength 16
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    00 00 0b bb  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag
    00 00 00 21  # CmdSN
    00 00 00 31  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    53 65 6e 64  # "Send"
    54 61 72 67  # "Targ"
    65 74 73 3d  # "ets="
    41 6c 6c 00  # "All" NUL
""")

TEXT_RESPONSE = TextResponse(
    final=False, cont=True, lun=0, itt=0x00000BBB, ttt=0x00000777, statsn=0x31,
    exp_cmdsn=0x22, max_cmdsn=0x41, data=b"TargetName=iqn.a:b\0",
)
TEXT_RESPONSE_WIRE = h("""
    24 40 00 00  # 11.11 Text Response: opcode 0x24; C (continued), F 0; reserved
    00 00 00 13  # TotalAHSLength 0; DataSegmentLength 19
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    00 00 0b bb  # Initiator Task Tag
    00 00 07 77  # Target Transfer Tag
    00 00 00 31  # StatSN
    00 00 00 22  # ExpCmdSN
    00 00 00 41  # MaxCmdSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    54 61 72 67  # "Targ"
    65 74 4e 61  # "etNa"
    6d 65 3d 69  # "me=i"
    71 6e 2e 61  # "qn.a"
    3a 62 00 00  # ":b" NUL; 1 pad byte
""")

DATA_OUT = DataOut(
    final=True, lun=LUN1, itt=0x0000CCCC, ttt=0x00000777, exp_statsn=0x40, datasn=2,
    buffer_offset=0x2000, data=bytes(range(1, 9)),
)
DATA_OUT_WIRE = h("""
    05 80 00 00  # 11.7 SCSI Data-Out: opcode 0x05; F; reserved
    00 00 00 08  # TotalAHSLength 0; DataSegmentLength 8
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 cc cc  # Initiator Task Tag
    00 00 07 77  # Target Transfer Tag
    00 00 00 00  # reserved
    00 00 00 40  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 02  # DataSN
    00 00 20 00  # Buffer Offset
    00 00 00 00  # reserved
    01 02 03 04  # data
    05 06 07 08  # data
""")

DATA_IN = DataIn(
    final=False, lun=LUN1, itt=0x0000DDDD, ttt=0xFFFFFFFF, statsn=0, exp_cmdsn=0x50,
    max_cmdsn=0x6F, datasn=3, buffer_offset=0x1000, data=b"hello",
)
DATA_IN_WIRE = h("""
    25 00 00 00  # 11.7 SCSI Data-In: opcode 0x25; no flags; reserved; Status 0 (S not set)
    00 00 00 05  # TotalAHSLength 0; DataSegmentLength 5
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 dd dd  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag
    00 00 00 00  # StatSN (reserved without S)
    00 00 00 50  # ExpCmdSN
    00 00 00 6f  # MaxCmdSN
    00 00 00 03  # DataSN
    00 00 10 00  # Buffer Offset
    00 00 00 00  # Residual Count
    68 65 6c 6c  # "hell"
    6f 00 00 00  # "o"; 3 pad bytes
""")

DATA_IN_STATUS = DataIn(
    final=True, underflow=True, status_present=True, status=0x04, lun=LUN1, itt=0x0000DDDD,
    ttt=0xFFFFFFFF, statsn=0x61, exp_cmdsn=0x51, max_cmdsn=0x70, datasn=4,
    buffer_offset=0x1005, residual=0x200, data=bytes.fromhex("aabbccddeeff"),
)
DATA_IN_STATUS_WIRE = h("""
    25 83 00 04  # 11.7 SCSI Data-In: opcode 0x25; F | U | S; reserved; Status 4 CONDITION MET
    00 00 00 06  # TotalAHSLength 0; DataSegmentLength 6
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 dd dd  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag
    00 00 00 61  # StatSN
    00 00 00 51  # ExpCmdSN
    00 00 00 70  # MaxCmdSN
    00 00 00 04  # DataSN
    00 00 10 05  # Buffer Offset
    00 00 02 00  # Residual Count
    aa bb cc dd  # data
    ee ff 00 00  # data; 2 pad bytes
""")

LOGOUT_REQUEST = LogoutRequest(
    immediate=True, reason=LogoutReason.CLOSE_CONNECTION, itt=0x0000EEEE, cid=3, cmdsn=0x60,
    exp_statsn=0x62,
)
LOGOUT_REQUEST_WIRE = h("""
    46 81 00 00  # 11.14 Logout Request: I | opcode 0x06; F | reason 1 close connection
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 ee ee  # Initiator Task Tag
    00 03 00 00  # CID 3; reserved
    00 00 00 60  # CmdSN
    00 00 00 62  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
""")

LOGOUT_RESPONSE = LogoutResponse(
    response=LogoutResponseCode.CID_NOT_FOUND, itt=0x0000EEEE, statsn=0x62, exp_cmdsn=0x61,
    max_cmdsn=0x80, time2wait=2, time2retain=20,
)
LOGOUT_RESPONSE_WIRE = h("""
    26 80 01 00  # 11.15 Logout Response: opcode 0x26; F; Response 1 CID not found; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 ee ee  # Initiator Task Tag
    00 00 00 00  # reserved
    00 00 00 62  # StatSN
    00 00 00 61  # ExpCmdSN
    00 00 00 80  # MaxCmdSN
    00 00 00 00  # reserved
    00 02 00 14  # Time2Wait 2; Time2Retain 20
    00 00 00 00  # reserved
""")

SNACK_DATA = SnackRequest(
    snack_type=SnackType.DATA_R2T, lun=LUN1, itt=0x0000DDDD, ttt=0xFFFFFFFF, exp_statsn=0x70,
    begrun=3, run_length=2,
)
SNACK_DATA_WIRE = h("""
    10 80 00 00  # 11.16 SNACK Request: opcode 0x10; F | Type 0 Data/R2T; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 dd dd  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag / SNACK Tag
    00 00 00 00  # reserved
    00 00 00 70  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 03  # BegRun
    00 00 00 02  # RunLength
""")

SNACK_STATUS = SnackRequest(
    snack_type=SnackType.STATUS, lun=0, itt=0xFFFFFFFF, ttt=0xFFFFFFFF, exp_statsn=0x70,
    begrun=0x65, run_length=0,
)
SNACK_STATUS_WIRE = h("""
    10 81 00 00  # 11.16 SNACK Request: opcode 0x10; F | Type 1 Status; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # Initiator Task Tag (reserved for Status SNACK)
    ff ff ff ff  # Target Transfer Tag / SNACK Tag
    00 00 00 00  # reserved
    00 00 00 70  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 65  # BegRun: first StatSN asked for again
    00 00 00 00  # RunLength 0: all after BegRun
""")

SNACK_DATA_ACK = SnackRequest(
    snack_type=SnackType.DATA_ACK, lun=LUN1, itt=0xFFFFFFFF, ttt=0x00000777, exp_statsn=0x71,
    begrun=5, run_length=0,
)
SNACK_DATA_ACK_WIRE = h("""
    10 82 00 00  # 11.16 SNACK Request: opcode 0x10; F | Type 2 DataACK; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # Initiator Task Tag (reserved for DataACK)
    00 00 07 77  # Target Transfer Tag of the Data-In with the A bit
    00 00 00 00  # reserved
    00 00 00 71  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 05  # BegRun: next expected DataSN
    00 00 00 00  # RunLength 0
""")

SNACK_RDATA = SnackRequest(
    snack_type=SnackType.RDATA, lun=LUN1, itt=0x0000DDDD, ttt=0x00005A5A, exp_statsn=0x72,
    begrun=0, run_length=0,
)
SNACK_RDATA_WIRE = h("""
    10 83 00 00  # 11.16 SNACK Request: opcode 0x10; F | Type 3 R-Data; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 dd dd  # Initiator Task Tag
    00 00 5a 5a  # SNACK Tag
    00 00 00 00  # reserved
    00 00 00 72  # ExpStatSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # BegRun 0
    00 00 00 00  # RunLength 0
""")

NOP_IN = NopIn(
    lun=0, itt=0x0A0B0C0D, ttt=0xFFFFFFFF, statsn=0x71, exp_cmdsn=0x62, max_cmdsn=0x81,
    data=b"abc",
)
NOP_IN_WIRE = h("""
    20 80 00 00  # 11.19 NOP-In: opcode 0x20; F; reserved
    00 00 00 03  # TotalAHSLength 0; DataSegmentLength 3
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    0a 0b 0c 0d  # Initiator Task Tag
    ff ff ff ff  # Target Transfer Tag
    00 00 00 71  # StatSN
    00 00 00 62  # ExpCmdSN
    00 00 00 81  # MaxCmdSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    61 62 63 00  # "abc"; 1 pad byte
""")

NOP_IN_PING = NopIn(
    lun=LUN1, itt=0xFFFFFFFF, ttt=0x00000999, statsn=0x72, exp_cmdsn=0x62, max_cmdsn=0x81,
)
NOP_IN_PING_WIRE = h("""
    20 80 00 00  # 11.19 NOP-In: opcode 0x20; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # Initiator Task Tag (none: the target asks for a NOP-Out)
    00 00 09 99  # Target Transfer Tag
    00 00 00 72  # StatSN
    00 00 00 62  # ExpCmdSN
    00 00 00 81  # MaxCmdSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 00 00  # reserved
""")

SENSE_ILLEGAL_REQUEST = bytes.fromhex("700005000000000a00000000240000000000")  # 18 bytes fixed
SCSI_RESPONSE_SENSE = ScsiResponse(
    underflow=True, response=0, status=0x02, itt=0x0000CCCC, snack_tag=0, statsn=0x41,
    exp_cmdsn=0x42, max_cmdsn=0x61, exp_datasn=0, bidi_residual=0, residual=0x100,
    data=b"\x00\x12" + SENSE_ILLEGAL_REQUEST,
)
SCSI_RESPONSE_SENSE_WIRE = h("""
    21 82 00 02  # 11.4 SCSI Response: opcode 0x21; F | U; Response 0; Status 2 CHECK CONDITION
    00 00 00 14  # TotalAHSLength 0; DataSegmentLength 20
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 cc cc  # Initiator Task Tag
    00 00 00 00  # SNACK Tag
    00 00 00 41  # StatSN
    00 00 00 42  # ExpCmdSN
    00 00 00 61  # MaxCmdSN
    00 00 00 00  # ExpDataSN
    00 00 00 00  # Bidirectional Read Residual Count
    00 00 01 00  # Residual Count
    00 12 70 00  # SenseLength 18; sense: response code 0x70
    05 00 00 00  # sense key 5 ILLEGAL REQUEST
    00 0a 00 00  # additional sense length 10
    00 00 24 00  # ASC 0x24 invalid field in CDB
    00 00 00 00  # sense
""")

SCSI_RESPONSE_BIDI = ScsiResponse(
    bidi_overflow=True, overflow=True, response=P.ScsiResponseCode.TARGET_FAILURE, status=0,
    itt=0x0000ABCD, snack_tag=3, statsn=0x43, exp_cmdsn=0x44, max_cmdsn=0x62, exp_datasn=7,
    bidi_residual=0x10, residual=0x20,
)
SCSI_RESPONSE_BIDI_WIRE = h("""
    21 94 01 00  # 11.4 SCSI Response: opcode 0x21; F | o | O; Response 1 target failure; Status 0
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    00 00 ab cd  # Initiator Task Tag
    00 00 00 03  # SNACK Tag
    00 00 00 43  # StatSN
    00 00 00 44  # ExpCmdSN
    00 00 00 62  # MaxCmdSN
    00 00 00 07  # ExpDataSN
    00 00 00 10  # Bidirectional Read Residual Count
    00 00 00 20  # Residual Count
""")

R2T_PDU = R2T(
    lun=LUN1, itt=0x0000CCCC, ttt=0x00000777, statsn=0x40, exp_cmdsn=0x42, max_cmdsn=0x61,
    r2tsn=1, buffer_offset=0x2000, desired_length=0x10000,
)
R2T_WIRE = h("""
    31 80 00 00  # 11.8 R2T: opcode 0x31; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    00 00 cc cc  # Initiator Task Tag
    00 00 07 77  # Target Transfer Tag
    00 00 00 40  # StatSN
    00 00 00 42  # ExpCmdSN
    00 00 00 61  # MaxCmdSN
    00 00 00 01  # R2TSN
    00 00 20 00  # Buffer Offset
    00 01 00 00  # Desired Data Transfer Length
""")

SENSE_UA_LUNS_CHANGED = bytes.fromhex("700006000000000a000000003f0e00000000")  # 3F/0E
ASYNC_SCSI = AsyncMessage(
    lun=LUN1, itt=0xFFFFFFFF, statsn=0x72, exp_cmdsn=0x63, max_cmdsn=0x82,
    async_event=AsyncEvent.SCSI_ASYNC_EVENT, data=b"\x00\x12" + SENSE_UA_LUNS_CHANGED,
)
ASYNC_SCSI_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 14  # TotalAHSLength 0; DataSegmentLength 20
    00 01 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 72  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    00 00 00 00  # AsyncEvent 0 SCSI async event; AsyncVCode 0; Parameter1 0
    00 00 00 00  # Parameter2 0; Parameter3 0
    00 00 00 00  # reserved
    00 12 70 00  # SenseLength 18; sense: response code 0x70
    06 00 00 00  # sense key 6 UNIT ATTENTION
    00 0a 00 00  # additional sense length 10
    00 00 3f 0e  # ASC/ASCQ 3F/0E reported LUNs data has changed
    00 00 00 00  # sense
""")

ASYNC_LOGOUT = AsyncMessage(
    lun=0, statsn=0x73, exp_cmdsn=0x63, max_cmdsn=0x82, async_event=AsyncEvent.LOGOUT_REQUEST,
    parameter3=5,
)
ASYNC_LOGOUT_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 73  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    01 00 00 00  # AsyncEvent 1 logout requested; AsyncVCode 0; Parameter1 0
    00 00 00 05  # Parameter2 0; Parameter3 5 s to log out within
    00 00 00 00  # reserved
""")

ASYNC_CONN_DROP = AsyncMessage(
    lun=0, statsn=0x74, exp_cmdsn=0x63, max_cmdsn=0x82, async_event=AsyncEvent.CONNECTION_DROP,
    parameter1=3, parameter2=2, parameter3=20,
)
ASYNC_CONN_DROP_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 74  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    02 00 00 03  # AsyncEvent 2 connection drop; AsyncVCode 0; Parameter1 CID 3
    00 02 00 14  # Parameter2 Time2Wait 2; Parameter3 Time2Retain 20
    00 00 00 00  # reserved
""")

ASYNC_SESSION_DROP = AsyncMessage(
    lun=0, statsn=0x75, exp_cmdsn=0x63, max_cmdsn=0x82, async_event=AsyncEvent.SESSION_DROP,
    parameter2=4, parameter3=30,
)
ASYNC_SESSION_DROP_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 75  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    03 00 00 00  # AsyncEvent 3 session drop; AsyncVCode 0; Parameter1 0
    00 04 00 1e  # Parameter2 Time2Wait 4; Parameter3 Time2Retain 30
    00 00 00 00  # reserved
""")

ASYNC_NEGOTIATE = AsyncMessage(
    lun=0, statsn=0x76, exp_cmdsn=0x63, max_cmdsn=0x82,
    async_event=AsyncEvent.NEGOTIATION_REQUEST,
)
ASYNC_NEGOTIATE_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 76  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    04 00 00 00  # AsyncEvent 4 negotiation request; AsyncVCode 0; Parameter1 0
    00 00 00 00  # Parameter2 0; Parameter3 0
    00 00 00 00  # reserved
""")

ASYNC_TASK_TERMINATION = AsyncMessage(
    lun=LUN2, statsn=0x77, exp_cmdsn=0x63, max_cmdsn=0x82,
    async_event=AsyncEvent.TASK_TERMINATION,
)
ASYNC_TASK_TERMINATION_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 00  # TotalAHSLength 0; DataSegmentLength 0
    00 02 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 77  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    05 00 00 00  # AsyncEvent 5 all tasks terminated; AsyncVCode 0; Parameter1 0
    00 00 00 00  # Parameter2 0; Parameter3 0
    00 00 00 00  # reserved
""")

ASYNC_VENDOR = AsyncMessage(
    lun=0, statsn=0x78, exp_cmdsn=0x63, max_cmdsn=0x82, async_event=AsyncEvent.VENDOR_SPECIFIC,
    async_vcode=0x42, parameter1=0x1111, parameter2=0x2222, parameter3=0x3333,
    data=bytes.fromhex("deadbeef"),
)
ASYNC_VENDOR_WIRE = h("""
    32 80 00 00  # 11.9 Asynchronous Message: opcode 0x32; F; reserved
    00 00 00 04  # TotalAHSLength 0; DataSegmentLength 4
    00 00 00 00  # LUN
    00 00 00 00  # LUN
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 78  # StatSN
    00 00 00 63  # ExpCmdSN
    00 00 00 82  # MaxCmdSN
    ff 42 11 11  # AsyncEvent 255 vendor specific; AsyncVCode 0x42; Parameter1
    22 22 33 33  # Parameter2; Parameter3
    00 00 00 00  # reserved
    de ad be ef  # vendor specific data
""")

REJECT_PDU = Reject(
    reason=RejectReason.PROTOCOL_ERROR, itt=0xFFFFFFFF, statsn=0x73, exp_cmdsn=0x64,
    max_cmdsn=0x83, datasn=7, data=SNACK_DATA_WIRE,
)
REJECT_WIRE = h("""
    3f 80 04 00  # 11.17 Reject: opcode 0x3f; F; Reason 4 protocol error; reserved
    00 00 00 30  # TotalAHSLength 0; DataSegmentLength 48
    00 00 00 00  # reserved
    00 00 00 00  # reserved
    ff ff ff ff  # 0xffffffff
    00 00 00 00  # reserved
    00 00 00 73  # StatSN
    00 00 00 64  # ExpCmdSN
    00 00 00 83  # MaxCmdSN
    00 00 00 07  # DataSN/R2TSN
    00 00 00 00  # reserved
    00 00 00 00  # reserved
""") + SNACK_DATA_WIRE  # the header of the rejected PDU

GOLDEN = [
    pytest.param(NOP_OUT, NOP_OUT_WIRE, 48, id="nop-out"),
    pytest.param(SCSI_READ_B4, SCSI_READ_B4_WIRE, 48, id="scsi-command-rfc-b4"),
    pytest.param(SCSI_READ10, SCSI_READ10_WIRE, 48, id="scsi-command-read10"),
    pytest.param(SCSI_EXT_BIDI, SCSI_EXT_BIDI_WIRE, 76, id="scsi-command-extcdb-bidi"),
    pytest.param(TMF_REQUEST, TMF_REQUEST_WIRE, 48, id="tmf-request"),
    pytest.param(TMF_RESPONSE, TMF_RESPONSE_WIRE, 48, id="tmf-response"),
    pytest.param(LOGIN_REQUEST, LOGIN_REQUEST_WIRE, 48, id="login-request"),
    pytest.param(LOGIN_RESPONSE, LOGIN_RESPONSE_WIRE, 48, id="login-response"),
    pytest.param(TEXT_REQUEST, TEXT_REQUEST_WIRE, 48, id="text-request"),
    pytest.param(TEXT_RESPONSE, TEXT_RESPONSE_WIRE, 48, id="text-response"),
    pytest.param(DATA_OUT, DATA_OUT_WIRE, 48, id="data-out"),
    pytest.param(DATA_IN, DATA_IN_WIRE, 48, id="data-in"),
    pytest.param(DATA_IN_STATUS, DATA_IN_STATUS_WIRE, 48, id="data-in-status"),
    pytest.param(LOGOUT_REQUEST, LOGOUT_REQUEST_WIRE, 48, id="logout-request"),
    pytest.param(LOGOUT_RESPONSE, LOGOUT_RESPONSE_WIRE, 48, id="logout-response"),
    pytest.param(SNACK_DATA, SNACK_DATA_WIRE, 48, id="snack-data-r2t"),
    pytest.param(SNACK_STATUS, SNACK_STATUS_WIRE, 48, id="snack-status"),
    pytest.param(SNACK_DATA_ACK, SNACK_DATA_ACK_WIRE, 48, id="snack-data-ack"),
    pytest.param(SNACK_RDATA, SNACK_RDATA_WIRE, 48, id="snack-rdata"),
    pytest.param(NOP_IN, NOP_IN_WIRE, 48, id="nop-in"),
    pytest.param(NOP_IN_PING, NOP_IN_PING_WIRE, 48, id="nop-in-ping"),
    pytest.param(SCSI_RESPONSE_SENSE, SCSI_RESPONSE_SENSE_WIRE, 48, id="scsi-response-sense"),
    pytest.param(SCSI_RESPONSE_BIDI, SCSI_RESPONSE_BIDI_WIRE, 48, id="scsi-response-bidi"),
    pytest.param(R2T_PDU, R2T_WIRE, 48, id="r2t"),
    pytest.param(ASYNC_SCSI, ASYNC_SCSI_WIRE, 48, id="async-scsi-event"),
    pytest.param(ASYNC_LOGOUT, ASYNC_LOGOUT_WIRE, 48, id="async-logout-request"),
    pytest.param(ASYNC_CONN_DROP, ASYNC_CONN_DROP_WIRE, 48, id="async-connection-drop"),
    pytest.param(ASYNC_SESSION_DROP, ASYNC_SESSION_DROP_WIRE, 48, id="async-session-drop"),
    pytest.param(ASYNC_NEGOTIATE, ASYNC_NEGOTIATE_WIRE, 48, id="async-negotiation-request"),
    pytest.param(ASYNC_TASK_TERMINATION, ASYNC_TASK_TERMINATION_WIRE, 48, id="async-task-term"),
    pytest.param(ASYNC_VENDOR, ASYNC_VENDOR_WIRE, 48, id="async-vendor"),
    pytest.param(REJECT_PDU, REJECT_WIRE, 48, id="reject"),
]
GOLDEN_VALUES = [p.values for p in GOLDEN]


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def le32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def with_digests(wire: bytes, hlen: int, *, hd: bool, dd: bool) -> bytes:
    """The golden PDU with digests inserted by hand: the header digest covers BHS + AHS, the
    data digest the data segment with its padding (RFC 7143 sections 11.1 and 13.1)."""
    header, segment = wire[:hlen], wire[hlen:]
    out = header + (le32(reference_crc32c(header)) if hd else b"")
    if segment:
        out += segment + (le32(reference_crc32c(segment)) if dd else b"")
    return out


def feed(chunks, **framer_args) -> tuple[Framer, list[Frame]]:
    framer = Framer(**framer_args)
    frames: list[Frame] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    return framer, frames


def decoded(chunks, **framer_args) -> list:
    _, frames = feed(chunks, **framer_args)
    for f in frames:
        assert f.data_digest_ok
    return [decode_frame(f) for f in frames]


def pump(framer: Framer, stream: bytes, chunk: int, seen: list | None = None) -> list[Frame]:
    """Feed stream the way the engine does, recv_into style: write at most `chunk` bytes into
    the view get_buffer() returns. `seen` collects the objects behind those views."""
    frames: list[Frame] = []
    pos = 0
    while pos < len(stream):
        view = framer.get_buffer()
        if seen is not None:
            seen.append(view.obj)
        n = min(len(view), chunk, len(stream) - pos)
        assert n > 0
        view[:n] = stream[pos : pos + n]
        pos += n
        framer.buffer_updated(n)
        frames.extend(framer.frames())
    return frames


# --------------------------------------------------------------------------------------------
# Golden tables.
# --------------------------------------------------------------------------------------------


def test_golden_tables_are_word_aligned_and_cover_every_opcode() -> None:
    for pdu, wire, hlen in GOLDEN_VALUES:
        assert len(wire) % 4 == 0, pdu
        assert hlen % 4 == 0 and wire[4] * 4 + 48 == hlen
        dsl = int.from_bytes(wire[5:8], "big")
        assert len(wire) == hlen + dsl + (-dsl & 3)
    assert {type(p).opcode for p, _, _ in GOLDEN_VALUES} == set(Opcode)
    assert {p.async_event for p, _, _ in GOLDEN_VALUES if isinstance(p, AsyncMessage)} == set(
        AsyncEvent
    )
    assert {p.snack_type for p, _, _ in GOLDEN_VALUES if isinstance(p, SnackRequest)} == set(
        SnackType
    )


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_encode_golden(pdu, wire: bytes, hlen: int) -> None:
    assert encode(pdu) == wire
    assert encode_header(pdu) == wire[:hlen]
    parts = encode_parts(pdu)
    assert b"".join(parts) == wire
    assert bytes(parts[0]) == wire[:hlen]
    if getattr(pdu, "data", b""):
        # The data segment is handed on as is, not copied, for a gathering write.
        assert parts[1] is pdu.data
    else:
        assert len(parts) == 1


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_decode_golden(pdu, wire: bytes, hlen: int) -> None:
    got = decode(wire)
    assert type(got) is type(pdu)
    assert got == pdu
    assert decode(bytearray(wire)) == pdu
    assert decode(memoryview(wire)) == pdu


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_frame_of_golden(pdu, wire: bytes, hlen: int) -> None:
    _, frames = feed([wire])
    [frame] = frames
    assert frame.header == wire[:48]
    assert frame.ahs == wire[48:hlen]
    dsl = int.from_bytes(wire[5:8], "big")
    assert bytes(frame.data) == wire[hlen : hlen + dsl]
    assert frame.opcode == type(pdu).opcode
    assert frame.itt == int.from_bytes(wire[16:20], "big")
    assert frame.data_digest_ok and not frame.placed


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_framer_whole_and_byte_by_byte(pdu, wire: bytes, hlen: int) -> None:
    assert decoded([wire]) == [pdu]
    framer, frames = feed([wire[i : i + 1] for i in range(len(wire))])
    assert [decode_frame(f) for f in frames] == [pdu]
    assert framer.at_pdu_boundary and framer.pending_bytes() == 0


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_framer_split_at_every_position(pdu, wire: bytes, hlen: int) -> None:
    for cut in range(1, len(wire)):
        framer, frames = feed([wire[:cut]], staging_size=4096)
        assert frames == []
        assert not framer.at_pdu_boundary
        framer.receive_data(wire[cut:])
        assert [decode_frame(f) for f in framer.frames()] == [pdu], cut


@pytest.mark.parametrize(("pdu", "wire", "hlen"), [g for g in GOLDEN if g.values[2] == 48])
def test_pending_bytes_counts_a_partial_pdu(pdu, wire: bytes, hlen: int) -> None:
    # PDUs with an AHS: test_pending_bytes_counts_ahs_and_header_digest.
    for cut in range(len(wire)):
        framer, _ = feed([wire[:cut]])
        assert framer.pending_bytes() == cut, cut


def test_pending_bytes_counts_ahs_and_header_digest() -> None:
    wire = with_digests(SCSI_EXT_BIDI_WIRE, 76, hd=True, dd=False)
    for cut in range(len(wire)):
        framer, _ = feed([wire[:cut]], header_digest=True)
        assert framer.pending_bytes() == cut, cut


# --------------------------------------------------------------------------------------------
# Trailing bytes.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_decode_refuses_trailing_bytes(pdu, wire: bytes, hlen: int) -> None:
    for extra in (b"\0", b"\x40\x80\x00", bytes(47), NOP_OUT_WIRE[:51]):
        with pytest.raises(RemoteProtocolError):
            decode(wire + extra)


def test_decode_refuses_a_whole_trailing_pdu() -> None:
    for _, wire, _ in GOLDEN_VALUES:
        with pytest.raises(RemoteProtocolError):
            decode(wire + NOP_IN_PING_WIRE)


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_decode_refuses_a_truncated_pdu(pdu, wire: bytes, hlen: int) -> None:
    for cut in (0, 1, 47, 48, len(wire) - 1):
        if cut < len(wire):
            with pytest.raises(RemoteProtocolError):
                decode(wire[:cut])


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_framer_yields_the_pdu_and_keeps_trailing_bytes(pdu, wire: bytes, hlen: int) -> None:
    nxt = NOP_OUT_WIRE
    for k in (1, 3, 47, 48, 49, 50, len(nxt) - 1):
        framer, frames = feed([wire + nxt[:k]])
        assert [decode_frame(f) for f in frames] == [pdu]
        assert framer.pending_bytes() == k
        assert not framer.at_pdu_boundary
        framer.receive_data(nxt[k:])
        assert [decode_frame(f) for f in framer.frames()] == [NOP_OUT]
        assert framer.at_pdu_boundary


def test_framer_whole_golden_stream_in_odd_chunks() -> None:
    stream = b"".join(w for _, w, _ in GOLDEN_VALUES) * 8
    want = [p for p, _, _ in GOLDEN_VALUES] * 8
    for size in (1, 7, 48, 53, 1000, 4096, len(stream)):
        got = decoded([stream[i : i + size] for i in range(0, len(stream), size)],
                      staging_size=4096)
        assert got == want, size


# --------------------------------------------------------------------------------------------
# Digests and padding.
# --------------------------------------------------------------------------------------------

DIGEST_MODES = [
    pytest.param(True, False, id="header-digest"),
    pytest.param(False, True, id="data-digest"),
    pytest.param(True, True, id="both-digests"),
]


def test_header_digest_of_the_rfc_b4_read_pdu() -> None:
    wire = encode(SCSI_READ_B4, header_digest=True)
    assert wire == SCSI_READ_B4_WIRE + bytes.fromhex("563a96d9")  # RFC 7143 B.4
    assert decode(wire, header_digest=True) == SCSI_READ_B4


@pytest.mark.parametrize(("hd", "dd"), DIGEST_MODES)
@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_golden_with_digests(pdu, wire: bytes, hlen: int, hd: bool, dd: bool) -> None:
    wired = with_digests(wire, hlen, hd=hd, dd=dd)
    assert encode(pdu, header_digest=hd, data_digest=dd) == wired
    assert b"".join(encode_parts(pdu, header_digest=hd, data_digest=dd)) == wired
    assert decode(wired, header_digest=hd, data_digest=dd) == pdu
    args = {"header_digest": hd, "data_digest": dd}
    assert decoded([wired], **args) == [pdu]
    assert decoded([wired[i : i + 1] for i in range(len(wired))], **args) == [pdu]
    for cut in range(1, len(wired)):
        assert decoded([wired[:cut], wired[cut:] + wired], staging_size=4096, **args) == [
            pdu, pdu
        ]


@pytest.mark.parametrize(("pdu", "wire", "hlen"), GOLDEN)
def test_bad_header_digest_is_a_sticky_error(pdu, wire: bytes, hlen: int) -> None:
    wired = with_digests(wire, hlen, hd=True, dd=False)
    for flip in (0, hlen - 1, hlen, hlen + 3):  # a header byte or a digest byte
        bad = bytearray(wired)
        bad[flip] ^= 0x01
        with pytest.raises(HeaderDigestError):
            decode(bytes(bad), header_digest=True)
        framer = Framer(header_digest=True)
        with pytest.raises(HeaderDigestError) as first:
            framer.receive_data(bytes(bad[: hlen + 4]))
        assert isinstance(first.value, RemoteProtocolError)
        for call in (framer.get_buffer, framer.next_frame, framer.frames,
                     lambda f=framer: f.receive_data(NOP_OUT_WIRE),
                     lambda f=framer: f.buffer_updated(1)):
            with pytest.raises(HeaderDigestError) as again:
                call()
            assert again.value is first.value


@pytest.mark.parametrize(("pdu", "wire", "hlen"), [g for g in GOLDEN if len(g.values[1]) >
                                                   g.values[2]])
def test_bad_data_digest_is_flagged_and_the_stream_goes_on(pdu, wire, hlen) -> None:
    for hd in (False, True):
        wired = with_digests(wire, hlen, hd=hd, dd=True)
        for flip in (len(wired) - 5, len(wired) - 1):  # last pad/data byte, a digest byte
            bad = bytearray(wired)
            bad[flip] ^= 0x80
            nxt = with_digests(NOP_IN_WIRE, 48, hd=hd, dd=True)
            framer, frames = feed([bytes(bad) + nxt], header_digest=hd, data_digest=True)
            assert [f.data_digest_ok for f in frames] == [False, True]
            assert decode_frame(frames[1]) == NOP_IN
            assert framer.at_pdu_boundary


def test_decode_refuses_a_bad_data_digest() -> None:
    wired = bytearray(with_digests(NOP_OUT_WIRE, 48, hd=False, dd=True))
    wired[-1] ^= 0xFF
    with pytest.raises(RemoteProtocolError):
        decode(bytes(wired), data_digest=True)


# Padding needed after a data segment of n bytes (RFC 7143 section 11.2: to a 4-byte boundary),
# written out rather than computed.
PADDING = {1: 3, 2: 2, 3: 1, 4: 0, 5: 3, 6: 2, 7: 1, 8: 0, 4093: 3, 4094: 2, 4095: 1}


@pytest.mark.parametrize("n", sorted(PADDING))
def test_data_segment_padding(n: int) -> None:
    data = bytes((i * 7 + 1) & 0xFF or 1 for i in range(n))
    pdu = NopOut(itt=1, cmdsn=2, exp_statsn=3, data=data)
    wire = encode(pdu)
    pad = PADDING[n]
    assert len(wire) == 48 + n + pad
    assert wire[5:8] == n.to_bytes(3, "big")  # DataSegmentLength excludes the padding
    assert wire[48 : 48 + n] == data
    assert wire[48 + n :] == bytes(pad)
    assert decode(wire) == pdu
    wired = encode(pdu, data_digest=True)
    assert wired[-4:] == le32(reference_crc32c(data + bytes(pad)))  # digest covers the pad
    assert decode(wired, data_digest=True) == pdu
    assert decoded([wired[i : i + 3] for i in range(0, len(wired), 3)], data_digest=True) == [pdu]


def test_no_data_digest_without_a_data_segment() -> None:
    wire = encode(R2T_PDU, header_digest=True, data_digest=True)
    assert wire == R2T_WIRE + le32(reference_crc32c(R2T_WIRE))


# --------------------------------------------------------------------------------------------
# Limits and errors of the framer.
# --------------------------------------------------------------------------------------------


def _nop_out_header_with_dsl(dsl: int) -> bytes:
    return NOP_OUT_WIRE[:5] + dsl.to_bytes(3, "big") + NOP_OUT_WIRE[8:48]


@pytest.mark.parametrize("hd", [False, True])
def test_oversized_data_segment_is_refused_before_it_is_buffered(hd: bool) -> None:
    header = _nop_out_header_with_dsl(0xFFFFFF)
    if hd:
        header += le32(reference_crc32c(header))
    framer = Framer(header_digest=hd, max_data_segment=8192)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with pytest.raises(RemoteProtocolError, match="16777215") as first:
            framer.receive_data(header)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert not isinstance(first.value, HeaderDigestError)
    assert peak < 64 * 1024, peak  # no 16 MiB segment buffer was allocated
    for call in (framer.get_buffer, framer.next_frame, framer.frames,
                 lambda: framer.receive_data(bytes(100)), lambda: framer.buffer_updated(4)):
        with pytest.raises(RemoteProtocolError) as again:
            call()
        assert again.value is first.value


def test_data_segment_limit_is_inclusive() -> None:
    ok = NopOut(itt=1, cmdsn=1, exp_statsn=1, data=bytes(8192))
    assert decoded([encode(ok)], max_data_segment=8192) == [ok]
    framer = Framer(max_data_segment=8191)
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(encode(ok)[:48])


def test_frames_completed_before_an_error_are_still_delivered() -> None:
    framer = Framer(max_data_segment=100)
    with pytest.raises(RemoteProtocolError) as err:
        framer.receive_data(NOP_OUT_WIRE + _nop_out_header_with_dsl(101))
    assert decode_frame(framer.next_frame()) == NOP_OUT
    with pytest.raises(RemoteProtocolError) as again:
        framer.next_frame()
    assert again.value is err.value


def test_header_larger_than_small_staging_buffer() -> None:
    # The largest header: 255 AHS words + header digest, in the smallest staging buffer.
    big = ScsiCommand(itt=5, expected_length=0, cmdsn=1, exp_statsn=1, cdb=bytes(16),
                      ahs=(Ahs(ahs_type=0x7F, data=bytes(range(256)) * 3 + bytes(1017 - 768)),))
    wire = encode(big, header_digest=True)
    assert wire[4] == 255 and len(wire) == 48 + 1020 + 4
    # 73 NOP-Outs with header digests fill 4088 bytes: the big header straddles the end of
    # the (4096-byte minimum) staging buffer.
    nop = with_digests(NOP_OUT_WIRE, 48, hd=True, dd=False)
    stream = nop * 73 + wire + nop
    for size in (700, 4096, len(stream)):
        got = decoded([stream[i : i + size] for i in range(0, len(stream), size)],
                      header_digest=True, staging_size=16)
        assert got == [NOP_OUT] * 73 + [big, NOP_OUT], size


# --------------------------------------------------------------------------------------------
# The placer: data segments received in place.
# --------------------------------------------------------------------------------------------


class Target:
    """A read buffer with sentinel bytes around it; the placer hands out views into it."""

    def __init__(self, size: int, offset: int = 13) -> None:
        self.buf = bytearray(b"\xee" * (size + 2 * offset))
        self.offset = offset
        self.calls: list[bytes] = []

    def placer(self, header: bytes) -> memoryview | None:
        self.calls.append(header)
        if header[0] & 0x3F != Opcode.DATA_IN:
            return None
        dsl = int.from_bytes(header[5:8], "big")
        return memoryview(self.buf)[self.offset : self.offset + dsl]

    def untouched_outside(self, n: int) -> bool:
        o = self.offset
        return self.buf[:o] == b"\xee" * o and self.buf[o + n :] == b"\xee" * (len(self.buf) - o - n)


def _data_in(n: int, datasn: int = 0) -> DataIn:
    return DataIn(final=True, itt=0x99, exp_cmdsn=1, max_cmdsn=9, datasn=datasn,
                  buffer_offset=0, data=bytes((i * 31 + 7) & 0xFF for i in range(n)))


@pytest.mark.parametrize("dd", [False, True])
@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("n", [1, 1000, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 100_003])
@pytest.mark.parametrize("chunk", [1460, 65536])
def test_placer_receives_data_in_place(n: int, hd: bool, dd: bool, chunk: int) -> None:
    pdu = _data_in(n)
    target = Target(n)
    framer = Framer(header_digest=hd, data_digest=dd, max_data_segment=1 << 20,
                    placer=target.placer, direct_threshold=16 * 1024)
    stream = encode(pdu, header_digest=hd, data_digest=dd) + encode(NOP_IN, header_digest=hd,
                                                                    data_digest=dd)
    seen: list = []
    frames = pump(framer, stream, chunk, seen)
    assert len(frames) == 2
    frame = frames[0]
    assert frame.placed and frame.data_digest_ok
    assert isinstance(frame.data, memoryview)
    assert frame.data.obj is target.buf  # the very buffer the placer gave
    assert bytes(frame.data) == pdu.data
    assert target.buf[target.offset : target.offset + n] == pdu.data
    assert target.untouched_outside(n)  # padding and digests did not spill into it
    got = decode_frame(frame)
    assert got == pdu and got.data.obj is target.buf
    # Large segments are received straight into the read buffer (recv_into it), small ones
    # are staged and copied.
    # The first recv brings the header and the start of the data; what remains of the segment
    # then decides.
    staged_first = min(chunk - 48 - (4 if hd else 0), n)
    direct = any(obj is target.buf for obj in seen)
    assert direct == (n - staged_first >= 16 * 1024)
    assert decode_frame(frames[1]) == NOP_IN
    assert not frames[1].placed
    assert len(target.calls) == 2


@pytest.mark.parametrize("dd", [False, True])
@pytest.mark.parametrize("hd", [False, True])
def test_after_a_large_segment_the_next_header_is_received_alone(hd: bool, dd: bool) -> None:
    """Two large Data-In back to back, the whole stream available at once (a busy socket):
    the first one's data is partly staged (a full staging buffer came with its header), but
    after it the framer asks for no more than the trailer and the next header, so the second
    one's data is received entirely in place, never staged and copied. A small PDU after
    them brings back full-size staging reads."""
    n = 300_000  # more than the 256 KiB staging buffer; the second size needs padding
    first, second = _data_in(n), _data_in(n + 3, datasn=1)
    bufs = [bytearray(n), bytearray(n + 3)]

    def placer(header: bytes) -> memoryview | None:
        if header[0] & 0x3F != Opcode.DATA_IN:
            return None
        return memoryview(bufs[int.from_bytes(header[36:40], "big")])  # by DataSN

    framer = Framer(header_digest=hd, data_digest=dd, max_data_segment=1 << 20, placer=placer,
                    direct_threshold=16 * 1024)
    kw = {"header_digest": hd, "data_digest": dd}
    stream = encode(first, **kw) + encode(second, **kw) + encode(NOP_IN, **kw) * 3
    reads: list[tuple[object, int, int]] = []  # (buffer, view length, bytes written)
    frames: list[Frame] = []
    pos = 0
    while pos < len(stream):
        view = framer.get_buffer()
        k = min(len(view), len(stream) - pos)
        reads.append((view.obj, len(view), k))
        view[:k] = stream[pos : pos + k]
        pos += k
        framer.buffer_updated(k)
        frames.extend(framer.frames())
    assert [bytes(f.data) for f in frames[:2]] == [first.data, second.data]
    assert len(frames) == 5 and all(decode_frame(f) == NOP_IN for f in frames[2:])
    # The second segment: one read, straight into its buffer.
    assert [(obj, k) for obj, _, k in reads if obj is bufs[1]] == [(bufs[1], n + 3)]
    # Between the two segments, staging reads were trailer + header sized, not 256 KiB.
    i_first = max(i for i, (obj, _, _) in enumerate(reads) if obj is bufs[0])
    i_second = next(i for i, (obj, _, _) in enumerate(reads) if obj is bufs[1])
    between = [size for _, size, _ in reads[i_first + 1 : i_second]]
    assert between and max(between) <= 48 + (4 if hd else 0) + (4 if dd else 0)
    # After the second segment (and its trailer), the small PDUs come in full-size reads.
    assert reads[-1][1] > 64 * 1024


@pytest.mark.parametrize("n", [1000, 100_003])
def test_placer_with_bad_data_digest(n: int) -> None:
    pdu = _data_in(n)
    target = Target(n)
    framer = Framer(data_digest=True, max_data_segment=1 << 20, placer=target.placer)
    wire = bytearray(encode(pdu, data_digest=True))
    wire[-1] ^= 0x10
    frames = pump(framer, bytes(wire) + encode(NOP_IN, data_digest=True), 8192)
    assert [f.data_digest_ok for f in frames] == [False, True]
    assert frames[0].placed and frames[0].data.obj is target.buf
    assert bytes(frames[0].data) == pdu.data
    assert decode_frame(frames[1]) == NOP_IN
    assert framer.at_pdu_boundary


def test_placer_is_not_called_for_a_bad_header_digest() -> None:
    target = Target(1000)
    framer = Framer(header_digest=True, placer=target.placer)
    wire = bytearray(encode(_data_in(1000), header_digest=True))
    wire[20] ^= 1
    with pytest.raises(HeaderDigestError) as first:
        pump(framer, bytes(wire), 4096)
    assert target.calls == []
    with pytest.raises(HeaderDigestError) as again:
        framer.get_buffer()
    assert again.value is first.value


def test_placer_returning_a_wrong_length_is_our_error() -> None:
    framer = Framer(placer=lambda header: memoryview(bytearray(10)))
    with pytest.raises(LocalProtocolError):
        framer.receive_data(encode(_data_in(11)))


def test_placer_returning_none_keeps_data_in_the_framer() -> None:
    target = Target(100)
    pdu = DataOut(final=True, itt=1, exp_statsn=1, datasn=0, buffer_offset=0, data=b"q" * 100)
    framer = Framer(placer=target.placer)
    [frame] = pump(framer, encode(pdu), 4096)
    assert not frame.placed and decode_frame(frame) == pdu
    assert target.buf == bytearray(b"\xee" * len(target.buf))


def test_placer_never_sees_a_pdu_without_data() -> None:
    target = Target(0)
    framer = Framer(placer=target.placer)
    pump(framer, R2T_WIRE + DATA_IN_WIRE, 4096)
    assert target.calls == [DATA_IN_WIRE[:48]]


# --------------------------------------------------------------------------------------------
# decode_frame and encode errors.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x07, 0x0F, 0x11, 0x1C, 0x1F, 0x27, 0x30, 0x3C, 0x3E])
def test_unknown_opcode_is_remote_error(opcode: int) -> None:
    wire = bytes([opcode]) + NOP_IN_PING_WIRE[1:]
    with pytest.raises(RemoteProtocolError, match="opcode"):
        decode(wire)


@pytest.mark.parametrize(
    "wire",
    [TMF_REQUEST_WIRE, TMF_RESPONSE_WIRE, LOGOUT_REQUEST_WIRE, LOGOUT_RESPONSE_WIRE,
     SNACK_DATA_WIRE, R2T_WIRE],
)
def test_data_segment_on_a_pdu_that_allows_none(wire: bytes) -> None:
    bad = wire[:7] + b"\x04" + wire[8:] + b"abcd"
    with pytest.raises(RemoteProtocolError):
        decode(bad)


@pytest.mark.parametrize(
    "ahs",
    [
        h("00 00 01 00"),  # AHSLength 0
        h("00 09 01 00  00 00 00 00"),  # AHSLength beyond TotalAHSLength
        h("00 05 02 00  00 00 04 00  00 00 00 00"),  # 4 bytes too short for a second AHS
    ],
)
def test_malformed_ahs_is_remote_error(ahs: bytes) -> None:
    wire = bytes([0x01, 0xC1, 0, 0, len(ahs) // 4, 0, 0, 0]) + SCSI_READ10_WIRE[8:48] + ahs
    with pytest.raises(RemoteProtocolError):
        decode(wire)


def test_encode_refuses_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        encode(replace(TMF_REQUEST, function=0x80))
    with pytest.raises(LocalProtocolError):
        encode(replace(LOGIN_REQUEST, isid=b"12345"))
    with pytest.raises(LocalProtocolError):
        encode(replace(LOGIN_RESPONSE, isid=b"1234567"))
    with pytest.raises(LocalProtocolError):
        encode(replace(LOGIN_REQUEST, csg=4))
    with pytest.raises(LocalProtocolError):
        encode(replace(LOGIN_RESPONSE, nsg=-1))
    with pytest.raises(LocalProtocolError):
        encode(replace(SCSI_READ10, cdb=bytes(17)))
    with pytest.raises(LocalProtocolError):
        encode(replace(SCSI_READ10, ahs=(Ahs(ahs_type=1, data=b""),)))
    with pytest.raises(LocalProtocolError):
        encode_parts(replace(NOP_OUT, data=memoryview(bytearray(1 << 24))))


def test_encode_refuses_too_much_ahs() -> None:
    with pytest.raises(LocalProtocolError):
        encode(replace(SCSI_READ10, ahs=(Ahs(ahs_type=1, data=bytes(1021)),)))


def test_short_cdb_is_zero_padded_to_the_16_byte_field() -> None:
    pdu = replace(SCSI_READ10, cdb=bytes.fromhex("28000000001000000800"))
    assert encode(pdu) == SCSI_READ10_WIRE
    assert decode(encode(pdu)).cdb == SCSI_READ10.cdb  # comes back as the 16-byte field


def test_sense_data() -> None:
    assert SCSI_RESPONSE_SENSE.sense == SENSE_ILLEGAL_REQUEST
    assert decode(SCSI_RESPONSE_SENSE_WIRE).sense == SENSE_ILLEGAL_REQUEST
    assert ASYNC_SCSI.sense == SENSE_UA_LUNS_CHANGED
    assert SCSI_RESPONSE_BIDI.sense == b""
    assert sense_from_segment(b"\x00\x00") == b""
    assert sense_from_segment(b"\x00\x02abXYZ") == b"ab"  # response data may follow
    with pytest.raises(RemoteProtocolError):
        sense_from_segment(b"\x00\x05abc")


def test_enums_cite_the_rfc_and_match_the_wire_codes() -> None:
    for enum in (Opcode, P.Stage, TaskAttribute, TmfFunction, TmfResponse,
                 P.ScsiResponseCode, LogoutReason, LogoutResponseCode, SnackType, AsyncEvent,
                 RejectReason, AhsType):
        assert "RFC 7143" in (enum.__doc__ or ""), enum
    assert [int(o) for o in Opcode] == [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20,
                                        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3F]
    assert RejectReason.WAITING_FOR_LOGOUT == 0x0C and RejectReason.DATA_DIGEST_ERROR == 0x02
    assert TmfFunction.TASK_REASSIGN == 8 and TmfResponse.REJECTED == 255
    assert P.Stage.FULL_FEATURE == 3


def test_pdus_are_frozen_keyword_only() -> None:
    with pytest.raises(TypeError):
        NopOut(1, 2, 3)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        NOP_OUT.itt = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Hypothesis: round trips over the whole field ranges, and fuzzed input.
# --------------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
data_st = st.binary(max_size=70)

ahs_st = st.lists(
    st.builds(Ahs, ahs_type=u8, data=st.binary(min_size=1, max_size=40)), max_size=4
).map(tuple)

PDU_STRATEGIES = {
    NopOut: st.builds(NopOut, immediate=st.booleans(), lun=u64, itt=u32, ttt=u32, cmdsn=u32,
                      exp_statsn=u32, data=data_st),
    ScsiCommand: st.builds(
        ScsiCommand, immediate=st.booleans(), final=st.booleans(), read=st.booleans(),
        write=st.booleans(), attr=st.integers(0, 7), lun=u64, itt=u32, expected_length=u32,
        cmdsn=u32, exp_statsn=u32, cdb=st.binary(min_size=16, max_size=16), ahs=ahs_st,
        data=data_st),
    TaskMgmtRequest: st.builds(
        TaskMgmtRequest, immediate=st.booleans(), function=st.integers(0, 0x7F), lun=u64,
        itt=u32, referenced_tag=u32, cmdsn=u32, exp_statsn=u32, ref_cmdsn=u32,
        exp_datasn=u32),
    LoginRequest: st.builds(
        LoginRequest, transit=st.booleans(), cont=st.booleans(), csg=st.integers(0, 3),
        nsg=st.integers(0, 3), version_max=u8, version_min=u8,
        isid=st.binary(min_size=6, max_size=6), tsih=u16, itt=u32, cid=u16, cmdsn=u32,
        exp_statsn=u32, data=data_st),
    TextRequest: st.builds(
        TextRequest, immediate=st.booleans(), final=st.booleans(), cont=st.booleans(),
        lun=u64, itt=u32, ttt=u32, cmdsn=u32, exp_statsn=u32, data=data_st),
    DataOut: st.builds(DataOut, final=st.booleans(), lun=u64, itt=u32, ttt=u32,
                       exp_statsn=u32, datasn=u32, buffer_offset=u32, data=data_st),
    LogoutRequest: st.builds(LogoutRequest, immediate=st.booleans(),
                             reason=st.integers(0, 0x7F), itt=u32, cid=u16, cmdsn=u32,
                             exp_statsn=u32),
    SnackRequest: st.builds(SnackRequest, snack_type=st.integers(0, 15), lun=u64, itt=u32,
                            ttt=u32, exp_statsn=u32, begrun=u32, run_length=u32),
    NopIn: st.builds(NopIn, lun=u64, itt=u32, ttt=u32, statsn=u32, exp_cmdsn=u32,
                     max_cmdsn=u32, data=data_st),
    ScsiResponse: st.builds(
        ScsiResponse, bidi_overflow=st.booleans(), bidi_underflow=st.booleans(),
        overflow=st.booleans(), underflow=st.booleans(), response=u8, status=u8, itt=u32,
        snack_tag=u32, statsn=u32, exp_cmdsn=u32, max_cmdsn=u32, exp_datasn=u32,
        bidi_residual=u32, residual=u32, data=data_st),
    TaskMgmtResponse: st.builds(TaskMgmtResponse, response=u8, itt=u32, statsn=u32,
                                exp_cmdsn=u32, max_cmdsn=u32),
    LoginResponse: st.builds(
        LoginResponse, transit=st.booleans(), cont=st.booleans(), csg=st.integers(0, 3),
        nsg=st.integers(0, 3), version_max=u8, version_active=u8,
        isid=st.binary(min_size=6, max_size=6), tsih=u16, itt=u32, statsn=u32,
        exp_cmdsn=u32, max_cmdsn=u32, status_class=u8, status_detail=u8, data=data_st),
    TextResponse: st.builds(
        TextResponse, final=st.booleans(), cont=st.booleans(), lun=u64, itt=u32, ttt=u32,
        statsn=u32, exp_cmdsn=u32, max_cmdsn=u32, data=data_st),
    # The status byte exists on the wire only with the S bit (RFC 7143 11.7.4).
    DataIn: st.booleans().flatmap(lambda s: st.builds(
        DataIn, final=st.booleans(), ack=st.booleans(), overflow=st.booleans(),
        underflow=st.booleans(), status_present=st.just(s),
        status=u8 if s else st.just(0), lun=u64, itt=u32, ttt=u32, statsn=u32,
        exp_cmdsn=u32, max_cmdsn=u32, datasn=u32, buffer_offset=u32, residual=u32,
        data=data_st)),
    LogoutResponse: st.builds(LogoutResponse, response=u8, itt=u32, statsn=u32,
                              exp_cmdsn=u32, max_cmdsn=u32, time2wait=u16, time2retain=u16),
    R2T: st.builds(R2T, lun=u64, itt=u32, ttt=u32, statsn=u32, exp_cmdsn=u32, max_cmdsn=u32,
                   r2tsn=u32, buffer_offset=u32, desired_length=u32),
    AsyncMessage: st.builds(
        AsyncMessage, lun=u64, itt=u32, statsn=u32, exp_cmdsn=u32, max_cmdsn=u32,
        async_event=u8, async_vcode=u8, parameter1=u16, parameter2=u16, parameter3=u16,
        data=data_st),
    Reject: st.builds(Reject, reason=u8, itt=u32, statsn=u32, exp_cmdsn=u32, max_cmdsn=u32,
                      datasn=u32, data=data_st),
}
any_pdu = st.one_of(*PDU_STRATEGIES.values())


def test_a_strategy_for_every_pdu_type() -> None:
    assert {cls.opcode for cls in PDU_STRATEGIES} == set(Opcode)


@pytest.mark.parametrize("cls", list(PDU_STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), hd=st.booleans(), dd=st.booleans())
def test_round_trip_of_every_pdu_type(cls, data, hd: bool, dd: bool) -> None:
    pdu = data.draw(PDU_STRATEGIES[cls])
    wire = encode(pdu, header_digest=hd, data_digest=dd)
    assert wire[0] & 0x3F == cls.opcode
    assert len(wire) % 4 == 0
    assert decode(wire, header_digest=hd, data_digest=dd) == pdu
    assert b"".join(encode_parts(pdu, header_digest=hd, data_digest=dd)) == wire


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pdus=st.lists(any_pdu, min_size=1, max_size=8),
    hd=st.booleans(),
    dd=st.booleans(),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=10),
    threshold=st.sampled_from([1, 64, 16 * 1024]),
)
def test_stream_of_pdus_in_random_chunks(pdus, hd, dd, sizes, threshold) -> None:
    stream = b"".join(encode(p, header_digest=hd, data_digest=dd) for p in pdus)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        chunks.append(stream[pos : pos + n])
        pos, i = pos + n, i + 1
    framer, frames = feed(chunks, header_digest=hd, data_digest=dd, staging_size=4096,
                          direct_threshold=threshold)
    assert [decode_frame(f) for f in frames] == pdus
    assert all(f.data_digest_ok for f in frames)
    assert framer.at_pdu_boundary


def _drain(framer: Framer, chunks: list[bytes]) -> None:
    """Feed chunks and decode every frame; only RemoteProtocolError may escape."""
    for chunk in chunks:
        framer.receive_data(chunk)
        while (frame := framer.next_frame()) is not None:
            try:
                pdu = decode_frame(frame)
            except RemoteProtocolError:
                continue
            assert type(pdu).opcode == frame.opcode


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200), max_size=6),
    hd=st.booleans(),
    dd=st.booleans(),
)
def test_arbitrary_bytes_raise_only_remote_protocol_errors(chunks, hd, dd) -> None:
    framer = Framer(header_digest=hd, data_digest=dd, max_data_segment=512)
    try:
        _drain(framer, chunks)
    except RemoteProtocolError:
        pass
    try:
        decode(b"".join(chunks), header_digest=hd, data_digest=dd)
    except RemoteProtocolError:
        pass


# Headers that look plausible (small lengths, known and unknown opcodes) reach further into the
# decoders than random bytes, whose DataSegmentLength is nearly always too large.
plausible_header = st.builds(
    lambda op, flags, ahs_words, dsl, rest: bytes([op, flags, 0, 0, ahs_words])
    + dsl.to_bytes(3, "big") + rest,
    op=st.one_of(st.sampled_from([int(o) for o in Opcode]), st.integers(0, 0xFF)),
    flags=u8,
    ahs_words=st.integers(0, 6),
    dsl=st.integers(0, 100),
    rest=st.binary(min_size=40, max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(plausible_header, st.binary(max_size=140)), min_size=1,
                     max_size=5),
    hd=st.booleans(),
    dd=st.booleans(),
    cut=st.integers(1, 64),
)
def test_plausible_garbage_raises_only_remote_protocol_errors(headers, hd, dd, cut) -> None:
    stream = b"".join(hdr + tail for hdr, tail in headers)
    framer = Framer(header_digest=hd, data_digest=dd, max_data_segment=64)
    try:
        _drain(framer, [stream[i : i + cut] for i in range(0, len(stream), cut)])
    except RemoteProtocolError as e:
        # Sticky: the next call fails with the same error.
        with pytest.raises(RemoteProtocolError) as again:
            framer.receive_data(b"\0")
        assert again.value is e
    for hdr, tail in headers:
        try:
            decode(hdr + tail)
        except RemoteProtocolError:
            pass
