# The full feature phase of one iSCSI connection, sans I/O: the CmdSN window, the task table
# (ITT -> Task), SCSI Command with immediate and unsolicited data, R2T answered with Data-Out,
# Data-In placed straight into the reader's buffer, status and residuals, NOP-In/Out, task
# management, text, logout, Async Messages, Reject, and the ERL 1 SNACK bookkeeping.
#
# It owns no socket and no clock. The engine feeds received bytes through get_buffer() /
# buffer_updated(n), sends what take_outbound() returns, and reads what happened from
# `completed` (finished Tasks) and `events`. Tasks belong to the session, not to a connection:
# when a connection dies the engine re-issues its unfinished() tasks on the next one.
#
# Every check a hostile target could defeat is made before a byte lands in a caller's buffer:
# the placer only ever hands out a slice of the buffer of the task the PDU names, at exactly the
# offset the data sequence must be at. Protocol errors are sticky: the connection is then dead.
# What a target that breaks the rules gets:
# - RemoteProtocolError (sticky): a PDU for an unknown, finished or wrong-direction task; Data-In
#   out of sequence or past the transfer (ERL 0); an R2T out of bounds, of length 0, over
#   MaxBurstLength, with a bad R2TSN or the reserved TTT; a segment over our
#   MaxRecvDataSegmentLength (refused from its header); a PDU type with no place here; a text
#   response over max_text bytes or max_text_pdus PDUs. DataDigestError / HeaderDigestError
#   for digests, except what ERL 1 recovers.
# - Ignored: a StatSN behind ExpStatSN, a MaxCmdSN behind ours or below ExpCmdSN - 1 (RFC 7143
#   4.2.2.1). A StatSN ahead is followed (no Status SNACK for the gap).
# - The task finished with an error, the connection kept: GOOD with too little data and no
#   missing DataSN, a residual larger than the transfer, target failure, a Reject of the command
#   (whose CmdSN is then plugged with a NOP-Out).
# - ERL 1: a DataSN gap or damaged Data-In sends one Data SNACK (BegRun = first missing DataSN,
#   RunLength 0) and drops later PDUs until the resend; duplicates are dropped; a status that
#   comes early is kept, unacknowledged, until the data is in; a damaged SCSI Response gets a
#   Status SNACK.

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from . import serial
from .digest import crc32c
from .errors import LocalProtocolError, RemoteProtocolError
from .pdu import (
    BHS_LEN,
    CMD_READ,
    CMD_WRITE,
    DATA_IN_ACK,
    DATA_IN_STATUS,
    F_BIT,
    FLAG_OVERFLOW,
    FLAG_UNDERFLOW,
    I_BIT,
    S_DATA_IN,
    S_DATA_OUT,
    S_R2T,
    S_SCSI_COMMAND,
    S_SCSI_RESPONSE,
    AsyncMessage,
    Buffer,
    Frame,
    Framer,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Reject,
    RejectReason,
    SnackRequest,
    SnackType,
    TaskAttribute,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    decode_frame,
    encode_parts,
    sense_from_segment,
)
from .serial import RESERVED_TAG

_DIGEST = struct.Struct("<I")
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_OP_DATA_IN = int(Opcode.DATA_IN)
_OP_SCSI_RESPONSE = int(Opcode.SCSI_RESPONSE)
_OP_R2T = int(Opcode.R2T)
_OP_SCSI_COMMAND = int(Opcode.SCSI_COMMAND)
_OP_DATA_OUT = int(Opcode.DATA_OUT)
_OPS_WITH_CMDSN = frozenset({_OP_SCSI_COMMAND, int(Opcode.TEXT_REQUEST), int(Opcode.NOP_OUT)})


class Params(Protocol):
    """What the connection needs of the negotiated parameters (text.NegotiatedParams, a frozen
    dataclass: the members are read-only properties so that it matches)."""

    @property
    def header_digest(self) -> bool: ...
    @property
    def data_digest(self) -> bool: ...
    @property
    def max_recv_data_segment_length(self) -> int: ...
    @property
    def max_xmit_data_segment_length(self) -> int: ...
    @property
    def max_burst_length(self) -> int: ...
    @property
    def first_burst_length(self) -> int: ...
    @property
    def initial_r2t(self) -> bool: ...
    @property
    def immediate_data(self) -> bool: ...
    @property
    def max_outstanding_r2t(self) -> int: ...
    @property
    def error_recovery_level(self) -> int: ...


class TargetFailure(RemoteProtocolError):
    """The target answered a command with iSCSI response "target failure" (RFC 7143 11.4.3)."""


class Task:
    """One SCSI command, from submission to status. Mutable: it is state, not an event.

    The caller fills the first group; the connection owns the per-attempt group and resets it
    when the task is re-issued on a new connection. `context` is the engine's slot (its
    completion event); the protocol core never looks at it.
    """

    __slots__ = (
        # Given by the caller.
        "lun", "cdb", "read_buf", "write_buf", "expected_length", "attr", "context",
        # Per attempt, owned by the connection.
        "itt", "cmdsn", "exp_datasn", "next_offset", "recovering", "next_r2tsn",
        "r2ts_open", "unsolicited_sent", "held",
        # Result.
        "done", "status", "sense", "residual", "overflow", "underflow", "error", "attempts",
        "issued_at",
    )

    def __init__(
        self,
        *,
        lun: int,
        cdb: bytes,
        read_buf: bytearray | memoryview | None = None,
        write_buf: Buffer | None = None,
        expected_length: int = 0,
        attr: int = TaskAttribute.SIMPLE,
        context: Any = None,
    ) -> None:
        if len(cdb) > 16:
            raise LocalProtocolError("CDBs longer than 16 bytes are not supported")
        if read_buf is not None and write_buf is not None:
            raise LocalProtocolError("bidirectional commands are not supported")
        # Byte-addressed views of the caller's memory: slicing a bytearray (or a memoryview of
        # wider items) would hand the framer a copy or the wrong span, and a read would then
        # complete GOOD with its data lost.
        rbuf = memoryview(read_buf).cast("B") if read_buf is not None else None
        wbuf = memoryview(write_buf).cast("B") if write_buf is not None else None
        if rbuf is not None and rbuf.readonly:
            raise LocalProtocolError("read buffer is read-only")
        buf = rbuf if rbuf is not None else wbuf
        if buf is not None and len(buf) < expected_length:
            raise LocalProtocolError("buffer shorter than the expected transfer length")
        if buf is None and expected_length:
            raise LocalProtocolError("a data transfer needs a buffer")
        self.lun = lun
        self.cdb = cdb.ljust(16, b"\0")
        self.read_buf = rbuf
        self.write_buf = wbuf
        self.expected_length = expected_length
        self.attr = attr
        self.context = context
        self.attempts = 0
        self.issued_at = 0.0
        self._reset_attempt()
        self.done = False
        self.status = -1
        self.sense = b""
        self.residual = 0
        self.overflow = False
        self.underflow = False
        self.error: Exception | None = None

    def _reset_attempt(self) -> None:
        self.itt = RESERVED_TAG
        self.cmdsn = 0
        self.exp_datasn = 0
        self.next_offset = 0
        self.recovering = False
        self.next_r2tsn = 0
        self.r2ts_open = 0
        self.unsolicited_sent = 0
        # ERL 1: a status that came before all its Data-In, kept until the holes are filled:
        # (status, sense, residual, flags, the ExpDataSN the status named).
        self.held: tuple[int, bytes, int, int, int] | None = None

    @property
    def is_write(self) -> bool:
        return self.write_buf is not None

    @property
    def transferred(self) -> int:
        """Bytes the target reported as moved: expected length minus underflow residual."""
        return self.expected_length - self.residual if self.underflow else self.expected_length

    def __repr__(self) -> str:
        return (
            f"<Task itt=0x{self.itt:08x} cmdsn={self.cmdsn} cdb={self.cdb[:1].hex()} "
            f"len={self.expected_length} done={self.done}>"
        )


# ---------------------------------------------------------------------------------------------
# Events other than task completion.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReply:
    """The target answered our NOP-Out ping."""

    itt: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TmfDone:
    itt: int
    response: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TextReply:
    """A whole text response (all continuation PDUs assembled)."""

    itt: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LogoutDone:
    itt: int
    response: int
    time2wait: int
    time2retain: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncReceived:
    message: AsyncMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectReceived:
    """A Reject. `itt` is the rejected PDU's ITT; `task` its task when still open (and now
    finished with an error unless the reject was a recoverable data digest error)."""

    reject: Reject
    itt: int
    task: Task | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryStarted:
    """ERL 1 recovery began for a task (a SNACK went out); the engine may log it."""

    task: Task
    reason: str


Event = PingReply | TmfDone | TextReply | LogoutDone | AsyncReceived | RejectReceived | RecoveryStarted


class DataDigestError(RemoteProtocolError):
    """A data digest failed and the error recovery level does not allow recovering it."""


# ---------------------------------------------------------------------------------------------
# The connection.
# ---------------------------------------------------------------------------------------------


class Connection:
    """Full feature phase of one connection.

    cmdsn / exp_statsn / exp_cmdsn / max_cmdsn are where the login left them. max_text is the
    cap on an assembled text response and max_text_pdus on the PDUs it may take (a target that
    never stops sending, even empty parts, is refused).
    """

    def __init__(
        self,
        params: Params,
        *,
        cmdsn: int,
        exp_statsn: int,
        exp_cmdsn: int,
        max_cmdsn: int,
        cid: int = 0,
        first_itt: int = 1,
        max_text: int = 1 << 20,
        max_text_pdus: int = 4096,
    ) -> None:
        self.params = params
        self.cid = cid
        self.cmdsn = cmdsn
        self.exp_statsn = exp_statsn
        self.exp_cmdsn = exp_cmdsn
        self.max_cmdsn = max_cmdsn
        self.erl = params.error_recovery_level
        self.hd = params.header_digest
        self.dd = params.data_digest
        self.max_xmit = params.max_xmit_data_segment_length
        self.framer = Framer(
            header_digest=params.header_digest,
            data_digest=params.data_digest,
            max_data_segment=params.max_recv_data_segment_length,
            placer=self._place,
            on_frame=self._handle,
        )
        self.tags = serial.TagAllocator(first_itt)
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()
        self.outbound: list[Buffer] = []
        self.completed: list[Task] = []
        self.events: list[Event] = []
        self.pdus_received = 0
        self._other_itts: dict[int, str] = {}  # ITT -> "ping" | "tmf" | "text" | "logout"
        self._text: dict[int, bytearray] = {}
        self.max_text = max_text
        self.max_text_pdus = max_text_pdus
        self._text_pdus: dict[int, int] = {}  # ITT -> text response PDUs received
        self._error: Exception | None = None
        self._placement_error: str | None = None
        # StatSN bookkeeping: the StatSN after the highest one received, and (ERL 1) the StatSN
        # of statuses that must not be acknowledged yet because data before them is missing
        # (RFC 7143 11.7.2), by ITT. ExpStatSN stops at the oldest of those.
        self._statsn_next = exp_statsn
        self._unacked: dict[int, int] = {}

    # -- submitting ------------------------------------------------------------------------

    @property
    def window_open(self) -> bool:
        return serial.le(self.cmdsn, self.max_cmdsn)

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    def submit(self, task: Task) -> None:
        """Queue a task; it is issued as soon as the CmdSN window allows."""
        self._check()
        task.done = False
        task.error = None
        self.pending.append(task)
        if serial.le(self.cmdsn, self.max_cmdsn):
            self._pump()

    def _pump(self) -> None:
        pending = self.pending
        while pending and serial.le(self.cmdsn, self.max_cmdsn):
            self._issue(pending.popleft())

    def _issue(self, task: Task) -> None:
        task._reset_attempt()
        task.attempts += 1
        itt = self.tags.allocate()
        task.itt = itt
        task.cmdsn = cmdsn = self.cmdsn
        self.cmdsn = (cmdsn + 1) & serial.MASK
        self.tasks[itt] = task
        self._send_command(task)

    def _send_command(self, task: Task) -> None:
        """The SCSI Command PDU of the task's attempt (its ITT and CmdSN), with immediate data
        and unsolicited Data-Out."""
        length = task.expected_length
        p = self.params
        imm: Buffer = b""
        flags = F_BIT | (task.attr & 7)
        wbuf = task.write_buf
        if wbuf is not None:
            flags |= CMD_WRITE
            unsolicited = 0 if p.initial_r2t else min(p.first_burst_length, length)
            if p.immediate_data:
                n = min(p.first_burst_length, length, self.max_xmit)
                imm = wbuf[:n]
                unsolicited = max(unsolicited, n)
            if unsolicited > len(imm):
                flags &= ~F_BIT  # unsolicited Data-Out follows (RFC 7143 11.3.4)
            task.unsolicited_sent = unsolicited
        elif task.read_buf is not None:
            flags |= CMD_READ
        n = len(imm)
        header = S_SCSI_COMMAND.pack(
            _OP_SCSI_COMMAND, flags, 0, n, task.lun, task.itt, length, task.cmdsn,
            self.exp_statsn, task.cdb,
        )
        self._emit(header, imm)
        if wbuf is not None and task.unsolicited_sent > n:
            self._data_out(task, RESERVED_TAG, n, task.unsolicited_sent - n)

    def _emit(self, header: bytes, data: Buffer = b"") -> None:
        out = self.outbound
        if self.hd:
            header += _DIGEST.pack(crc32c(header))
        out.append(header)
        if data:
            n = len(data)
            pad = _ZERO_PAD[n & 3]
            if self.dd:
                crc = crc32c(data)
                if pad:
                    crc = crc32c(pad, crc)
                out.append(data)
                out.append(pad + _DIGEST.pack(crc))
            else:
                out.append(data)
                if pad:
                    out.append(pad)

    def _data_out(self, task: Task, ttt: int, offset: int, length: int) -> None:
        """Data-Out PDUs for [offset, offset + length) of the task's buffer, DataSN from 0."""
        wbuf = task.write_buf
        assert wbuf is not None
        step = self.max_xmit
        end = offset + length
        datasn = 0
        lun, itt, exp_statsn = task.lun, task.itt, self.exp_statsn
        pack = S_DATA_OUT.pack
        emit = self._emit
        while offset < end:
            n = min(step, end - offset)
            final = F_BIT if offset + n >= end else 0
            emit(pack(_OP_DATA_OUT, final, 0, n, lun, itt, ttt, exp_statsn, datasn, offset),
                 wbuf[offset : offset + n])
            offset += n
            datasn += 1

    def ping(self, data: bytes = b"") -> int:
        """Send a NOP-Out ping that asks for a NOP-In; returns its ITT."""
        self._check()
        itt = self.tags.allocate()
        self._other_itts[itt] = "ping"
        self._send_pdu(NopOut(immediate=True, itt=itt, cmdsn=self.cmdsn,
                              exp_statsn=self.exp_statsn, data=data))
        return itt

    def task_management(self, function: int, *, lun: int = 0, task: Task | None = None) -> int:
        """Send an immediate task management request; returns its ITT."""
        self._check()
        itt = self.tags.allocate()
        self._other_itts[itt] = "tmf"
        self._send_pdu(TaskMgmtRequest(
            immediate=True, function=function, lun=lun, itt=itt,
            referenced_tag=task.itt if task is not None else RESERVED_TAG, cmdsn=self.cmdsn,
            exp_statsn=self.exp_statsn, ref_cmdsn=task.cmdsn if task is not None else 0,
            exp_datasn=task.exp_datasn if task is not None else 0,
        ))
        return itt

    def text(self, data: bytes, *, ttt: int = RESERVED_TAG, itt: int | None = None) -> int:
        """Send a Text Request (non-immediate, so it takes a CmdSN); returns its ITT."""
        self._check()
        if not serial.le(self.cmdsn, self.max_cmdsn):
            raise LocalProtocolError("the CmdSN window is closed")
        if itt is None:
            itt = self.tags.allocate()
            self._other_itts[itt] = "text"
            self._text[itt] = bytearray()
        self._send_pdu(TextRequest(final=True, itt=itt, ttt=ttt, cmdsn=self.cmdsn,
                                   exp_statsn=self.exp_statsn, data=data))
        self.cmdsn = serial.add(self.cmdsn, 1)
        return itt

    def logout(self, reason: int = LogoutReason.CLOSE_SESSION) -> int:
        """Send an immediate Logout Request; returns its ITT."""
        self._check()
        itt = self.tags.allocate()
        self._other_itts[itt] = "logout"
        self._send_pdu(LogoutRequest(immediate=True, reason=reason, itt=itt, cid=self.cid,
                                     cmdsn=self.cmdsn, exp_statsn=self.exp_statsn))
        return itt

    def forget(self, task: Task) -> None:
        """Drop a task from the table (after an abort): late PDUs for it become errors."""
        if self.tasks.get(task.itt) is task:
            del self.tasks[task.itt]
            self.tags.release(task.itt)
            if self._unacked:
                self._ack_status(task.itt)
        if task in self.pending:
            self.pending.remove(task)

    def unfinished(self) -> list[Task]:
        """Every task issued or queued and not done, oldest CmdSN first, for re-issue."""
        issued = sorted(self.tasks.values(), key=lambda t: serial.diff(t.cmdsn, self.cmdsn))
        return [t for t in issued if not t.done] + [t for t in self.pending if not t.done]

    def _send_pdu(self, pdu: Any) -> None:
        self.outbound.extend(encode_parts(pdu, header_digest=self.hd, data_digest=self.dd))

    def take_outbound(self) -> list[Buffer]:
        out, self.outbound = self.outbound, []
        return out

    # -- receiving -------------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        self._check()
        return self.framer.get_buffer()

    def buffer_updated(self, n: int) -> None:
        """n bytes arrived in the last get_buffer() view: process every whole PDU."""
        self._check()
        try:
            self.framer.buffer_updated(n)  # calls _handle for each whole PDU, in order
        except Exception as e:
            self._error = e
            raise

    def receive_data(self, data: Buffer) -> None:
        """Copying convenience (tests, fakes)."""
        mv = memoryview(data).cast("B")
        while len(mv):
            buf = self.get_buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def failed(self) -> Exception | None:
        return self._error

    def _place(self, header: bytes) -> memoryview | None:
        """Where a Data-In segment may land: only inside its task's buffer, at the offset the
        in-order data sequence is at (RFC 7143 DataPDUInOrder=Yes)."""
        if header[0] & 0x3F != _OP_DATA_IN:
            return None
        (_, _, _, _, dsl_word, _, itt, _, _, _, _, datasn, off, _) = S_DATA_IN.unpack_from(header)
        dsl = dsl_word & 0xFFFFFF
        task = self.tasks.get(itt)
        if task is None or task.read_buf is None:
            self._placement_error = f"Data-In for unknown or non-read task ITT 0x{itt:08x}"
            return None
        if task.recovering and datasn != task.exp_datasn:
            return None  # discarded while waiting for the retransmission (ERL 1)
        if off != task.next_offset or datasn != task.exp_datasn:
            self._placement_error = (
                f"Data-In out of order for ITT 0x{itt:08x}: DataSN {datasn} at offset {off}, "
                f"expected DataSN {task.exp_datasn} at offset {task.next_offset}"
            )
            return None
        end = off + dsl
        if end > task.expected_length:
            self._placement_error = (
                f"Data-In for ITT 0x{itt:08x} ends at {end}, past the "
                f"{task.expected_length}-byte transfer"
            )
            return None
        self._placement_error = None
        return task.read_buf[off:end]

    def _handle(self, frame: Frame) -> None:
        self.pdus_received += 1
        h = frame.header
        op = h[0] & 0x3F
        if op == _OP_DATA_IN:
            self._on_data_in(frame)
        elif op == _OP_SCSI_RESPONSE:
            self._on_scsi_response(frame)
        elif op == _OP_R2T:
            self._on_r2t(frame)
        else:
            if not frame.data_digest_ok:
                self._bad_data_digest(None, f"opcode 0x{op:02x}")
                return
            pdu = decode_frame(frame)
            handler = _HANDLERS.get(type(pdu))
            if handler is None:
                raise RemoteProtocolError(f"unexpected {type(pdu).__name__} in full feature phase")
            handler(self, pdu)

    def _window(self, exp_cmdsn: int, max_cmdsn: int) -> None:
        """Take ExpCmdSN/MaxCmdSN from a target PDU (RFC 7143 4.2.2.1): ignored when MaxCmdSN <
        ExpCmdSN - 1, and never moved backwards."""
        if serial.lt(max_cmdsn, serial.add(exp_cmdsn, -1)):
            return
        if serial.gt(exp_cmdsn, self.exp_cmdsn):
            self.exp_cmdsn = exp_cmdsn
        if serial.gt(max_cmdsn, self.max_cmdsn):
            self.max_cmdsn = max_cmdsn
            if self.pending:
                self._pump()

    def _status_sn(self, statsn: int) -> None:
        """A PDU carrying status advances ExpStatSN; a StatSN behind it is a retransmission or
        a broken target, and does not move it back."""
        if serial.ge(statsn, self._statsn_next):
            self._statsn_next = (statsn + 1) & serial.MASK
            if self._unacked:
                self._ack_status(None)
            else:
                self.exp_statsn = self._statsn_next

    def _hold_status(self, itt: int, statsn: int) -> None:
        """Receive a StatSN without acknowledging it (nor any after it) yet."""
        self._unacked.setdefault(itt, statsn)
        self._status_sn(statsn)

    def _ack_status(self, itt: int | None) -> None:
        """Release the hold of task itt (if any) and move ExpStatSN up to the oldest hold."""
        if itt is not None and self._unacked.pop(itt, None) is None:
            return
        exp = self._statsn_next
        for sn in self._unacked.values():
            if serial.lt(sn, exp):
                exp = sn
        if serial.gt(exp, self.exp_statsn):
            self.exp_statsn = exp

    def _on_data_in(self, frame: Frame) -> None:
        (_, flags, _, status, _, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn, datasn, off,
         residual) = S_DATA_IN.unpack_from(frame.header)
        task = self.tasks.get(itt)
        # The placer only saw PDUs with data: for an empty one its message is stale.
        placement_error = self._placement_error if frame.data else None
        if task is None or task.read_buf is None:
            raise RemoteProtocolError(
                placement_error or f"Data-In for unknown or non-read task ITT 0x{itt:08x}")
        # An empty data segment is never placed, and must still be received (RFC 7143 11.7.7)
        # when it is next in the sequence.
        if not frame.placed and (
            frame.data or datasn != task.exp_datasn or off != task.next_offset
        ):
            self._unplaced_data_in(task, datasn, off, placement_error)
            if flags & DATA_IN_STATUS and task.recovering:
                self._hold_status(itt, statsn)  # dropped: not acknowledged before its resend
        elif not frame.data_digest_ok:
            # Its bytes are in the buffer but not counted; the resend overwrites them. A damaged
            # resend is asked for again rather than waited for.
            task.recovering = False
            self._bad_data_digest(task, f"Data-In DataSN {datasn}")
            if flags & DATA_IN_STATUS and task.recovering:
                self._hold_status(itt, statsn)
        else:
            task.recovering = False
            task.exp_datasn = (datasn + 1) & serial.MASK
            task.next_offset = off + len(frame.data)
            if flags & DATA_IN_ACK and self.erl >= 1:
                # RFC 7143 11.16.4-5: the reserved ITT, and the TTT and LUN of this Data-In.
                self._send_pdu(SnackRequest(snack_type=SnackType.DATA_ACK, lun=lun,
                                            itt=RESERVED_TAG, ttt=ttt,
                                            exp_statsn=self.exp_statsn,
                                            begrun=task.exp_datasn, run_length=0))
            if flags & DATA_IN_STATUS:
                if not flags & F_BIT:
                    raise RemoteProtocolError("Data-In with status but without the F bit")
                self._status_sn(statsn)
                self._complete(task, status, b"", residual, flags)
            elif task.held is not None and not serial.lt(task.exp_datasn, task.held[4]):
                held = task.held  # the holes before a status are filled: it stands now
                self._complete(task, held[0], held[1], held[2], held[3])
        # The window last: the commands it releases carry the ExpStatSN this PDU advanced, and
        # a PDU is only ever matched against tasks that existed when it arrived.
        self._window(exp_cmdsn, max_cmdsn)

    def _unplaced_data_in(self, task: Task, datasn: int, off: int,
                          placement_error: str | None) -> None:
        """A Data-In that is not the next in its task's sequence: dropped, recovered (ERL 1),
        or refused."""
        if task.recovering and serial.gt(datasn, task.exp_datasn):
            return  # dropped until the retransmission from exp_datasn arrives
        if serial.lt(datasn, task.exp_datasn) and self.erl >= 1:
            return  # a duplicate of data already received (a retransmission overlap)
        if self.erl >= 1 and serial.gt(datasn, task.exp_datasn):
            self._snack_data(task, f"DataSN gap: got {datasn}, expected {task.exp_datasn}")
            return
        raise RemoteProtocolError(placement_error or (
            f"Data-In out of order for ITT 0x{task.itt:08x}: DataSN {datasn} at offset {off}, "
            f"expected DataSN {task.exp_datasn} at offset {task.next_offset}"))

    def _on_scsi_response(self, frame: Frame) -> None:
        (_, flags, response, status, _, itt, _snack, statsn, exp_cmdsn, max_cmdsn, exp_datasn,
         _bidi, residual) = S_SCSI_RESPONSE.unpack_from(frame.header)
        task = self.tasks.get(itt)
        if task is None:
            raise RemoteProtocolError(f"SCSI Response for unknown task ITT 0x{itt:08x}")
        if not frame.data_digest_ok:
            if self.erl == 0:
                raise DataDigestError("data digest error on a SCSI Response")
            # The status is what was lost: a Status SNACK asks for that StatSN again (RFC 7143
            # 11.16.1, ITT reserved), and it is not acknowledged meanwhile.
            self._hold_status(itt, statsn)
            self._send_pdu(SnackRequest(snack_type=SnackType.STATUS, itt=RESERVED_TAG,
                                        exp_statsn=self.exp_statsn, begrun=statsn,
                                        run_length=1))
            self.events.append(RecoveryStarted(
                task=task, reason=f"data digest error on the status (StatSN {statsn})"))
        elif task.read_buf is not None and serial.gt(exp_datasn, task.exp_datasn) and (
            response == 0
        ):
            if self.erl == 0:
                raise RemoteProtocolError(f"status for ITT 0x{itt:08x} after "
                                          f"{task.exp_datasn} of {exp_datasn} Data-In PDUs")
            # ERL 1: ask for the missing Data-In and keep the status, unacknowledged, until
            # they are in (a Data SNACK does not make the target send the status again).
            task.held = (status, sense_from_segment(frame.data), residual, flags, exp_datasn)
            self._hold_status(itt, statsn)
            self._snack_data(task, f"status names {exp_datasn} Data-In PDUs, "
                                   f"{task.exp_datasn} arrived")
        else:
            self._status_sn(statsn)
            if response != 0:
                self._finish(task, TargetFailure(
                    f"target failure (iSCSI response 0x{response:02x}) for ITT 0x{itt:08x}"))
            else:
                self._complete(task, status, sense_from_segment(frame.data), residual, flags)
        self._window(exp_cmdsn, max_cmdsn)

    def _complete(self, task: Task, status: int, sense: bytes, residual: int, flags: int) -> None:
        task.status = status
        task.sense = sense
        task.overflow = bool(flags & FLAG_OVERFLOW)
        task.underflow = bool(flags & FLAG_UNDERFLOW)
        task.residual = residual if (task.overflow or task.underflow) else 0
        if task.underflow and residual > task.expected_length:
            self._finish(task, RemoteProtocolError(
                f"residual {residual} larger than the {task.expected_length}-byte transfer"))
            return
        if task.read_buf is not None and status == 0:
            want = task.expected_length - task.residual if task.underflow else (
                task.expected_length)
            if task.next_offset < want:
                # Every Data-In the target sent is in (holes are found by DataSN): it just
                # sent too little. Nothing to recover, and not a success.
                self._finish(task, RemoteProtocolError(
                    f"GOOD status for ITT 0x{task.itt:08x} with {task.next_offset} of "
                    f"{want} bytes received"))
                return
        self._finish(task, None)

    def _finish(self, task: Task, error: Exception | None) -> None:
        del self.tasks[task.itt]
        self.tags.release(task.itt)
        if self._unacked:
            self._ack_status(task.itt)
        task.error = error
        task.done = True
        self.completed.append(task)

    def _on_r2t(self, frame: Frame) -> None:
        (_, _, _, _, _, itt, ttt, _statsn, exp_cmdsn, max_cmdsn, r2tsn, off,
         length) = S_R2T.unpack_from(frame.header)
        if frame.data:
            raise RemoteProtocolError("R2T with a data segment")
        task = self.tasks.get(itt)
        if task is None or task.write_buf is None:
            raise RemoteProtocolError(f"R2T for unknown or non-write task ITT 0x{itt:08x}")
        self._window(exp_cmdsn, max_cmdsn)
        if ttt == RESERVED_TAG:
            raise RemoteProtocolError("R2T with the reserved Target Transfer Tag")
        if length == 0 or off + length > task.expected_length:
            raise RemoteProtocolError(
                f"R2T for bytes {off}..{off + length} of a {task.expected_length}-byte write")
        if length > self.params.max_burst_length:
            raise RemoteProtocolError(
                f"R2T asks for {length} bytes, over MaxBurstLength {self.params.max_burst_length}")
        if r2tsn != task.next_r2tsn:
            # A recovery R2T (ERL 1) repeats an R2TSN already used (they start at 0 for each
            # task and cannot wrap: a plain comparison, not serial arithmetic).
            if not (self.erl >= 1 and r2tsn < task.next_r2tsn):
                raise RemoteProtocolError(
                    f"R2TSN {r2tsn} for ITT 0x{itt:08x}, expected {task.next_r2tsn}")
        else:
            task.next_r2tsn = (r2tsn + 1) & serial.MASK
        self._data_out(task, ttt, off, length)

    def _bad_data_digest(self, task: Task | None, what: str) -> None:
        """RFC 7143 section 7.8: at ERL 1 the receiver discards the PDU and recovers the data by
        SNACK; at ERL 0 the connection has to go."""
        if self.erl >= 1 and task is not None:
            self._snack_data(task, f"data digest error on {what}")
            return
        raise DataDigestError(f"data digest error on {what}")

    def _snack_data(self, task: Task, reason: str) -> None:
        """Ask for every Data-In from the first one missing (RunLength 0 = all the rest)."""
        if not task.recovering:
            task.recovering = True
            self._send_pdu(SnackRequest(snack_type=SnackType.DATA_R2T, lun=task.lun,
                                        itt=task.itt, exp_statsn=self.exp_statsn,
                                        begrun=task.exp_datasn, run_length=0))
            self.events.append(RecoveryStarted(task=task, reason=reason))

    # Handlers for the PDUs off the hot path.

    def _on_nop_in(self, pdu: NopIn) -> None:
        if pdu.itt != RESERVED_TAG:
            if self._other_itts.pop(pdu.itt, None) != "ping":
                raise RemoteProtocolError(f"NOP-In for unknown ping ITT 0x{pdu.itt:08x}")
            self.tags.release(pdu.itt)
            self._status_sn(pdu.statsn)
            self.events.append(PingReply(itt=pdu.itt, data=pdu.data))
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        if pdu.ttt != RESERVED_TAG:
            # The target pings us: echo with its TTT, ITT reserved, not advancing CmdSN.
            self._send_pdu(NopOut(immediate=True, lun=pdu.lun, itt=RESERVED_TAG, ttt=pdu.ttt,
                                  cmdsn=self.cmdsn, exp_statsn=self.exp_statsn, data=pdu.data))

    def _on_tmf_response(self, pdu: TaskMgmtResponse) -> None:
        self._status_sn(pdu.statsn)
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        if self._other_itts.pop(pdu.itt, None) != "tmf":
            raise RemoteProtocolError(f"task management response for unknown ITT 0x{pdu.itt:08x}")
        self.tags.release(pdu.itt)
        self.events.append(TmfDone(itt=pdu.itt, response=pdu.response))

    def _on_text_response(self, pdu: TextResponse) -> None:
        self._status_sn(pdu.statsn)
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        buf = self._text.get(pdu.itt)
        if buf is None:
            raise RemoteProtocolError(f"text response for unknown ITT 0x{pdu.itt:08x}")
        if pdu.final and pdu.cont:
            raise RemoteProtocolError("text response with both F and C bits")
        if len(buf) + len(pdu.data) > self.max_text:
            raise RemoteProtocolError(f"text response longer than {self.max_text} bytes")
        count = self._text_pdus.get(pdu.itt, 0) + 1
        if count > self.max_text_pdus:
            raise RemoteProtocolError(f"text response in more than {self.max_text_pdus} PDUs")
        self._text_pdus[pdu.itt] = count
        buf += pdu.data
        if pdu.final:
            del self._text[pdu.itt]
            self._text_pdus.pop(pdu.itt, None)
            del self._other_itts[pdu.itt]
            self.tags.release(pdu.itt)
            self.events.append(TextReply(itt=pdu.itt, data=bytes(buf)))
        else:
            if pdu.ttt == RESERVED_TAG:
                raise RemoteProtocolError("unfinished text response without a Target Transfer Tag")
            self.text(b"", ttt=pdu.ttt, itt=pdu.itt)  # ask for the next part

    def _on_logout_response(self, pdu: LogoutResponse) -> None:
        self._status_sn(pdu.statsn)
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        if self._other_itts.pop(pdu.itt, None) != "logout":
            raise RemoteProtocolError(f"logout response for unknown ITT 0x{pdu.itt:08x}")
        self.tags.release(pdu.itt)
        self.events.append(LogoutDone(itt=pdu.itt, response=pdu.response,
                                      time2wait=pdu.time2wait, time2retain=pdu.time2retain))

    def _on_async(self, pdu: AsyncMessage) -> None:
        self._status_sn(pdu.statsn)
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        self.events.append(AsyncReceived(message=pdu))

    def _on_reject(self, pdu: Reject) -> None:
        self._status_sn(pdu.statsn)
        self._window(pdu.exp_cmdsn, pdu.max_cmdsn)
        task = None
        itt = RESERVED_TAG
        rejected = pdu.data
        if len(rejected) >= BHS_LEN:
            itt = int.from_bytes(rejected[16:20], "big")
            op = rejected[0] & 0x3F
            # The CmdSN of a rejected non-immediate command is not counted by the target
            # (RFC 7143 11.17.1): unless it is sent again, every later command waits behind it.
            gap = op in _OPS_WITH_CMDSN and not rejected[0] & I_BIT
            if self._other_itts.pop(itt, None) is not None:
                self.tags.release(itt)
                self._text.pop(itt, None)
                self._text_pdus.pop(itt, None)
                if gap:
                    self._plug(int.from_bytes(rejected[24:28], "big"))
            task = self.tasks.get(itt)
            if task is not None:
                if pdu.reason != RejectReason.DATA_DIGEST_ERROR:
                    # The command (or its data) was refused: no status will come for it.
                    self._finish(task, RemoteProtocolError(
                        f"target rejected the command (reason 0x{pdu.reason:02x})"))
                    if gap and op == _OP_SCSI_COMMAND:
                        self._plug(task.cmdsn)
                elif self.erl == 0:
                    raise DataDigestError("the target found a data digest error in our PDU")
                elif op == _OP_SCSI_COMMAND:
                    # Its immediate data arrived damaged and the target discarded the whole
                    # command: send it again, same ITT and CmdSN (RFC 7143 7.2.1, 7.8).
                    task.next_r2tsn = 0
                    self._send_command(task)
                # else our Data-Out arrived damaged: a recovery R2T will ask for it again.
        self.events.append(RejectReceived(reject=pdu, itt=itt, task=task))

    def _plug(self, cmdsn: int) -> None:
        """Fill the CmdSN hole of a rejected command with a non-immediate NOP-Out carrying that
        CmdSN (a ping: its NOP-In comes back as a PingReply)."""
        itt = self.tags.allocate()
        self._other_itts[itt] = "ping"
        self._send_pdu(NopOut(immediate=False, itt=itt, cmdsn=cmdsn, exp_statsn=self.exp_statsn))


_HANDLERS: dict[type, Any] = {
    NopIn: Connection._on_nop_in,
    TaskMgmtResponse: Connection._on_tmf_response,
    TextResponse: Connection._on_text_response,
    LogoutResponse: Connection._on_logout_response,
    AsyncMessage: Connection._on_async,
    Reject: Connection._on_reject,
}
