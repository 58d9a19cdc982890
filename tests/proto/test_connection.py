# Tests of iscsifs/proto/connection.py in normal operation: a Connection driven the way a target
# drives it. The target side is written here by hand: its PDUs are built with the pdu.py
# dataclasses and encode(), fed through get_buffer()/buffer_updated() (whole and in odd chunk
# sizes), and everything the connection sends is decoded again and compared field by field with
# the PDU it must be. Digests are checked on every PDU in both directions by decoding with a
# Framer that verifies them.
#
# The hostile-target tests live in test_connection_hostile.py and import the helpers below.

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsifs.proto import serial
from iscsifs.proto.connection import (
    AsyncReceived,
    Connection,
    LogoutDone,
    PingReply,
    RecoveryStarted,
    Task,
    TextReply,
    TmfDone,
)
from iscsifs.proto.digest import crc32c
from iscsifs.proto.errors import LocalProtocolError
from iscsifs.proto.pdu import (
    MAX_DATA_SEGMENT,
    R2T,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    Framer,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
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
    decode_frame,
    encode,
)
from iscsifs.proto.serial import RESERVED_TAG
from iscsifs.proto.text import NegotiatedParams

LUN = 0x0001_0000_0000_0000  # LUN 1, peripheral addressing
READ10 = bytes.fromhex("28000000000000000800")
WRITE10 = bytes.fromhex("2a000000000000000800")
CMDSN0 = 10
STATSN0 = 500
GOOD = 0x00
CHECK_CONDITION = 0x02
# Fixed-format sense: UNIT ATTENTION, POWER ON OR RESET (29/00), as tgtd sends on a new session.
SENSE_UA = bytes.fromhex("70000600000000000a00000000290000000000")


# ---------------------------------------------------------------------------------------------
# The target side.
# ---------------------------------------------------------------------------------------------


def params(**kw: Any) -> NegotiatedParams:
    return NegotiatedParams(**kw)


def connection(p: NegotiatedParams | None = None, *, window: int = 32, cmdsn: int = CMDSN0,
               **kw: Any) -> Connection:
    """A connection as the login leaves it: ExpCmdSN = CmdSN, a window of `window` commands."""
    return Connection(p or params(), cmdsn=cmdsn, exp_statsn=STATSN0, exp_cmdsn=cmdsn,
                      max_cmdsn=serial.add(cmdsn, window - 1), **kw)


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ at every offset and are never 0 (buffers start zeroed)."""
    return bytes(((i * 7 + seed * 31) % 251) + 1 for i in range(n))


def feed(conn: Connection, wire: bytes, chunk: int | None = None) -> None:
    """Deliver bytes the way the engine does: into get_buffer(), then buffer_updated(n)."""
    mv = memoryview(wire)
    while len(mv):
        buf = conn.get_buffer()
        n = min(len(buf), len(mv), chunk or len(mv))
        buf[:n] = mv[:n]
        mv = mv[n:]
        conn.buffer_updated(n)


def decode_all(wire: bytes, *, hd: bool, dd: bool) -> list[Any]:
    """Every PDU in wire, digests verified (a bad header digest raises, a bad data digest fails
    the assert), and nothing left over."""
    framer = Framer(header_digest=hd, data_digest=dd, max_data_segment=MAX_DATA_SEGMENT)
    framer.receive_data(wire)
    frames = framer.frames()
    assert framer.at_pdu_boundary, "bytes after the last whole PDU"
    for f in frames:
        assert f.data_digest_ok
    return [decode_frame(f) for f in frames]


class Peer:
    """The target: sends PDUs with the negotiated digests and reads what the initiator sent."""

    def __init__(self, conn: Connection, chunk: int | None = None) -> None:
        self.conn = conn
        self.hd = conn.params.header_digest
        self.dd = conn.params.data_digest
        self.chunk = chunk

    def wire(self, *pdus: Any) -> bytes:
        return b"".join(encode(p, header_digest=self.hd, data_digest=self.dd) for p in pdus)

    def send(self, *pdus: Any, chunk: int | None = None) -> None:
        feed(self.conn, self.wire(*pdus), chunk or self.chunk)

    def sent_wire(self) -> bytes:
        return b"".join(bytes(part) for part in self.conn.take_outbound())

    def sent(self) -> list[Any]:
        return decode_all(self.sent_wire(), hd=self.hd, dd=self.dd)


def read_task(length: int, *, buf: bytearray | None = None, lun: int = LUN) -> tuple[Task, bytearray]:
    buf = buf if buf is not None else bytearray(length)
    return Task(lun=lun, cdb=READ10, read_buf=memoryview(buf), expected_length=length), buf


def write_task(data: bytes, *, lun: int = LUN) -> Task:
    return Task(lun=lun, cdb=WRITE10, write_buf=data, expected_length=len(data))


def read_cmd(itt: int, length: int, cmdsn: int, exp_statsn: int = STATSN0) -> ScsiCommand:
    return ScsiCommand(read=True, lun=LUN, itt=itt, expected_length=length, cmdsn=cmdsn,
                       exp_statsn=exp_statsn, cdb=READ10.ljust(16, b"\0"))


def data_in(itt: int, datasn: int, offset: int, data: bytes, *, status: int | None = None,
            statsn: int = 0, final: bool | None = None, exp_cmdsn: int = CMDSN0 + 1,
            max_cmdsn: int = CMDSN0 + 40, **kw: Any) -> DataIn:
    """A Data-In; with status= it carries the status (and the F bit)."""
    has_status = status is not None
    return DataIn(final=has_status if final is None else final, status_present=has_status,
                  status=status or 0, lun=LUN, itt=itt, statsn=statsn if has_status else 0,
                  exp_cmdsn=exp_cmdsn, max_cmdsn=max_cmdsn, datasn=datasn, buffer_offset=offset,
                  data=data, **kw)


def response(itt: int, statsn: int, *, status: int = GOOD, exp_datasn: int = 0,
             exp_cmdsn: int = CMDSN0 + 1, max_cmdsn: int = CMDSN0 + 40, **kw: Any) -> ScsiResponse:
    return ScsiResponse(status=status, itt=itt, statsn=statsn, exp_cmdsn=exp_cmdsn,
                        max_cmdsn=max_cmdsn, exp_datasn=exp_datasn, **kw)


def sense_segment(sense: bytes) -> bytes:
    return len(sense).to_bytes(2, "big") + sense


def completed(conn: Connection) -> list[Task]:
    out, conn.completed = conn.completed, []
    return out


def events(conn: Connection) -> list[Any]:
    out, conn.events = conn.events, []
    return out


# ---------------------------------------------------------------------------------------------
# READ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7, 53, 4099])
def test_read_one_data_in_with_status(chunk: int | None) -> None:
    conn = connection()
    peer = Peer(conn, chunk)
    task, buf = read_task(4096)
    conn.submit(task)
    assert peer.sent() == [read_cmd(1, 4096, CMDSN0)]
    assert conn.cmdsn == CMDSN0 + 1
    assert task.itt == 1 and task.cmdsn == CMDSN0 and task.attempts == 1

    payload = pattern(4096)
    peer.send(data_in(1, 0, 0, payload, status=GOOD, statsn=STATSN0, max_cmdsn=CMDSN0 + 50))
    assert completed(conn) == [task]
    assert task.done and task.error is None and task.status == GOOD and task.sense == b""
    assert not task.underflow and not task.overflow and task.residual == 0
    assert task.transferred == 4096
    # The data is in the caller's own bytearray, not a copy of it.
    assert task.read_buf is not None and task.read_buf.obj is buf
    assert bytes(buf) == payload
    assert conn.exp_statsn == STATSN0 + 1
    assert conn.max_cmdsn == CMDSN0 + 50
    assert conn.tasks == {} and 1 not in conn.tags
    assert peer.sent() == []


@pytest.mark.parametrize("chunk", [None, 1, 13, 8191])
def test_read_several_data_in_then_response_with_sense(chunk: int | None) -> None:
    conn = connection(params(max_recv_data_segment_length=8192))
    peer = Peer(conn, chunk)
    task, buf = read_task(20000)
    conn.submit(task)
    assert peer.sent() == [read_cmd(1, 20000, CMDSN0)]
    payload = pattern(20000, seed=3)
    peer.send(
        data_in(1, 0, 0, payload[:8192]),
        data_in(1, 1, 8192, payload[8192:16384]),
        data_in(1, 2, 16384, payload[16384:], final=True),
    )
    assert not task.done and conn.exp_statsn == STATSN0
    assert bytes(buf) == payload
    peer.send(response(1, STATSN0, status=CHECK_CONDITION, exp_datasn=3,
                       data=sense_segment(SENSE_UA)))
    assert completed(conn) == [task]
    assert task.status == CHECK_CONDITION and task.sense == SENSE_UA and task.error is None
    assert conn.exp_statsn == STATSN0 + 1


def test_read_status_in_separate_response_good() -> None:
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(1000)
    conn.submit(task)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(1000), final=True),
              response(1, STATSN0, exp_datasn=1))
    assert completed(conn) == [task]
    assert task.status == GOOD and task.error is None and bytes(buf) == pattern(1000)


@pytest.mark.parametrize("in_data_in", [True, False])
def test_read_underflow(in_data_in: bool) -> None:
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(8192)
    conn.submit(task)
    peer.sent()
    if in_data_in:
        peer.send(data_in(1, 0, 0, pattern(3000), status=GOOD, statsn=STATSN0, underflow=True,
                          residual=5192))
    else:
        peer.send(data_in(1, 0, 0, pattern(3000), final=True),
                  response(1, STATSN0, exp_datasn=1, underflow=True, residual=5192))
    assert completed(conn) == [task]
    assert task.error is None and task.status == GOOD
    assert task.underflow and not task.overflow and task.residual == 5192
    assert task.transferred == 3000
    assert bytes(buf[:3000]) == pattern(3000) and buf[3000:] == bytes(5192)


@pytest.mark.parametrize("in_data_in", [True, False])
def test_read_overflow(in_data_in: bool) -> None:
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(4096)
    conn.submit(task)
    peer.sent()
    if in_data_in:
        peer.send(data_in(1, 0, 0, pattern(4096), status=GOOD, statsn=STATSN0, overflow=True,
                          residual=512))
    else:
        peer.send(data_in(1, 0, 0, pattern(4096), final=True),
                  response(1, STATSN0, exp_datasn=1, overflow=True, residual=512))
    assert completed(conn) == [task]
    assert task.error is None and task.overflow and not task.underflow
    assert task.residual == 512 and task.transferred == 4096
    assert bytes(buf) == pattern(4096)


def test_residual_ignored_without_its_flag() -> None:
    conn = connection()
    peer = Peer(conn)
    task, _ = read_task(16)
    conn.submit(task)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(16), status=GOOD, statsn=STATSN0, residual=7))
    assert task.done and task.residual == 0 and task.transferred == 16


def test_tgtd_stale_data_before_check_condition() -> None:
    """tgtd sends Data-In with stale buffer contents and then CHECK CONDITION (e.g. the UNIT
    ATTENTION of a new session): the task must report that status and sense, not GOOD."""
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(4096)
    conn.submit(task)
    peer.sent()
    stale = bytes(range(256)) * 16
    peer.send(data_in(1, 0, 0, stale, final=True),
              response(1, STATSN0, status=CHECK_CONDITION, exp_datasn=1,
                       data=sense_segment(SENSE_UA)))
    assert completed(conn) == [task]
    assert task.error is None
    assert task.status == CHECK_CONDITION and task.sense == SENSE_UA
    assert bytes(buf) == stale  # meaningless, but inside the buffer; scsi.py raises on status


def test_read_into_a_slice_of_a_larger_buffer() -> None:
    conn = connection()
    peer = Peer(conn)
    backing = bytearray(b"\xee" * 6000)
    view = memoryview(backing)[1000:5000]
    task = Task(lun=LUN, cdb=READ10, read_buf=view, expected_length=4000)
    conn.submit(task)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(2000)), data_in(1, 1, 2000, pattern(2000, 1),
                                                        status=GOOD, statsn=STATSN0))
    assert task.done and task.error is None
    assert backing[:1000] == b"\xee" * 1000 and backing[5000:] == b"\xee" * 1000
    assert backing[1000:5000] == pattern(2000) + pattern(2000, 1)


def test_large_data_in_is_received_straight_into_the_callers_buffer() -> None:
    """Past the staged prefix, get_buffer() hands out the caller's own memory at the right
    offset: recv_into writes the data segment there, with no copy."""
    conn = connection(params(max_recv_data_segment_length=65536))
    peer = Peer(conn)
    task, buf = read_task(65536)
    conn.submit(task)
    peer.sent()
    payload = pattern(65536, 8)
    wire = peer.wire(data_in(1, 0, 0, payload[:40000]),
                     data_in(1, 1, 40000, payload[40000:], status=GOOD, statsn=STATSN0))
    feed(conn, wire[:48 + 100])  # header and the first 100 bytes of the segment
    view = conn.get_buffer()
    assert view.obj is buf and len(view) == 40000 - 100
    view[:] = wire[148:48 + 40000]
    conn.buffer_updated(len(view))
    assert task.next_offset == 40000 and bytes(buf[:40000]) == payload[:40000]
    feed(conn, wire[48 + 40000:])
    assert task.done and task.error is None and bytes(buf) == payload


def test_read_buffer_longer_than_transfer_is_not_written_past_the_transfer() -> None:
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(100, buf=bytearray(b"\x01" * 200))
    conn.submit(task)
    assert peer.sent()[0].expected_length == 100
    peer.send(data_in(1, 0, 0, pattern(100), status=GOOD, statsn=STATSN0))
    assert task.done and bytes(buf) == pattern(100) + b"\x01" * 100


def test_zero_length_data_in_is_received() -> None:
    """RFC 7143 11.7.7: 0-length data segments should be avoided, but initiators MUST be able
    to receive them."""
    conn = connection()
    peer = Peer(conn)
    task, buf = read_task(100)
    conn.submit(task)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(100)), data_in(1, 1, 100, b"", status=GOOD,
                                                       statsn=STATSN0))
    assert completed(conn) == [task]
    assert task.error is None and bytes(buf) == pattern(100)
    assert conn.exp_statsn == STATSN0 + 1


def test_zero_length_read() -> None:
    conn = connection()
    peer = Peer(conn)
    task = Task(lun=LUN, cdb=READ10, read_buf=memoryview(bytearray()), expected_length=0)
    conn.submit(task)
    assert peer.sent() == [read_cmd(1, 0, CMDSN0)]
    peer.send(response(1, STATSN0))
    assert task.done and task.error is None and task.status == GOOD


def test_non_data_command() -> None:
    conn = connection()
    peer = Peer(conn)
    tur = Task(lun=LUN, cdb=bytes(6))
    conn.submit(tur)
    assert peer.sent() == [ScsiCommand(lun=LUN, itt=1, expected_length=0, cmdsn=CMDSN0,
                                       exp_statsn=STATSN0, cdb=bytes(16))]
    peer.send(response(1, STATSN0))
    assert tur.done and tur.status == GOOD and tur.error is None


def test_task_attribute_and_many_tasks_interleaved() -> None:
    conn = connection()
    peer = Peer(conn)
    t1 = Task(lun=LUN, cdb=READ10, read_buf=memoryview(bytearray(8)), expected_length=8,
              attr=TaskAttribute.ORDERED)
    t2, b2 = read_task(8)
    conn.submit(t1)
    conn.submit(t2)
    cmds = peer.sent()
    assert [c.attr for c in cmds] == [TaskAttribute.ORDERED, TaskAttribute.SIMPLE]
    assert [(c.itt, c.cmdsn) for c in cmds] == [(1, CMDSN0), (2, CMDSN0 + 1)]
    # Answers out of order: each lands in its own buffer.
    peer.send(data_in(2, 0, 0, b"BBBBBBBB", status=GOOD, statsn=STATSN0),
              data_in(1, 0, 0, b"AAAAAAAA", status=GOOD, statsn=STATSN0 + 1))
    assert completed(conn) == [t2, t1]
    assert bytes(t1.read_buf or b"") == b"AAAAAAAA" and bytes(b2) == b"BBBBBBBB"
    assert conn.exp_statsn == STATSN0 + 2


# ---------------------------------------------------------------------------------------------
# WRITE
# ---------------------------------------------------------------------------------------------


def write_cmd(itt: int, length: int, cmdsn: int, *, final: bool = True, data: bytes = b"",
              exp_statsn: int = STATSN0) -> ScsiCommand:
    return ScsiCommand(final=final, write=True, lun=LUN, itt=itt, expected_length=length,
                       cmdsn=cmdsn, exp_statsn=exp_statsn, cdb=WRITE10.ljust(16, b"\0"),
                       data=data)


def data_out(itt: int, ttt: int, datasn: int, offset: int, data: bytes, final: bool,
             exp_statsn: int = STATSN0) -> DataOut:
    return DataOut(final=final, lun=LUN, itt=itt, ttt=ttt, exp_statsn=exp_statsn, datasn=datasn,
                   buffer_offset=offset, data=data)


def r2t(itt: int, ttt: int, r2tsn: int, offset: int, length: int, statsn: int = STATSN0) -> R2T:
    return R2T(lun=LUN, itt=itt, ttt=ttt, statsn=statsn, exp_cmdsn=CMDSN0 + 1,
               max_cmdsn=CMDSN0 + 40, r2tsn=r2tsn, buffer_offset=offset, desired_length=length)


def test_write_all_immediate() -> None:
    conn = connection(params(immediate_data=True, initial_r2t=True))
    peer = Peer(conn)
    data = pattern(4096, 9)
    task = write_task(data)
    conn.submit(task)
    assert peer.sent() == [write_cmd(1, 4096, CMDSN0, data=data)]
    peer.send(response(1, STATSN0))
    assert completed(conn) == [task] and task.error is None and task.status == GOOD


def test_write_immediate_then_r2t() -> None:
    conn = connection(params(immediate_data=True, initial_r2t=True,
                             max_xmit_data_segment_length=8192))
    peer = Peer(conn)
    data = pattern(20000, 4)
    task = write_task(data)
    conn.submit(task)
    # Immediate data is capped by MaxXmitDataSegmentLength; F=1: no unsolicited Data-Out.
    assert peer.sent() == [write_cmd(1, 20000, CMDSN0, data=data[:8192])]
    peer.send(r2t(1, 0x1000, 0, 8192, 11808))
    assert peer.sent() == [
        data_out(1, 0x1000, 0, 8192, data[8192:16384], False),
        data_out(1, 0x1000, 1, 16384, data[16384:], True),
    ]
    peer.send(response(1, STATSN0))
    assert task.done and task.error is None


def test_write_unsolicited_data_out_then_r2t() -> None:
    """InitialR2T=No, ImmediateData=No: unsolicited Data-Out up to FirstBurstLength with the
    reserved TTT, then R2Ts answered in PDUs of at most MaxXmitDataSegmentLength."""
    p = params(immediate_data=False, initial_r2t=False, first_burst_length=16384,
               max_xmit_data_segment_length=4096, max_burst_length=262144)
    conn = connection(p)
    peer = Peer(conn)
    data = pattern(40000, 5)
    task = write_task(data)
    conn.submit(task)
    assert peer.sent() == [write_cmd(1, 40000, CMDSN0, final=False)] + [
        data_out(1, RESERVED_TAG, i, i * 4096, data[i * 4096:(i + 1) * 4096], i == 3)
        for i in range(4)
    ]
    peer.send(r2t(1, 0x2000, 0, 16384, 23616))
    sent = peer.sent()
    assert sent == [
        data_out(1, 0x2000, i, 16384 + i * 4096, data[16384 + i * 4096:min(40000, 16384 + (i + 1) * 4096)], i == 5)
        for i in range(6)
    ]
    assert len(sent[-1].data) == 3136
    peer.send(response(1, STATSN0))
    assert task.done and task.error is None


def test_write_crossing_first_and_max_burst_unaligned() -> None:
    """Immediate + unsolicited Data-Out to FirstBurstLength, then R2Ts of MaxBurstLength, the
    last ending on an odd byte (the data segment is padded on the wire)."""
    p = params(immediate_data=True, initial_r2t=False, first_burst_length=20000,
               max_burst_length=16384, max_xmit_data_segment_length=8192)
    conn = connection(p)
    peer = Peer(conn)
    data = pattern(50001, 6)
    task = write_task(data)
    conn.submit(task)
    assert peer.sent() == [
        write_cmd(1, 50001, CMDSN0, final=False, data=data[:8192]),
        data_out(1, RESERVED_TAG, 0, 8192, data[8192:16384], False),
        data_out(1, RESERVED_TAG, 1, 16384, data[16384:20000], True),
    ]
    peer.send(r2t(1, 0x31, 0, 20000, 16384))
    assert peer.sent() == [
        data_out(1, 0x31, 0, 20000, data[20000:28192], False),
        data_out(1, 0x31, 1, 28192, data[28192:36384], True),
    ]
    peer.send(r2t(1, 0x32, 1, 36384, 13617))
    wire = peer.sent_wire()
    assert decode_all(wire, hd=False, dd=False) == [
        data_out(1, 0x32, 0, 36384, data[36384:44576], False),
        data_out(1, 0x32, 1, 44576, data[44576:], True),
    ]
    assert len(wire) == 48 + 8192 + 48 + 5425 + 3  # 5425 bytes + 3 of padding
    peer.send(response(1, STATSN0))
    assert task.done and task.error is None and task.status == GOOD


def test_write_immediate_fills_first_burst() -> None:
    p = params(immediate_data=True, initial_r2t=False, first_burst_length=8192,
               max_xmit_data_segment_length=8192)
    conn = connection(p)
    peer = Peer(conn)
    data = pattern(20000)
    conn.submit(write_task(data))
    assert peer.sent() == [write_cmd(1, 20000, CMDSN0, data=data[:8192])]


def test_write_smaller_than_first_burst_all_unsolicited() -> None:
    p = params(immediate_data=False, initial_r2t=False, first_burst_length=65536)
    conn = connection(p)
    peer = Peer(conn)
    data = pattern(1001)
    conn.submit(write_task(data))
    assert peer.sent() == [write_cmd(1, 1001, CMDSN0, final=False),
                           data_out(1, RESERVED_TAG, 0, 0, data, True)]


def test_write_from_bytearray_and_memoryview_slice() -> None:
    conn = connection(params(immediate_data=True, initial_r2t=True))
    peer = Peer(conn)
    backing = bytearray(pattern(300))
    conn.submit(Task(lun=LUN, cdb=WRITE10, write_buf=memoryview(backing)[100:200],
                     expected_length=100))
    assert peer.sent() == [write_cmd(1, 100, CMDSN0, data=bytes(backing[100:200]))]


def test_r2t_exp_statsn_follows_status() -> None:
    conn = connection(params(immediate_data=False))
    peer = Peer(conn)
    w = write_task(pattern(100))
    conn.submit(w)
    peer.sent()
    r, _ = read_task(4)
    conn.submit(r)
    peer.sent()
    peer.send(data_in(2, 0, 0, b"abcd", status=GOOD, statsn=STATSN0))
    peer.send(r2t(1, 7, 0, 0, 100, statsn=STATSN0 + 1))  # R2T does not advance StatSN
    assert peer.sent() == [data_out(1, 7, 0, 0, pattern(100), True, exp_statsn=STATSN0 + 1)]
    assert conn.exp_statsn == STATSN0 + 1


# ---------------------------------------------------------------------------------------------
# The CmdSN window and immediate PDUs
# ---------------------------------------------------------------------------------------------


def test_commands_queue_at_max_cmdsn_and_go_out_in_order() -> None:
    conn = connection(window=2)
    peer = Peer(conn)
    tasks = [read_task(4)[0] for _ in range(5)]
    for t in tasks:
        conn.submit(t)
    assert [(c.itt, c.cmdsn) for c in peer.sent()] == [(1, CMDSN0), (2, CMDSN0 + 1)]
    assert not conn.window_open and list(conn.pending) == tasks[2:]
    assert conn.in_flight == 2
    # A Data-In opens the window by one: exactly one more command.
    peer.send(data_in(1, 0, 0, b"abcd", status=GOOD, statsn=STATSN0, exp_cmdsn=CMDSN0 + 2,
                      max_cmdsn=CMDSN0 + 2))
    assert [(c.itt, c.cmdsn, c.exp_statsn) for c in peer.sent()] == [
        (3, CMDSN0 + 2, STATSN0 + 1)]
    # A NOP-In (no status) opens it by two.
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0 + 1,
                    exp_cmdsn=CMDSN0 + 2, max_cmdsn=CMDSN0 + 4))
    assert [(c.itt, c.cmdsn) for c in peer.sent()] == [(4, CMDSN0 + 3), (5, CMDSN0 + 4)]
    assert not conn.pending and conn.exp_statsn == STATSN0 + 1
    assert conn.exp_cmdsn == CMDSN0 + 2 and conn.max_cmdsn == CMDSN0 + 4


def test_window_opened_by_scsi_response_r2t_and_async() -> None:
    conn = connection(window=1)
    peer = Peer(conn)
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    assert len(peer.sent()) == 1
    peer.send(response(1, STATSN0, exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 1))
    assert [c.cmdsn for c in peer.sent()] == [CMDSN0 + 1]
    peer.send(AsyncMessage(statsn=STATSN0 + 1, exp_cmdsn=CMDSN0 + 2, max_cmdsn=CMDSN0 + 2,
                           async_event=AsyncEvent.SCSI_ASYNC_EVENT))
    assert [c.cmdsn for c in peer.sent()] == [CMDSN0 + 2]
    peer.send(TaskMgmtResponse(response=0, itt=conn.task_management(TmfFunction.CLEAR_ACA),
                               statsn=STATSN0 + 2, exp_cmdsn=CMDSN0 + 3, max_cmdsn=CMDSN0 + 3))
    assert [type(p).__name__ for p in peer.sent()] == ["TaskMgmtRequest", "ScsiCommand"]


def test_window_wraps_around_2_32() -> None:
    start = 0xFFFF_FFFE
    conn = connection(window=4, cmdsn=start)
    peer = Peer(conn)
    for _ in range(5):
        conn.submit(Task(lun=LUN, cdb=bytes(6)))
    assert [c.cmdsn for c in peer.sent()] == [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1]
    assert len(conn.pending) == 1
    peer.send(response(1, STATSN0, exp_cmdsn=0xFFFF_FFFF, max_cmdsn=2))
    assert [c.cmdsn for c in peer.sent()] == [2]


def test_immediate_pdus_do_not_advance_cmdsn() -> None:
    conn = connection()
    peer = Peer(conn)
    ping = conn.ping(b"hello")
    tmf = conn.task_management(TmfFunction.LOGICAL_UNIT_RESET, lun=LUN)
    logout = conn.logout(LogoutReason.CLOSE_CONNECTION)
    assert conn.cmdsn == CMDSN0
    assert peer.sent() == [
        NopOut(immediate=True, itt=ping, cmdsn=CMDSN0, exp_statsn=STATSN0, data=b"hello"),
        TaskMgmtRequest(immediate=True, function=TmfFunction.LOGICAL_UNIT_RESET, lun=LUN,
                        itt=tmf, cmdsn=CMDSN0, exp_statsn=STATSN0),
        LogoutRequest(immediate=True, reason=LogoutReason.CLOSE_CONNECTION, itt=logout, cid=0,
                      cmdsn=CMDSN0, exp_statsn=STATSN0),
    ]
    assert len({ping, tmf, logout}) == 3 and RESERVED_TAG not in {ping, tmf, logout}
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    assert peer.sent()[0].cmdsn == CMDSN0
    # A text request is not immediate: it takes a CmdSN.
    itt = conn.text(b"a=b\0")
    assert peer.sent() == [TextRequest(itt=itt, cmdsn=CMDSN0 + 1, exp_statsn=STATSN0,
                                       data=b"a=b\0")]
    assert conn.cmdsn == CMDSN0 + 2


def test_text_refused_when_window_closed() -> None:
    conn = connection(window=0)
    with pytest.raises(LocalProtocolError):
        conn.text(b"a=b\0")
    assert conn.failed is None  # a local refusal is not sticky
    assert conn.ping() != RESERVED_TAG


def test_exp_statsn_follows_every_status_pdu() -> None:
    conn = connection()
    peer = Peer(conn)
    statsn = STATSN0
    t, _ = read_task(4)
    conn.submit(t)
    peer.send(data_in(1, 0, 0, b"abcd", status=GOOD, statsn=statsn))
    statsn += 1
    assert conn.exp_statsn == statsn
    tmf = conn.task_management(TmfFunction.ABORT_TASK_SET, lun=LUN)
    peer.send(TaskMgmtResponse(response=0, itt=tmf, statsn=statsn, exp_cmdsn=CMDSN0 + 1,
                               max_cmdsn=CMDSN0 + 40))
    statsn += 1
    assert conn.exp_statsn == statsn
    ping = conn.ping()
    peer.send(NopIn(itt=ping, ttt=RESERVED_TAG, statsn=statsn, exp_cmdsn=CMDSN0 + 1,
                    max_cmdsn=CMDSN0 + 40))
    statsn += 1
    assert conn.exp_statsn == statsn
    # A NOP-In that answers nothing carries the next StatSN without consuming it.
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=statsn, exp_cmdsn=CMDSN0 + 1,
                    max_cmdsn=CMDSN0 + 40))
    assert conn.exp_statsn == statsn
    peer.send(AsyncMessage(statsn=statsn, exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 40,
                           async_event=AsyncEvent.SCSI_ASYNC_EVENT))
    statsn += 1
    assert conn.exp_statsn == statsn
    peer.sent()
    conn.submit(Task(lun=LUN, cdb=bytes(6)))
    assert peer.sent()[0].exp_statsn == statsn


def test_target_nop_in_ping_is_echoed() -> None:
    conn = connection()
    peer = Peer(conn)
    peer.send(NopIn(lun=LUN, itt=RESERVED_TAG, ttt=0x0BAD_F00D, statsn=STATSN0,
                    exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40, data=b"are you there?"))
    assert peer.sent() == [NopOut(immediate=True, lun=LUN, itt=RESERVED_TAG, ttt=0x0BAD_F00D,
                                  cmdsn=CMDSN0, exp_statsn=STATSN0, data=b"are you there?")]
    assert conn.exp_statsn == STATSN0 and conn.cmdsn == CMDSN0
    assert events(conn) == [] and not conn.tags


def test_our_ping_answered() -> None:
    conn = connection()
    peer = Peer(conn)
    itt = conn.ping(b"x" * 5)
    assert itt in conn.tags
    peer.sent()
    peer.send(NopIn(itt=itt, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
                    max_cmdsn=CMDSN0 + 40, data=b"x" * 5))
    assert events(conn) == [PingReply(itt=itt, data=b"x" * 5)]
    assert itt not in conn.tags and peer.sent() == []
    assert conn.exp_statsn == STATSN0 + 1


def test_abort_task_and_tmf_done() -> None:
    conn = connection()
    peer = Peer(conn)
    t, _ = read_task(4)
    conn.submit(t)
    peer.sent()
    itt = conn.task_management(TmfFunction.ABORT_TASK, lun=LUN, task=t)
    assert peer.sent() == [TaskMgmtRequest(
        immediate=True, function=TmfFunction.ABORT_TASK, lun=LUN, itt=itt, referenced_tag=1,
        cmdsn=CMDSN0 + 1, exp_statsn=STATSN0, ref_cmdsn=CMDSN0, exp_datasn=0)]
    peer.send(TaskMgmtResponse(response=0, itt=itt, statsn=STATSN0, exp_cmdsn=CMDSN0 + 1,
                               max_cmdsn=CMDSN0 + 40))
    assert events(conn) == [TmfDone(itt=itt, response=0)]
    conn.forget(t)
    assert not conn.tasks and not conn.tags and not t.done


def test_text_with_continuation() -> None:
    conn = connection(params(max_recv_data_segment_length=512))
    peer = Peer(conn)
    itt = conn.text(b"SendTargets=All\0")
    assert peer.sent() == [TextRequest(itt=itt, cmdsn=CMDSN0, exp_statsn=STATSN0,
                                       data=b"SendTargets=All\0")]
    part1 = b"TargetName=iqn.2001-04.com.example:" + b"a" * 400
    part2 = b"b" * 100 + b"\0TargetAddress=127.0.0.1:3260,1\0"
    peer.send(TextResponse(final=False, cont=True, itt=itt, ttt=0x44, statsn=STATSN0,
                           exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 40, data=part1))
    assert events(conn) == []
    assert peer.sent() == [TextRequest(itt=itt, ttt=0x44, cmdsn=CMDSN0 + 1,
                                       exp_statsn=STATSN0 + 1, data=b"")]
    peer.send(TextResponse(final=True, itt=itt, ttt=RESERVED_TAG, statsn=STATSN0 + 1,
                           exp_cmdsn=CMDSN0 + 2, max_cmdsn=CMDSN0 + 40, data=part2))
    assert events(conn) == [TextReply(itt=itt, data=part1 + part2)]
    assert itt not in conn.tags and conn.exp_statsn == STATSN0 + 2 and peer.sent() == []


def test_logout() -> None:
    conn = connection()
    peer = Peer(conn)
    itt = conn.logout()
    assert peer.sent() == [LogoutRequest(itt=itt, cmdsn=CMDSN0, exp_statsn=STATSN0)]
    peer.send(LogoutResponse(response=0, itt=itt, statsn=STATSN0, exp_cmdsn=CMDSN0,
                             max_cmdsn=CMDSN0 + 40, time2wait=2, time2retain=20))
    assert events(conn) == [LogoutDone(itt=itt, response=0, time2wait=2, time2retain=20)]
    assert conn.exp_statsn == STATSN0 + 1 and not conn.tags


@pytest.mark.parametrize("event", list(AsyncEvent))
def test_async_message(event: AsyncEvent) -> None:
    conn = connection()
    peer = Peer(conn)
    msg = AsyncMessage(lun=LUN, statsn=STATSN0, exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40,
                       async_event=event, async_vcode=3, parameter1=1, parameter2=2,
                       parameter3=30, data=sense_segment(SENSE_UA) if event == 0 else b"")
    peer.send(msg)
    assert events(conn) == [AsyncReceived(message=msg)]
    assert conn.exp_statsn == STATSN0 + 1 and peer.sent() == [] and conn.failed is None


# ---------------------------------------------------------------------------------------------
# Re-issue bookkeeping
# ---------------------------------------------------------------------------------------------


def test_unfinished_oldest_first_then_pending_across_wrap() -> None:
    conn = connection(window=3, cmdsn=0xFFFF_FFFF)
    peer = Peer(conn)
    tasks = [Task(lun=LUN, cdb=bytes(6)) for _ in range(5)]
    for t in tasks:
        conn.submit(t)
    assert [c.cmdsn for c in peer.sent()] == [0xFFFF_FFFF, 0, 1]
    assert conn.unfinished() == tasks
    peer.send(response(tasks[1].itt, STATSN0, exp_cmdsn=0, max_cmdsn=1))
    assert conn.unfinished() == [tasks[0], tasks[2], tasks[3], tasks[4]]
    # Re-issued on a new connection they go out in that order, each with a fresh attempt.
    conn2 = connection(cmdsn=7)
    peer2 = Peer(conn2)
    for t in conn.unfinished():
        conn2.submit(t)
    assert [(c.itt, c.cmdsn) for c in peer2.sent()] == [(1, 7), (2, 8), (3, 9), (4, 10)]
    assert [t.attempts for t in tasks] == [2, 1, 2, 1, 1]  # 3 and 4 never left conn


def test_forget_issued_and_pending() -> None:
    conn = connection(window=1)
    peer = Peer(conn)
    a, _ = read_task(4)
    b, _ = read_task(4)
    conn.submit(a)
    conn.submit(b)
    peer.sent()
    conn.forget(a)
    conn.forget(b)
    assert conn.unfinished() == [] and not conn.tags and not conn.pending
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0 + 1,
                    max_cmdsn=CMDSN0 + 5))
    assert peer.sent() == []  # b was forgotten before it went out


def test_task_resubmitted_after_forget_gets_new_itt_and_clean_state() -> None:
    conn = connection()
    peer = Peer(conn)
    t, buf = read_task(8)
    conn.submit(t)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"1234"))
    conn.forget(t)
    conn.submit(t)
    assert peer.sent() == [read_cmd(2, 8, CMDSN0 + 1)]
    assert t.exp_datasn == 0 and t.next_offset == 0 and t.attempts == 2
    peer.send(data_in(2, 0, 0, b"abcdefgh", status=GOOD, statsn=STATSN0))
    assert t.done and t.error is None and bytes(buf) == b"abcdefgh"


def test_task_argument_checks() -> None:
    with pytest.raises(LocalProtocolError):
        Task(lun=0, cdb=bytes(17))
    with pytest.raises(LocalProtocolError):
        Task(lun=0, cdb=READ10, read_buf=memoryview(bytearray(4)), write_buf=b"x",
             expected_length=1)
    with pytest.raises(LocalProtocolError):
        Task(lun=0, cdb=READ10, read_buf=memoryview(bytearray(4)), expected_length=5)
    with pytest.raises(LocalProtocolError):
        Task(lun=0, cdb=READ10, expected_length=5)
    with pytest.raises(LocalProtocolError):  # data cannot land in read-only memory
        Task(lun=0, cdb=READ10, read_buf=memoryview(b"abcd"), expected_length=4)


def test_read_into_a_bytearray_or_wide_memoryview_lands_in_it() -> None:
    """A read buffer is used in place whatever its Python type: a bytearray passed directly,
    or a memoryview of another item size, is written through, never into a copy."""
    conn = connection()
    peer = Peer(conn)
    ba = bytearray(8)
    t1 = Task(lun=LUN, cdb=READ10, read_buf=ba, expected_length=8)
    wide = memoryview(bytearray(8)).cast("I")
    t2 = Task(lun=LUN, cdb=READ10, read_buf=wide, expected_length=8)
    conn.submit(t1)
    conn.submit(t2)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"12345678", status=GOOD, statsn=STATSN0),
              data_in(2, 0, 0, b"abcdefgh", status=GOOD, statsn=STATSN0 + 1))
    assert t1.done and t1.error is None and bytes(ba) == b"12345678"
    assert t2.done and t2.error is None and wide.tobytes() == b"abcdefgh"


# ---------------------------------------------------------------------------------------------
# Digests, both ways, on every PDU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("dd", [False, True])
def test_digests_on_every_pdu(hd: bool, dd: bool) -> None:
    p = params(header_digest=hd, data_digest=dd, immediate_data=True, initial_r2t=False,
               first_burst_length=4096, max_xmit_data_segment_length=2048)
    conn = connection(p)
    peer = Peer(conn, chunk=5)
    r, buf = read_task(3001)
    w = write_task(pattern(6001))
    conn.submit(r)
    conn.submit(w)
    ping = conn.ping(b"abc")
    conn.text(b"x=y\0")
    wire = peer.sent_wire()
    pdus = decode_all(wire, hd=hd, dd=dd)
    assert [type(x).__name__ for x in pdus] == [
        "ScsiCommand", "ScsiCommand", "DataOut", "NopOut", "TextRequest"]
    # Walk the wire by hand as well: the header digest is the CRC32C of the 48-byte BHS, the
    # data digest that of data + padding, both little-endian, and nothing else is in between.
    pos = 0
    for x in pdus:
        header = wire[pos:pos + 48]
        pos += 48
        if hd:
            assert wire[pos:pos + 4] == crc32c(header).to_bytes(4, "little")
            pos += 4
        n = len(x.data)
        if n:
            padded = wire[pos:pos + n + (-n & 3)]
            assert padded[:n] == x.data
            pos += len(padded)
            if dd:
                assert wire[pos:pos + 4] == crc32c(padded).to_bytes(4, "little")
                pos += 4
    assert pos == len(wire)
    peer.send(
        data_in(1, 0, 0, pattern(3001)[:2000]),
        data_in(1, 1, 2000, pattern(3001)[2000:], status=GOOD, statsn=STATSN0),
        r2t(2, 9, 0, 4096, 1905),
        NopIn(itt=ping, ttt=RESERVED_TAG, statsn=STATSN0 + 1, exp_cmdsn=CMDSN0,
              max_cmdsn=CMDSN0 + 40, data=b"abc"),
        NopIn(itt=RESERVED_TAG, ttt=5, statsn=STATSN0 + 2, exp_cmdsn=CMDSN0,
              max_cmdsn=CMDSN0 + 40, data=b"12345"),
        response(2, STATSN0 + 2),
    )
    assert r.done and r.error is None and bytes(buf) == pattern(3001)
    assert w.done and w.error is None
    assert [type(x).__name__ for x in peer.sent()] == ["DataOut", "NopOut"]
    assert PingReply(itt=ping, data=b"abc") in events(conn)


# ---------------------------------------------------------------------------------------------
# ERL 1 in normal operation
# ---------------------------------------------------------------------------------------------


def test_data_ack_snack_answers_the_a_bit() -> None:
    """RFC 7143 11.16.4/11.16.5: a DataACK carries the reserved ITT, the TTT and LUN of the
    Data-In with the A bit, BegRun = the next expected DataSN and RunLength 0."""
    conn = connection(params(error_recovery_level=1))
    peer = Peer(conn)
    t, buf = read_task(8)
    conn.submit(t)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"1234", ack=True, ttt=0x99, final=True))
    assert peer.sent() == [SnackRequest(snack_type=SnackType.DATA_ACK, lun=LUN,
                                        itt=RESERVED_TAG, ttt=0x99, exp_statsn=STATSN0,
                                        begrun=1, run_length=0)]
    peer.send(data_in(1, 1, 4, b"5678", status=GOOD, statsn=STATSN0))
    assert t.done and t.error is None and bytes(buf) == b"12345678"


def test_a_bit_ignored_at_erl0() -> None:
    conn = connection()
    peer = Peer(conn)
    t, _ = read_task(4)
    conn.submit(t)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"1234", ack=True, ttt=0x99, status=GOOD, statsn=STATSN0))
    assert peer.sent() == [] and t.done


def test_recovery_event_is_reported() -> None:
    conn = connection(params(error_recovery_level=1))
    peer = Peer(conn)
    t, _ = read_task(8)
    conn.submit(t)
    peer.sent()
    peer.send(data_in(1, 1, 4, b"5678"))
    [ev] = events(conn)
    assert isinstance(ev, RecoveryStarted) and ev.task is t and "DataSN" in ev.reason


# ---------------------------------------------------------------------------------------------
# Properties: any valid segmentation, any chunking
# ---------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(0, 40000),
    mrdsl=st.sampled_from([512, 1024, 4096, 8192, 16384]),
    cut=st.integers(1, 5000),
    chunk=st.integers(1, 20000),
    hd=st.booleans(),
    dd=st.booleans(),
    status_in_data=st.booleans(),
)
def test_property_any_valid_read_lands_exactly(length: int, mrdsl: int, cut: int, chunk: int,
                                               hd: bool, dd: bool, status_in_data: bool) -> None:
    conn = connection(params(max_recv_data_segment_length=mrdsl, header_digest=hd,
                             data_digest=dd))
    peer = Peer(conn, max(chunk, length // 300))  # tiny chunks only for short reads (time)
    backing = bytearray(b"\x5a" * (length + 64))
    t = Task(lun=LUN, cdb=READ10, read_buf=memoryview(backing)[32:32 + length],
             expected_length=length)
    conn.submit(t)
    peer.sent()
    payload = pattern(length, seed=length)
    seg = min(mrdsl, max(cut, length // 100))  # at most ~100 PDUs per read (time)
    pdus: list[Any] = []
    offsets = list(range(0, length, seg)) or [0]
    for sn, off in enumerate(offsets):
        last = sn == len(offsets) - 1
        chunk_data = payload[off:off + seg]
        if last and status_in_data:
            pdus.append(data_in(1, sn, off, chunk_data, status=GOOD, statsn=STATSN0))
        else:
            pdus.append(data_in(1, sn, off, chunk_data, final=last))
    if not status_in_data:
        pdus.append(response(1, STATSN0, exp_datasn=len(offsets)))
    peer.send(*pdus)
    assert t.done and t.error is None and t.status == GOOD
    assert backing[32:32 + length] == payload
    assert backing[:32] == b"\x5a" * 32 and backing[32 + length:] == b"\x5a" * 32


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 60000),
    xmit=st.sampled_from([512, 4096, 8192]),
    first_burst=st.sampled_from([512, 4096, 16384, 65536]),
    max_burst=st.sampled_from([4096, 16384, 65536]),
    immediate=st.booleans(),
    initial_r2t=st.booleans(),
)
def test_property_write_covers_the_buffer_exactly(length: int, xmit: int, first_burst: int,
                                                  max_burst: int, immediate: bool,
                                                  initial_r2t: bool) -> None:
    """Immediate data, unsolicited Data-Out and the answers to R2Ts of MaxBurstLength cover
    [0, length) exactly once, with the right bytes, PDUs of at most MaxXmitDataSegmentLength,
    DataSN from 0 in each sequence and F on the last PDU of each."""
    first_burst = min(first_burst, max_burst)
    p = params(immediate_data=immediate, initial_r2t=initial_r2t, first_burst_length=first_burst,
               max_burst_length=max_burst, max_xmit_data_segment_length=xmit)
    conn = connection(p)
    peer = Peer(conn)
    data = pattern(length, seed=7)
    conn.submit(write_task(data))
    got = bytearray(length)
    covered = 0
    sent = peer.sent()
    cmd = sent[0]
    assert len(cmd.data) <= min(xmit, first_burst)
    got[:len(cmd.data)] = cmd.data
    covered += len(cmd.data)
    unsolicited = sent[1:]
    assert cmd.final == (not unsolicited)

    def check_sequence(seq: list[DataOut], ttt: int) -> None:
        nonlocal covered
        for i, d in enumerate(seq):
            assert d.ttt == ttt and d.datasn == i and d.final == (i == len(seq) - 1)
            assert 0 < len(d.data) <= xmit and d.buffer_offset == covered
            got[covered:covered + len(d.data)] = d.data
            covered += len(d.data)

    check_sequence(unsolicited, RESERVED_TAG)
    assert covered <= max(first_burst if not initial_r2t else 0, len(cmd.data))
    r2tsn = 0
    while covered < length:
        n = min(max_burst, length - covered)
        peer.send(r2t(1, 0x100 + r2tsn, r2tsn, covered, n))
        check_sequence(peer.sent(), 0x100 + r2tsn)
        r2tsn += 1
    assert covered == length and bytes(got) == data
