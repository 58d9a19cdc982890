# Independent check of the PDU layout of iscsifs/proto/pdu.py against Wireshark's iSCSI dissector.
#
# A realistic conversation (login with text keys, READ with Data-In and status, WRITE with R2T and
# Data-Out, SCSI Response with sense, NOP-Out/In, Text, task management, Async Messages, SNACK,
# Reject, Logout) is encoded by iscsifs, wrapped in TCP/IPv4 on 127.0.0.1:3260 with correct
# checksums, and written as a classic libpcap file with the struct module. tshark must decode each
# PDU as the right opcode with the same field values, find nothing malformed and no expert warning,
# and, when digests are negotiated in the login, call every header and data digest a good CRC32.
# Must not touch the network: tshark only reads the file.

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from iscsifs.proto.pdu import (
    R2T,
    Ahs,
    AhsType,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    SnackType,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
    TmfResponse,
    decode,
    encode,
    encode_header,
)

pytestmark = pytest.mark.integration

TSHARK = shutil.which("tshark")
if TSHARK is None:  # only when the tool is not installed; see TESTBED.md for the package
    pytest.skip("tshark is not installed (apt-get install tshark)", allow_module_level=True)

INITIATOR = ("127.0.0.1", 51000)
TARGET = ("127.0.0.1", 3260)
TSHARK_OPTS = [
    "-d", "tcp.port==3260,iscsi",
    "-o", "tcp.check_checksum:TRUE",
    "-o", "ip.check_checksum:TRUE",
    "-o", "tcp.desegment_tcp_streams:TRUE",
    "-o", "iscsi.desegment_iscsi_messages:TRUE",
]

# --------------------------------------------------------------------------------------------
# pcap writing: Ethernet (zero MACs, as Linux loopback captures have) / IPv4 / TCP.
# --------------------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip4(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def tcp_packet(src, dst, seq: int, ack: int, flags: int, payload: bytes, ident: int) -> bytes:
    sip, dip = _ip4(src[0]), _ip4(dst[0])
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", sip, dip, 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ident, 0x4000, 64,
                     6, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return bytes(12) + b"\x08\x00" + ip + tcp + payload


SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


class Capture:
    """One TCP connection, both directions, with sequence and acknowledgement numbers kept."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.seq = {True: 1_000_000, False: 7_000_000}  # keyed by "from the initiator"
        self._ident = 0
        self._open()

    def _send(self, from_initiator: bool, flags: int, payload: bytes = b"") -> None:
        src, dst = (INITIATOR, TARGET) if from_initiator else (TARGET, INITIATOR)
        ack = self.seq[not from_initiator] if flags & ACK else 0
        self._ident += 1
        self.packets.append(tcp_packet(src, dst, self.seq[from_initiator], ack, flags, payload,
                                       self._ident))
        self.seq[from_initiator] = (self.seq[from_initiator] + len(payload)
                                    + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    def _open(self) -> None:
        self._send(True, SYN)
        self._send(False, SYN | ACK)
        self._send(True, ACK)

    def data(self, from_initiator: bool, payload: bytes) -> None:
        self._send(from_initiator, PSH | ACK, payload)

    def close(self) -> None:
        self._send(True, FIN | ACK)
        self._send(False, FIN | ACK)
        self._send(True, ACK)

    def write(self, path: Path) -> None:
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # LINKTYPE_ETHERNET
        for i, pkt in enumerate(self.packets):
            out.append(struct.pack("<IIII", 1_700_000_000, i * 1000, len(pkt), len(pkt)) + pkt)
        path.write_bytes(b"".join(out))


# --------------------------------------------------------------------------------------------
# The conversation.
# --------------------------------------------------------------------------------------------

ISID = bytes.fromhex("400001370000")
LUN1 = 0x0001_0000_0000_0000
NONE = 0xFFFFFFFF
IQN_I = "iqn.2024-01.org.example:init"
IQN_T = "iqn.2024-01.org.example:disk"
SENSE_WRITE_ERROR = bytes.fromhex("700003000000000a000000000c0000000000")  # MEDIUM ERROR 0C/00
# XDWRITEREAD(32), a bidirectional command: variable length CDB 0x7f, additional length 0x18,
# service action 0x0007, LBA 16, transfer length 1 block.
XDWRITEREAD32 = bytes.fromhex(
    "7f000000 00000018 00070000 00000000 00000010 00000000 00000000 00000001"
)
SENSE_UA = bytes.fromhex("700006000000000a000000003f0e00000000")  # UNIT ATTENTION 3F/0E


def keys(*pairs: str) -> bytes:
    return b"".join(p.encode() + b"\0" for p in pairs)


@dataclass
class Step:
    from_initiator: bool
    pdu: object
    digests: bool  # full feature phase: digests apply when negotiated
    segment: str = "own"  # "own" TCP segment, "join" the previous one, or "split" in two


def conversation(digest: str) -> list[Step]:
    read = bytes((i * 13) & 0xFF for i in range(1024))
    write = bytes((i * 7 + 3) & 0xFF for i in range(1024))
    snack = SnackRequest(snack_type=SnackType.STATUS, itt=NONE, exp_statsn=11, begrun=9,
                         run_length=1)
    return [
        Step(True, LoginRequest(
            transit=True, csg=0, nsg=1, isid=ISID, tsih=0, itt=0, cid=0, cmdsn=1, exp_statsn=0,
            data=keys(f"InitiatorName={IQN_I}", f"TargetName={IQN_T}", "SessionType=Normal",
                      "AuthMethod=None")), False),
        Step(False, LoginResponse(
            transit=True, csg=0, nsg=1, isid=ISID, tsih=5, itt=0, statsn=0, exp_cmdsn=1,
            max_cmdsn=1, status_class=0, status_detail=0,
            data=keys("AuthMethod=None", "TargetPortalGroupTag=1")), False),
        Step(True, LoginRequest(
            transit=True, csg=1, nsg=3, isid=ISID, tsih=5, itt=0, cid=0, cmdsn=1, exp_statsn=1,
            data=keys(f"HeaderDigest={digest}", f"DataDigest={digest}",
                      "MaxRecvDataSegmentLength=262144", "InitialR2T=Yes", "ImmediateData=Yes",
                      "ErrorRecoveryLevel=0")), False),
        Step(False, LoginResponse(
            transit=True, csg=1, nsg=3, isid=ISID, tsih=5, itt=0, statsn=1, exp_cmdsn=1,
            max_cmdsn=32, status_class=0, status_detail=0,
            data=keys(f"HeaderDigest={digest}", f"DataDigest={digest}",
                      "MaxRecvDataSegmentLength=8192", "InitialR2T=Yes", "ImmediateData=Yes",
                      "ErrorRecoveryLevel=0")), False),
        # READ(10) of 2 blocks: two Data-In PDUs in one TCP segment, the last with status.
        Step(True, ScsiCommand(
            read=True, lun=LUN1, itt=0x10, expected_length=1024, cmdsn=1, exp_statsn=2,
            cdb=bytes.fromhex("28000000000000000200") + bytes(6)), True),
        Step(False, DataIn(final=False, lun=LUN1, itt=0x10, exp_cmdsn=2, max_cmdsn=33,
                           datasn=0, buffer_offset=0, data=read[:512]), True),
        Step(False, DataIn(final=True, status_present=True, status=0, lun=LUN1, itt=0x10,
                           statsn=2, exp_cmdsn=2, max_cmdsn=33, datasn=1, buffer_offset=512,
                           data=read[512:]), True, "join"),
        # WRITE(10) of 2 blocks: R2T, two Data-Out (the last split over two TCP segments), and
        # a SCSI Response with sense data.
        Step(True, ScsiCommand(
            write=True, lun=LUN1, itt=0x11, expected_length=1024, cmdsn=2, exp_statsn=3,
            cdb=bytes.fromhex("2a000000000800000200") + bytes(6)), True),
        Step(False, R2T(lun=LUN1, itt=0x11, ttt=0x1000, statsn=3, exp_cmdsn=3, max_cmdsn=34,
                        r2tsn=0, buffer_offset=0, desired_length=1024), True),
        Step(True, DataOut(final=False, lun=LUN1, itt=0x11, ttt=0x1000, exp_statsn=3, datasn=0,
                           buffer_offset=0, data=write[:512]), True),
        Step(True, DataOut(final=True, lun=LUN1, itt=0x11, ttt=0x1000, exp_statsn=3, datasn=1,
                           buffer_offset=512, data=write[512:]), True, "split"),
        Step(False, ScsiResponse(status=0x02, itt=0x11, statsn=3, exp_cmdsn=3, max_cmdsn=34,
                                 exp_datasn=0, data=b"\x00\x12" + SENSE_WRITE_ERROR), True),
        # A bidirectional command with a 32-byte CDB: extended CDB AHS and bidirectional read
        # length AHS, with the 512 bytes to write as immediate data.
        Step(True, ScsiCommand(
            read=True, write=True, lun=LUN1, itt=0x16, expected_length=512, cmdsn=3,
            exp_statsn=4, cdb=XDWRITEREAD32[:16],
            ahs=(Ahs(ahs_type=AhsType.EXTENDED_CDB, data=b"\0" + XDWRITEREAD32[16:]),
                 Ahs(ahs_type=AhsType.BIDI_READ_LENGTH, data=b"\0" + (512).to_bytes(4, "big"))),
            data=write[:512]), True),
        Step(False, ScsiResponse(status=0, itt=0x16, statsn=4, exp_cmdsn=4, max_cmdsn=35,
                                 exp_datasn=0, bidi_underflow=True, bidi_residual=512), True),
        Step(True, NopOut(itt=0x12, cmdsn=4, exp_statsn=5, data=b"ping"), True),
        Step(False, NopIn(itt=0x12, ttt=NONE, statsn=5, exp_cmdsn=4, max_cmdsn=35,
                          data=b"ping"), True),
        Step(True, TextRequest(itt=0x13, cmdsn=4, exp_statsn=6, data=keys("SendTargets=All")),
             True),
        Step(False, TextResponse(final=True, itt=0x13, ttt=NONE, statsn=6, exp_cmdsn=5,
                                 max_cmdsn=36, data=keys(f"TargetName={IQN_T}",
                                                         "TargetAddress=127.0.0.1:3260,1")),
             True),
        Step(True, TaskMgmtRequest(function=TmfFunction.ABORT_TASK, lun=LUN1, itt=0x14,
                                   referenced_tag=0x10, cmdsn=5, exp_statsn=7, ref_cmdsn=1,
                                   exp_datasn=2), True),
        Step(False, TaskMgmtResponse(response=TmfResponse.TASK_DOES_NOT_EXIST, itt=0x14,
                                     statsn=7, exp_cmdsn=5, max_cmdsn=36), True),
        Step(False, AsyncMessage(lun=LUN1, statsn=8, exp_cmdsn=5, max_cmdsn=36,
                                 async_event=AsyncEvent.SCSI_ASYNC_EVENT,
                                 data=b"\x00\x12" + SENSE_UA), True),
        Step(False, AsyncMessage(statsn=9, exp_cmdsn=5, max_cmdsn=36,
                                 async_event=AsyncEvent.LOGOUT_REQUEST, parameter3=10), True),
        Step(False, AsyncMessage(statsn=10, exp_cmdsn=5, max_cmdsn=36,
                                 async_event=AsyncEvent.CONNECTION_DROP, parameter1=0,
                                 parameter2=2, parameter3=20), True),
        Step(True, snack, True),
        Step(False, Reject(reason=RejectReason.PROTOCOL_ERROR, statsn=11, exp_cmdsn=5,
                           max_cmdsn=36, data=encode_header(snack)), True),
        Step(True, LogoutRequest(reason=LogoutReason.CLOSE_SESSION, itt=0x15, cmdsn=5,
                                 exp_statsn=12), True),
        Step(False, LogoutResponse(response=0, itt=0x15, statsn=12, exp_cmdsn=6, max_cmdsn=37,
                                   time2wait=2, time2retain=20), True),
    ]


def build_pcap(path: Path, steps: list[Step], *, digests: bool,
               corrupt: int | None = None) -> list[bytes]:
    """Write the capture; return each PDU's wire bytes. `corrupt` flips the last byte of that
    step's PDU (its data digest, or its header digest when it has no data)."""
    cap = Capture()
    wires = []
    for i, step in enumerate(steps):
        on = digests and step.digests
        wire = encode(step.pdu, header_digest=on, data_digest=on)
        if i == corrupt:
            wire = wire[:-1] + bytes([wire[-1] ^ 0xFF])
        wires.append(wire)
        if step.segment == "join":
            continue
        payload = wire
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if nxt is not None and nxt.segment == "join":
            nxt_on = digests and nxt.digests
            payload += encode(nxt.pdu, header_digest=nxt_on, data_digest=nxt_on)
        if step.segment == "split":
            cap.data(step.from_initiator, payload[:300])
            cap.data(step.from_initiator, payload[300:])
        else:
            cap.data(step.from_initiator, payload)
    cap.close()
    cap.write(path)
    return wires


# --------------------------------------------------------------------------------------------
# What Wireshark should show for each PDU (field names from `tshark -G fields`).
# --------------------------------------------------------------------------------------------


def expected_fields(pdu) -> dict[str, object]:
    data = getattr(pdu, "data", b"")
    f: dict[str, object] = {"iscsi.opcode": int(type(pdu).opcode)}
    if not isinstance(pdu, TaskMgmtResponse):  # Wireshark 4.0 shows neither length for it
        f |= {"iscsi.datasegmentlength": len(data),
              "iscsi.totalahslength": (len(encode_header(pdu)) - 48) // 4}
    if not isinstance(pdu, AsyncMessage | Reject):
        f["iscsi.initiatortasktag"] = pdu.itt
    if isinstance(pdu, NopOut):
        f |= {"iscsi.I": int(pdu.immediate), "iscsi.targettransfertag": pdu.ttt,
              "iscsi.cmdsn": pdu.cmdsn, "iscsi.expstatsn": pdu.exp_statsn,
              "iscsi.pingdata": pdu.data}
    elif isinstance(pdu, NopIn):
        f |= {"iscsi.targettransfertag": pdu.ttt, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.pingdata": pdu.data}
    elif isinstance(pdu, ScsiCommand):
        f |= {"iscsi.I": int(pdu.immediate), "iscsi.scsicommand.F": int(pdu.final),
              "iscsi.scsicommand.R": int(pdu.read), "iscsi.scsicommand.W": int(pdu.write),
              "iscsi.scsicommand.attr": pdu.attr,
              "iscsi.scsicommand.expecteddatatransferlength": pdu.expected_length,
              "iscsi.cmdsn": pdu.cmdsn, "iscsi.expstatsn": pdu.exp_statsn,
              # The SCSI dissector read the CDB from bytes 32-47 and the LUN from 8-15.
              "scsi.lun": (pdu.lun >> 48) & 0x3FFF, "scsi_sbc.opcode": pdu.cdb[0],
              }
        if pdu.cdb[0] in (0x28, 0x2A):  # READ(10), WRITE(10)
            f |= {"scsi_sbc.rdwr10.lba": int.from_bytes(pdu.cdb[2:6], "big"),
                  "scsi_sbc.rdwr10.xferlen": int.from_bytes(pdu.cdb[7:9], "big")}
        if pdu.ahs:
            f |= {"iscsi.ahs.length": [len(a.data) for a in pdu.ahs],
                  "iscsi.ahs.type": [a.ahs_type for a in pdu.ahs]}
        for a in pdu.ahs:
            if a.ahs_type == AhsType.EXTENDED_CDB:
                f["iscsi.ahs.extended_cdb"] = a.data[1:]
            elif a.ahs_type == AhsType.BIDI_READ_LENGTH:
                f["iscsi.ahs.bidir.length"] = int.from_bytes(a.data[1:5], "big")
    elif isinstance(pdu, ScsiResponse):
        f |= {"iscsi.scsiresponse.o": int(pdu.bidi_overflow),
              "iscsi.scsiresponse.u": int(pdu.bidi_underflow),
              "iscsi.scsiresponse.O": int(pdu.overflow),
              "iscsi.scsiresponse.U": int(pdu.underflow),
              "iscsi.scsiresponse.response": pdu.response,
              "iscsi.scsiresponse.status": pdu.status, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.expdatasn": pdu.exp_datasn,
              "iscsi.scsiresponse.bidireadresidualcount": pdu.bidi_residual,
              "iscsi.scsiresponse.residualcount": pdu.residual}
        if pdu.data:
            f["iscsi.scsiresponse.senselength"] = len(pdu.sense)
    elif isinstance(pdu, TaskMgmtRequest):
        f |= {"iscsi.I": int(pdu.immediate), "iscsi.taskmanfun.function": pdu.function,
              "iscsi.taskmanfun.referencedtasktag": pdu.referenced_tag,
              "iscsi.cmdsn": pdu.cmdsn, "iscsi.expstatsn": pdu.exp_statsn,
              "iscsi.refcmdsn": pdu.ref_cmdsn}  # ExpDataSN: not dissected by Wireshark 4.0
    elif isinstance(pdu, TaskMgmtResponse):
        f |= {"iscsi.taskmanfun.response": pdu.response, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn}
    elif isinstance(pdu, LoginRequest | LoginResponse):
        f |= {"iscsi.login.T": int(pdu.transit), "iscsi.login.C": int(pdu.cont),
              "iscsi.login.csg": pdu.csg, "iscsi.login.nsg": pdu.nsg,
              "iscsi.versionmax": pdu.version_max, "iscsi.isid": pdu.isid,
              "iscsi.tsih": pdu.tsih, "iscsi.keyvalue": _keys(pdu.data)}
        if isinstance(pdu, LoginRequest):
            f |= {"iscsi.versionmin": pdu.version_min, "iscsi.cid": pdu.cid,
                  "iscsi.cmdsn": pdu.cmdsn, "iscsi.expstatsn": pdu.exp_statsn}
        else:
            f |= {"iscsi.versionactive": pdu.version_active, "iscsi.statsn": pdu.statsn,
                  "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
                  "iscsi.login.status": pdu.status_class << 8 | pdu.status_detail}
    elif isinstance(pdu, TextRequest):
        f |= {"iscsi.I": int(pdu.immediate), "iscsi.text.F": int(pdu.final),
              "iscsi.text.C": int(pdu.cont), "iscsi.targettransfertag": pdu.ttt,
              "iscsi.cmdsn": pdu.cmdsn,
              "iscsi.expstatsn": pdu.exp_statsn, "iscsi.keyvalue": _keys(pdu.data)}
    elif isinstance(pdu, TextResponse):
        f |= {"iscsi.text.F": int(pdu.final), "iscsi.text.C": int(pdu.cont),
              "iscsi.targettransfertag": pdu.ttt, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.keyvalue": _keys(pdu.data)}
    elif isinstance(pdu, DataOut):
        f |= {"iscsi.scsidata.F": int(pdu.final), "iscsi.targettransfertag": pdu.ttt,
              "iscsi.expstatsn": pdu.exp_statsn, "iscsi.datasn": pdu.datasn,
              "iscsi.bufferOffset": pdu.buffer_offset}
    elif isinstance(pdu, DataIn):
        f |= {"iscsi.scsidata.F": int(pdu.final), "iscsi.scsidata.A": int(pdu.ack),
              "iscsi.scsidata.O": int(pdu.overflow), "iscsi.scsidata.U": int(pdu.underflow),
              "iscsi.scsidata.S": int(pdu.status_present), "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.datasn": pdu.datasn, "iscsi.bufferOffset": pdu.buffer_offset,
              "iscsi.scsidata.readresidualcount": pdu.residual}
        if pdu.ack:  # Wireshark 4.0 shows the TTT of a Data-In only with the A bit
            f["iscsi.targettransfertag"] = pdu.ttt
        if pdu.status_present:
            f["iscsi.scsiresponse.status"] = pdu.status
    elif isinstance(pdu, LogoutRequest):
        f |= {"iscsi.I": int(pdu.immediate), "iscsi.logout.reason": pdu.reason,
              "iscsi.cid": pdu.cid, "iscsi.cmdsn": pdu.cmdsn, "iscsi.expstatsn": pdu.exp_statsn}
    elif isinstance(pdu, LogoutResponse):
        f |= {"iscsi.logout.response": pdu.response, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.time2wait": pdu.time2wait, "iscsi.time2retain": pdu.time2retain}
    elif isinstance(pdu, R2T):
        f |= {"iscsi.targettransfertag": pdu.ttt, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.r2tsn": pdu.r2tsn, "iscsi.bufferOffset": pdu.buffer_offset,
              "iscsi.desireddatalength": pdu.desired_length}
    elif isinstance(pdu, AsyncMessage):
        f |= {"iscsi.asyncevent": pdu.async_event, "iscsi.eventvendorcode": pdu.async_vcode,
              "iscsi.parameter1": pdu.parameter1, "iscsi.parameter2": pdu.parameter2,
              "iscsi.parameter3": pdu.parameter3, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn}
    elif isinstance(pdu, Reject):
        f |= {"iscsi.reject.reason": pdu.reason, "iscsi.statsn": pdu.statsn,
              "iscsi.expcmdsn": pdu.exp_cmdsn, "iscsi.maxcmdsn": pdu.max_cmdsn,
              "iscsi.datasn": pdu.datasn}
    elif isinstance(pdu, SnackRequest):
        f |= {"iscsi.snack.type": pdu.snack_type, "iscsi.targettransfertag": pdu.ttt,
              "iscsi.expstatsn": pdu.exp_statsn,
              "iscsi.snack.begrun": pdu.begrun, "iscsi.snack.runlength": pdu.run_length}
    else:  # pragma: no cover - every PDU of the conversation is listed above
        raise AssertionError(type(pdu))
    return f


def _keys(data: bytes) -> list[str]:
    return [k.decode() for k in data.split(b"\0") if k]


# --------------------------------------------------------------------------------------------
# Reading tshark's answer.
# --------------------------------------------------------------------------------------------


@dataclass
class Dissected:
    fields: dict[str, list[ET.Element]]
    nested: list[Dissected]  # a Reject's rejected header, dissected as a PDU of its own

    def value(self, name: str):
        el = self.fields[name][0]
        if name == "iscsi.keyvalue":
            return [e.get("show") for e in self.fields[name]]
        if name in ("iscsi.ahs.length", "iscsi.ahs.type"):
            return [int(e.get("show", ""), 0) for e in self.fields[name]]
        if name in ("iscsi.isid", "iscsi.pingdata", "iscsi.ahs.extended_cdb"):
            return bytes.fromhex(el.get("value", ""))
        return int(el.get("show", ""), 0)


def _collect(node: ET.Element, into: Dissected) -> None:
    for child in node:
        if child.tag == "proto":
            nested = Dissected({}, [])
            _collect(child, nested)
            into.nested.append(nested)
        elif child.tag == "field":
            if child.get("name"):
                into.fields.setdefault(child.get("name", ""), []).append(child)
            _collect(child, into)


def tshark_pdml(path: Path) -> list[Dissected]:
    """The iSCSI PDUs tshark found, in order. Within a packet, the protos that follow an iSCSI
    proto (PDML's "fake-field-wrapper" with its flag bits, and the SCSI layer under it) are
    counted with it; a Reject's rejected header, dissected as a PDU of its own, is `nested`."""
    out = subprocess.run([TSHARK, "-r", str(path), "-T", "pdml", *TSHARK_OPTS],
                         capture_output=True, check=True, timeout=60).stdout
    pdus: list[Dissected] = []
    for packet in ET.fromstring(out).iter("packet"):
        current: Dissected | None = None
        for proto in packet.findall("proto"):
            if proto.get("name") == "iscsi":
                current = Dissected({}, [])
                pdus.append(current)
            if current is not None:
                _collect(proto, current)
    return pdus


def tshark_problems(path: Path) -> str:
    return subprocess.run(
        [TSHARK, "-r", str(path), *TSHARK_OPTS, "-Y",
         "_ws.malformed || _ws.expert.severity >= warning"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout


def tshark_verbose(path: Path) -> str:
    return subprocess.run([TSHARK, "-r", str(path), "-V", *TSHARK_OPTS], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def _check_fields(steps: list[Step], dissected: list[Dissected]) -> None:
    assert len(dissected) == len(steps), [d.value("iscsi.opcode") for d in dissected]
    for i, (step, got) in enumerate(zip(steps, dissected, strict=True)):
        _check_one(i, step.pdu, got)
        if isinstance(step.pdu, Reject):
            # Wireshark dissects the rejected header carried in the data segment as a PDU.
            [rejected] = got.nested
            _check_one(i, decode_header_only(step.pdu.data), rejected)
        else:
            assert got.nested == [], i


def _check_one(i: int, pdu, got: Dissected) -> None:
    for name, want in expected_fields(pdu).items():
        assert name in got.fields, (i, type(pdu).__name__, name)
        assert got.value(name) == want, (i, type(pdu).__name__, name, got.value(name))
    # Wireshark found the padding where RFC 7143 11.2 puts it (to a 4-byte boundary).
    pad = -len(getattr(pdu, "data", b"")) & 3
    padding = got.fields.get("iscsi.padding", [])
    assert [int(e.get("size", "0")) for e in padding] == ([pad] if pad else []), i


def decode_header_only(header: bytes):
    """The PDU whose 48-byte header a Reject carries (its DataSegmentLength is 0 here)."""
    assert header[4:8] == bytes(4)
    return decode(header)


# --------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------


def test_capture_has_the_cases_asked_for() -> None:
    steps = conversation("None")
    kinds = {type(s.pdu) for s in steps}
    assert kinds >= {LoginRequest, LoginResponse, ScsiCommand, DataIn, R2T, DataOut,
                     ScsiResponse, NopOut, NopIn, TextRequest, TextResponse, TaskMgmtRequest,
                     TaskMgmtResponse, AsyncMessage, Reject, LogoutRequest, LogoutResponse,
                     SnackRequest}
    assert {s.segment for s in steps} == {"own", "join", "split"}
    assert any(isinstance(s.pdu, DataIn) and s.pdu.status_present for s in steps)
    assert any(isinstance(s.pdu, ScsiResponse) and s.pdu.sense for s in steps)
    assert any(isinstance(s.pdu, ScsiCommand) and len(s.pdu.ahs) == 2 for s in steps)


def test_wireshark_decodes_every_pdu_without_digests(tmp_path: Path) -> None:
    steps = conversation("None")
    pcap = tmp_path / "iscsi.pcap"
    build_pcap(pcap, steps, digests=False)
    _check_fields(steps, tshark_pdml(pcap))
    assert tshark_problems(pcap) == ""
    text = tshark_verbose(pcap)
    assert "HeaderDigest: 0x" not in text and "DataDigest: 0x" not in text
    # The SCSI layer under iSCSI saw the commands too (the CDB sits where it should).
    assert "Read(10)" in text and "Write(10)" in text


def test_wireshark_decodes_every_pdu_with_digests(tmp_path: Path) -> None:
    steps = conversation("CRC32C")
    pcap = tmp_path / "iscsi-digests.pcap"
    wires = build_pcap(pcap, steps, digests=True)
    dissected = tshark_pdml(pcap)
    _check_fields(steps, dissected)
    assert tshark_problems(pcap) == ""
    for i, (step, got) in enumerate(zip(steps, dissected, strict=True)):
        if not step.digests:
            assert "iscsi.headerdigest32" not in got.fields, i
            continue
        [hd] = got.fields["iscsi.headerdigest32"]
        assert "Good CRC32" in hd.get("showname", ""), (i, hd.get("showname"))
        data = getattr(step.pdu, "data", b"")
        if not data:
            assert "iscsi.datadigest32" not in got.fields, i
        elif isinstance(step.pdu, AsyncMessage):
            # Wireshark 4.0 does not look for a data digest after an Async Message's sense
            # data: it shows the 4 digest bytes as AsyncEventData. They are exactly ours, so
            # the segment ended where it should.
            [extra] = got.fields["iscsi.asynceventdata"]
            assert bytes.fromhex(extra.get("value", "")) == wires[i][-4:], i
        elif isinstance(step.pdu, Reject):
            # Nor after a Reject's rejected header: it takes the data digest for that header's
            # own header digest. Over the same 48 bytes, the two are the same CRC.
            [nested] = got.nested
            [nhd] = nested.fields["iscsi.headerdigest32"]
            assert "Good CRC32" in nhd.get("showname", ""), i
        else:
            [dd] = got.fields["iscsi.datadigest32"]
            assert "Good CRC32" in dd.get("showname", ""), (i, dd.get("showname"))


def test_wireshark_sees_a_corrupted_digest(tmp_path: Path) -> None:
    # The control for the test above: a wrong digest is reported, so "Good" means something.
    steps = conversation("CRC32C")
    nop = next(i for i, s in enumerate(steps) if isinstance(s.pdu, NopOut))
    r2t = next(i for i, s in enumerate(steps) if isinstance(s.pdu, R2T))
    pcap = tmp_path / "bad-data-digest.pcap"
    build_pcap(pcap, steps, digests=True, corrupt=nop)
    [dd] = tshark_pdml(pcap)[nop].fields["iscsi.datadigest32"]
    assert "Bad CRC32" in dd.get("showname", "")
    pcap = tmp_path / "bad-header-digest.pcap"
    build_pcap(pcap, steps, digests=True, corrupt=r2t)
    [hd] = tshark_pdml(pcap)[r2t].fields["iscsi.headerdigest32"]
    assert "Bad CRC32" in hd.get("showname", "")


def test_problem_filter_catches_a_bad_checksum(tmp_path: Path) -> None:
    # The control for the malformed/expert filter: a broken TCP checksum must show up.
    steps = conversation("None")[:2]
    pcap = tmp_path / "bad-checksum.pcap"
    build_pcap(pcap, steps, digests=False)
    raw = bytearray(pcap.read_bytes())
    raw[-1] ^= 0x01  # last payload byte of the last packet
    pcap.write_bytes(bytes(raw))
    assert tshark_problems(pcap) != ""
