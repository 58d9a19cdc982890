# Tests of iscsifs/proto/connection.py against a hostile or broken target (issue 7): each way a
# target can lie is its own test. Every read buffer is a memoryview slice of a larger bytearray
# whose guard bytes on both sides must come out untouched; a task must never complete GOOD with
# content other than what the target sent for those offsets; the outcome is a sticky
# RemoteProtocolError, or a behaviour the module documents (ERL 1 recovery, ignored sequence
# numbers, a task finished with an error). A hypothesis test throws random plausible PDUs at a
# few open reads and checks the same invariants.

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsifs.proto import serial
from iscsifs.proto.connection import (
    Connection,
    DataDigestError,
    RecoveryStarted,
    RejectReceived,
    Task,
    TextReply,
)
from iscsifs.proto.errors import RemoteProtocolError
from iscsifs.proto.pdu import (
    R2T,
    AsyncMessage,
    DataOut,
    HeaderDigestError,
    LoginResponse,
    LogoutResponse,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiCommand,
    SnackRequest,
    SnackType,
    TaskMgmtResponse,
    TextResponse,
    encode,
)
from iscsifs.proto.serial import RESERVED_TAG

from .test_connection import (
    CHECK_CONDITION,
    CMDSN0,
    GOOD,
    LUN,
    READ10,
    SENSE_UA,
    STATSN0,
    WRITE10,
    Peer,
    completed,
    connection,
    data_in,
    data_out,
    events,
    params,
    pattern,
    r2t,
    response,
    sense_segment,
    write_cmd,
    write_task,
)

GUARD = 64
GUARD_BYTE = 0xA5


class Guarded:
    """A read buffer in the middle of a larger bytearray, with guard bytes on both sides."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.backing = bytearray([GUARD_BYTE]) * GUARD + bytearray(length) + (
            bytearray([GUARD_BYTE]) * GUARD)
        self.view = memoryview(self.backing)[GUARD:GUARD + length]

    @property
    def data(self) -> bytes:
        return bytes(self.backing[GUARD:GUARD + self.length])

    def intact(self) -> bool:
        g = bytes([GUARD_BYTE]) * GUARD
        return self.backing[:GUARD] == g and self.backing[GUARD + self.length:] == g


def open_read(conn: Connection, length: int) -> tuple[Task, Guarded]:
    g = Guarded(length)
    t = Task(lun=LUN, cdb=READ10, read_buf=g.view, expected_length=length)
    conn.submit(t)
    return t, g


def check_read(task: Task, g: Guarded, truth: bytes) -> None:
    """The invariants of every hostile test: no byte outside the buffer, and no GOOD
    completion with content other than the target's data for those offsets."""
    assert g.intact(), "a byte landed outside the read buffer"
    if task.done and task.error is None and task.status == GOOD:
        n = task.transferred
        assert g.data[:n] == truth[:n], "GOOD status with wrong data"


def refused(conn: Connection, send: Callable[[], Any],
            exc: type[Exception] = RemoteProtocolError) -> Exception:
    """send() must fail with exc, and the failure must be sticky on every entry point."""
    with pytest.raises(exc) as info:
        send()
    err = info.value
    assert conn.failed is err
    for again in (lambda: conn.receive_data(b"\0"), conn.get_buffer, lambda: conn.buffer_updated(1),
                  lambda: conn.submit(Task(lun=LUN, cdb=bytes(6))), conn.ping,
                  lambda: conn.text(b""), conn.logout):
        with pytest.raises(exc) as info2:
            again()
        assert info2.value is err
    return err


def erl(level: int, **kw: Any) -> Connection:
    return connection(params(error_recovery_level=level, **kw))


def flip(wire: bytes, pos: int) -> bytes:
    b = bytearray(wire)
    b[pos] ^= 0x01
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# Data-In outside the transfer, at the wrong place, out of sequence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("case", ["one-too-long", "extra-after-end", "too-long-with-status"])
def test_data_in_past_expected_length(level: int, case: str) -> None:
    conn = erl(level)
    peer = Peer(conn)
    t, g = open_read(conn, 4096)
    truth = pattern(4096)
    peer.sent()
    if case == "one-too-long":
        pdus = [data_in(1, 0, 0, pattern(4100))]
    elif case == "extra-after-end":
        peer.send(data_in(1, 0, 0, truth))
        pdus = [data_in(1, 1, 4096, b"\xee" * 4)]
    else:
        pdus = [data_in(1, 0, 0, pattern(4097), status=GOOD, statsn=STATSN0)]
    err = refused(conn, lambda: peer.send(*pdus))
    assert "past" in str(err)
    assert not t.done
    check_read(t, g, truth)


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("offset", [0, 512, 1023, 1025, 2048, 0xFFFF_FC00, 0xFFFF_FFFF])
def test_data_in_at_wrong_offset(level: int, offset: int) -> None:
    """Overlapping the data already received, leaving a gap, or before 0 through 32-bit wrap
    (0xfffffc00 + 1024 wraps to 0): refused before a byte is placed."""
    conn = erl(level)
    peer = Peer(conn)
    t, g = open_read(conn, 4096)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(1024)))
    refused(conn, lambda: peer.send(data_in(1, 1, offset, b"\xee" * 1024)))
    assert g.data == pattern(1024) + bytes(3072)
    check_read(t, g, pattern(4096))


@pytest.mark.parametrize("datasn", [2, 5, 0xFFFF_FFFF, 0])
def test_datasn_gap_or_repeat_at_erl0(datasn: int) -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 4096)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(1024)))
    refused(conn, lambda: peer.send(data_in(1, datasn, 1024, b"\xee" * 1024)))
    assert not t.done and g.data == pattern(1024) + bytes(3072)
    check_read(t, g, pattern(4096))


@pytest.mark.parametrize("status_in_data", [False, True])
def test_datasn_gap_at_erl1_snack_and_retransmission(status_in_data: bool) -> None:
    """ERL 1: a DataSN gap sends one Data SNACK for everything from the first missing DataSN
    (BegRun = it, RunLength 0); later PDUs are dropped (their bytes never land) until the
    retransmission arrives, which completes the read with the right data. The status is not
    acknowledged (ExpStatSN) before the hole is filled (RFC 7143 11.7.2)."""
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 4096)
    truth = pattern(4096, 2)
    pieces = [truth[i:i + 1024] for i in range(0, 4096, 1024)]
    peer.sent()
    peer.send(data_in(1, 0, 0, pieces[0]))
    peer.send(data_in(1, 2, 2048, b"\xee" * 1024))  # DataSN 1 lost
    assert peer.sent() == [SnackRequest(snack_type=SnackType.DATA_R2T, lun=LUN, itt=1,
                                        exp_statsn=STATSN0, begrun=1, run_length=0)]
    [ev] = events(conn)
    assert isinstance(ev, RecoveryStarted) and ev.task is t
    if status_in_data:
        peer.send(data_in(1, 3, 3072, b"\xee" * 1024, status=GOOD, statsn=STATSN0))
    else:
        peer.send(data_in(1, 3, 3072, b"\xee" * 1024, final=True),
                  response(1, STATSN0, exp_datasn=4))
    assert not t.done and conn.completed == []
    assert g.data == pieces[0] + bytes(3072)
    assert conn.exp_statsn == STATSN0  # the status is not acknowledged with a hole before it
    conn.ping()
    assert peer.sent()[0].exp_statsn == STATSN0
    assert events(conn) == []  # one SNACK is enough
    # The retransmission: exact replicas of DataSN 1..3.
    peer.send(data_in(1, 1, 1024, pieces[1]), data_in(1, 2, 2048, pieces[2]))
    assert not t.done
    if status_in_data:
        peer.send(data_in(1, 3, 3072, pieces[3], status=GOOD, statsn=STATSN0))
    else:
        peer.send(data_in(1, 3, 3072, pieces[3], final=True))
    assert completed(conn) == [t]
    assert t.error is None and t.status == GOOD and g.data == truth
    assert conn.exp_statsn == STATSN0 + 1
    check_read(t, g, truth)


def test_datasn_repeat_at_erl1_is_dropped() -> None:
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    truth = pattern(2048, 3)
    peer.sent()
    peer.send(data_in(1, 0, 0, truth[:1024]))
    peer.send(data_in(1, 0, 0, b"\xee" * 1024))  # a duplicate with other bytes: not placed
    assert g.data == truth[:1024] + bytes(1024) and peer.sent() == [] and conn.failed is None
    peer.send(data_in(1, 1, 1024, truth[1024:], status=GOOD, statsn=STATSN0))
    assert t.done and t.error is None and g.data == truth
    check_read(t, g, truth)


# ---------------------------------------------------------------------------------------------
# PDUs naming tasks that do not exist or are of the other direction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("itt", [2, 77, RESERVED_TAG, 0])
@pytest.mark.parametrize("kind", ["data-in", "empty-data-in", "response", "r2t"])
def test_unknown_itt(itt: int, kind: str) -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 1024)
    peer.sent()
    pdu: Any = {
        "data-in": data_in(itt, 0, 0, b"\xee" * 1024, status=GOOD, statsn=STATSN0),
        "empty-data-in": data_in(itt, 0, 0, b"", status=GOOD, statsn=STATSN0),
        "response": response(itt, STATSN0),
        "r2t": r2t(itt, 5, 0, 0, 1024),
    }[kind]
    refused(conn, lambda: peer.send(pdu))
    assert not t.done and g.data == bytes(1024)
    check_read(t, g, pattern(1024))


@pytest.mark.parametrize("kind", ["data-in", "response", "response-with-sense"])
def test_reused_itt_of_a_finished_task(kind: str) -> None:
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 8)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"goodgood", status=GOOD, statsn=STATSN0))
    assert t.done and t.error is None
    pdu: Any = {
        "data-in": data_in(1, 1, 8, b"evil"),
        "response": response(1, STATSN0 + 1),
        "response-with-sense": response(1, STATSN0 + 1, status=CHECK_CONDITION,
                                        data=sense_segment(SENSE_UA)),
    }[kind]
    refused(conn, lambda: peer.send(pdu))
    assert t.status == GOOD and t.sense == b"" and t.error is None and g.data == b"goodgood"
    check_read(t, g, b"goodgood")


@pytest.mark.parametrize("level", [0, 1])
def test_data_in_for_a_write_task(level: int) -> None:
    conn = erl(level, immediate_data=False)
    peer = Peer(conn)
    wbuf = bytearray(pattern(1024))
    w = Task(lun=LUN, cdb=WRITE10, write_buf=wbuf, expected_length=1024)
    conn.submit(w)
    peer.sent()
    refused(conn, lambda: peer.send(data_in(1, 0, 0, b"\xee" * 1024, status=GOOD,
                                            statsn=STATSN0)))
    assert bytes(wbuf) == pattern(1024) and not w.done


# ---------------------------------------------------------------------------------------------
# R2T
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize(("what", "ttt", "r2tsn", "offset", "length"), [
    ("beyond the command", 5, 0, 0, 10001),
    ("beyond the command", 5, 0, 10000, 1),
    ("beyond the command", 5, 0, 0xFFFF_FFFF, 1),
    ("length 0", 5, 0, 0, 0),
    ("over MaxBurstLength", 5, 0, 0, 8193),
    ("R2TSN ahead", 5, 1, 0, 1000),
    ("R2TSN far behind", 5, 0xFFFF_FFFF, 0, 1000),
    ("reserved TTT", RESERVED_TAG, 0, 0, 1000),
])
def test_hostile_r2t(level: int, what: str, ttt: int, r2tsn: int, offset: int,
                     length: int) -> None:
    conn = erl(level, immediate_data=False, max_burst_length=8192, first_burst_length=8192)
    peer = Peer(conn)
    w = write_task(pattern(10000))
    conn.submit(w)
    peer.sent()
    refused(conn, lambda: peer.send(r2t(1, ttt, r2tsn, offset, length)))
    assert not any(isinstance(p, DataOut) for p in peer.sent())
    assert not w.done


@pytest.mark.parametrize("level", [0, 1])
def test_r2t_for_a_read_task(level: int) -> None:
    conn = erl(level)
    peer = Peer(conn)
    t, g = open_read(conn, 1024)
    peer.sent()
    refused(conn, lambda: peer.send(r2t(1, 5, 0, 0, 1024)))
    assert peer.sent() == [] and g.intact() and not t.done


@pytest.mark.parametrize("level", [0, 1])
def test_r2t_recovery_repeats_r2tsn_at_erl1_only(level: int) -> None:
    conn = erl(level, immediate_data=False)
    peer = Peer(conn)
    data = pattern(2000)
    w = write_task(data)
    conn.submit(w)
    peer.sent()
    peer.send(r2t(1, 5, 0, 0, 1000))
    assert peer.sent() == [data_out(1, 5, 0, 0, data[:1000], True)]
    peer.send(r2t(1, 6, 1, 1000, 1000))
    peer.sent()
    if level == 0:
        refused(conn, lambda: peer.send(r2t(1, 7, 0, 0, 1000)))
    else:  # a recovery R2T: the target lost the first sequence
        peer.send(r2t(1, 7, 0, 0, 1000))
        assert peer.sent() == [data_out(1, 7, 0, 0, data[:1000], True)]
        peer.send(response(1, STATSN0))
        assert w.done and w.error is None


# ---------------------------------------------------------------------------------------------
# Sequence numbers
# ---------------------------------------------------------------------------------------------


def test_statsn_backwards_is_ignored_and_forwards_is_followed() -> None:
    conn = erl(0)
    peer = Peer(conn)
    a, ga = open_read(conn, 4)
    b, gb = open_read(conn, 4)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"aaaa", status=GOOD, statsn=STATSN0 - 7))
    assert a.done and a.error is None and conn.exp_statsn == STATSN0  # not moved back
    peer.send(data_in(2, 0, 0, b"bbbb", status=GOOD, statsn=STATSN0 + 1000))
    assert b.done and conn.exp_statsn == STATSN0 + 1001  # a jump: tolerated at ERL 0
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0 + 2**31 + 1001,
                    exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40))
    assert conn.exp_statsn == STATSN0 + 1001 and conn.failed is None
    check_read(a, ga, b"aaaa")
    check_read(b, gb, b"bbbb")


def test_max_cmdsn_backwards_is_ignored() -> None:
    conn = connection(window=8)
    peer = Peer(conn)
    assert conn.max_cmdsn == CMDSN0 + 7
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
                    max_cmdsn=CMDSN0 + 2))
    assert conn.max_cmdsn == CMDSN0 + 7 and conn.failed is None
    # MaxCmdSN < ExpCmdSN - 1: both fields are ignored (RFC 7143 4.2.2.1).
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0 + 5,
                    max_cmdsn=CMDSN0 + 3))
    assert conn.exp_cmdsn == CMDSN0 and conn.max_cmdsn == CMDSN0 + 7
    for _ in range(9):
        conn.submit(Task(lun=LUN, cdb=bytes(6)))
    assert len(peer.sent()) == 8 and len(conn.pending) == 1


def test_zero_window_keeps_commands_queued_until_opened() -> None:
    conn = connection(window=0)
    peer = Peer(conn)
    assert not conn.window_open
    tasks = [Task(lun=LUN, cdb=bytes(6)) for _ in range(3)]
    for t in tasks:
        conn.submit(t)
    assert peer.sent() == [] and list(conn.pending) == tasks
    peer.send(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
                    max_cmdsn=CMDSN0 - 1))
    assert peer.sent() == [] and len(conn.pending) == 3
    # Immediate PDUs still go out with a closed window.
    ping = conn.ping()
    assert [type(p) for p in peer.sent()] == [NopOut]
    peer.send(NopIn(itt=ping, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
                    max_cmdsn=CMDSN0 + 1))
    sent = peer.sent()
    assert [(c.itt, c.cmdsn) for c in sent] == [(tasks[0].itt, CMDSN0), (tasks[1].itt, CMDSN0 + 1)]
    assert [c.itt for c in sent] == [2, 3] and list(conn.pending) == [tasks[2]]


def test_pdu_cannot_name_the_command_its_own_window_releases() -> None:
    """A PDU that opens the window is matched against the tasks that existed when it arrived:
    it cannot complete the queued command it releases (whose ITT a target can predict)."""
    conn = connection(window=0)
    peer = Peer(conn)
    g = Guarded(64)
    t = Task(lun=LUN, cdb=READ10, read_buf=g.view, expected_length=64)
    conn.submit(t)
    assert peer.sent() == []
    refused(conn, lambda: peer.send(data_in(1, 0, 0, b"", status=GOOD, statsn=STATSN0,
                                            underflow=True, residual=64, exp_cmdsn=CMDSN0,
                                            max_cmdsn=CMDSN0)))
    assert not t.done and g.intact()


# ---------------------------------------------------------------------------------------------
# Sizes, status and residuals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("opcode_pdu", ["data-in", "nop-in", "text"])
def test_data_segment_over_our_max_recv_refused_before_buffering(hd: bool,
                                                                 opcode_pdu: str) -> None:
    conn = connection(params(max_recv_data_segment_length=4096, header_digest=hd))
    peer = Peer(conn)
    t, g = open_read(conn, 8192)
    itt = conn.text(b"a=b\0")
    peer.sent()
    big = b"\xee" * 4100
    pdu: Any = {
        "data-in": data_in(1, 0, 0, big),
        "nop-in": NopIn(itt=RESERVED_TAG, ttt=7, statsn=STATSN0, exp_cmdsn=CMDSN0,
                        max_cmdsn=CMDSN0 + 40, data=big),
        "text": TextResponse(final=True, itt=itt, ttt=RESERVED_TAG, statsn=STATSN0,
                             exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40, data=big),
    }[opcode_pdu]
    header = peer.wire(pdu)[:52 if hd else 48]
    err = refused(conn, lambda: _feed(conn, header))
    assert "4100" in str(err)
    assert g.data == bytes(8192) and g.intact() and not t.done


def _feed(conn: Connection, wire: bytes) -> None:
    conn.receive_data(wire)


def test_status_good_before_all_data_erl0_hole_is_fatal() -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    peer.sent()
    peer.send(data_in(1, 0, 0, pattern(1024)))
    refused(conn, lambda: peer.send(response(1, STATSN0, exp_datasn=2)))
    assert not t.done
    check_read(t, g, pattern(2048))


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("via", ["response", "data-in"])
def test_status_good_with_short_data_and_no_underflow_fails_the_task(level: int,
                                                                    via: str) -> None:
    """No DataSN is missing, but the target says GOOD with fewer bytes than asked and no
    underflow: there is nothing to recover, and the task must not look successful."""
    conn = erl(level)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    peer.sent()
    if via == "response":
        peer.send(data_in(1, 0, 0, pattern(1024), final=True), response(1, STATSN0, exp_datasn=1))
    else:
        peer.send(data_in(1, 0, 0, pattern(1024), status=GOOD, statsn=STATSN0))
    assert completed(conn) == [t]
    assert isinstance(t.error, RemoteProtocolError)
    check_read(t, g, pattern(2048))


def test_status_good_before_all_data_erl1_snack_then_recovered() -> None:
    conn = erl(1, data_digest=True)
    peer = Peer(conn)
    t, g = open_read(conn, 3072)
    truth = pattern(3072, 4)
    peer.sent()
    peer.send(data_in(1, 0, 0, truth[:1024]))
    # DataSN 1 and 2 never arrive; the status says 3 were sent.
    peer.send(response(1, STATSN0, exp_datasn=3))
    assert peer.sent() == [SnackRequest(snack_type=SnackType.DATA_R2T, lun=LUN, itt=1,
                                        exp_statsn=STATSN0, begrun=1, run_length=0)]
    assert not t.done and conn.exp_statsn == STATSN0
    peer.send(data_in(1, 1, 1024, truth[1024:2048]))
    assert not t.done
    peer.send(data_in(1, 2, 2048, truth[2048:], final=True))
    assert completed(conn) == [t]
    assert t.error is None and t.status == GOOD and g.data == truth
    assert conn.exp_statsn == STATSN0 + 1
    check_read(t, g, truth)


def test_exp_statsn_held_back_for_the_oldest_hole_only() -> None:
    """Two reads; the first has a hole when its status comes, the second completes: ExpStatSN
    stays at the first status until its data is in, then covers both."""
    conn = erl(1)
    peer = Peer(conn)
    a, ga = open_read(conn, 2048)
    b, gb = open_read(conn, 4)
    peer.sent()
    peer.send(data_in(1, 1, 1024, b"\xee" * 1024, final=True))  # DataSN 0 missing
    peer.send(response(1, STATSN0, exp_datasn=2))
    peer.send(data_in(2, 0, 0, b"bbbb", status=GOOD, statsn=STATSN0 + 1))
    assert b.done and not a.done and conn.exp_statsn == STATSN0
    [snack] = peer.sent()
    assert snack.begrun == 0 and snack.exp_statsn == STATSN0
    peer.send(data_in(1, 0, 0, pattern(1024)), data_in(1, 1, 1024, pattern(1024, 1), final=True))
    assert a.done and a.error is None and conn.exp_statsn == STATSN0 + 2
    check_read(a, ga, pattern(1024) + pattern(1024, 1))
    check_read(b, gb, b"bbbb")


def test_forgetting_a_task_with_a_held_status_releases_exp_statsn() -> None:
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    peer.sent()
    peer.send(data_in(1, 1, 1024, b"\xee" * 1024, final=True))
    peer.send(response(1, STATSN0, exp_datasn=2))
    assert conn.exp_statsn == STATSN0 and not t.done
    conn.forget(t)  # e.g. after ABORT TASK
    assert conn.exp_statsn == STATSN0 + 1 and not conn.tasks
    check_read(t, g, pattern(2048))


@pytest.mark.parametrize("level", [0, 1])
def test_data_in_with_status_but_no_f_bit(level: int) -> None:
    conn = erl(level)
    peer = Peer(conn)
    t, g = open_read(conn, 8)
    peer.sent()
    refused(conn, lambda: peer.send(data_in(1, 0, 0, pattern(8), status=GOOD, statsn=STATSN0,
                                            final=False)))
    assert not t.done
    check_read(t, g, pattern(8))


@pytest.mark.parametrize("via", ["response", "data-in"])
def test_residual_larger_than_the_transfer(via: str) -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 4096)
    peer.sent()
    if via == "response":
        peer.send(response(1, STATSN0, underflow=True, residual=4097))
    else:
        peer.send(data_in(1, 0, 0, b"", status=GOOD, statsn=STATSN0, underflow=True,
                          residual=0xFFFF_FFFF))
    assert completed(conn) == [t]
    assert isinstance(t.error, RemoteProtocolError) and "residual" in str(t.error)
    check_read(t, g, pattern(4096))


def test_malformed_sense_length() -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, _ = open_read(conn, 8)
    peer.sent()
    refused(conn, lambda: peer.send(response(1, STATSN0, status=CHECK_CONDITION,
                                             data=b"\x00\x40" + SENSE_UA)))
    assert not t.done


def test_target_failure_response() -> None:
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 8)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"\xee" * 8, final=True), response(1, STATSN0, response=1))
    assert t.done and isinstance(t.error, RemoteProtocolError)
    check_read(t, g, pattern(8))


# ---------------------------------------------------------------------------------------------
# Text that never ends
# ---------------------------------------------------------------------------------------------


def test_text_response_that_never_ends_is_capped() -> None:
    conn = connection(max_text=1000)
    peer = Peer(conn)
    itt = conn.text(b"SendTargets=All\0")
    peer.sent()
    statsn = STATSN0

    def more() -> None:
        nonlocal statsn
        peer.send(TextResponse(final=False, itt=itt, ttt=9, statsn=statsn, exp_cmdsn=CMDSN0 + 1,
                               max_cmdsn=CMDSN0 + 100, data=b"k=" + b"v" * 298))
        statsn += 1

    for _ in range(3):
        more()
        assert len(peer.sent()) == 1  # the empty request for the next part
    err = refused(conn, more)
    assert "1000" in str(err)


@pytest.mark.parametrize("cap", [None, 50])
def test_empty_text_responses_forever_are_capped(cap: int | None) -> None:
    """Empty non-final parts never reach the byte cap: the number of parts is capped too."""
    conn = connection(max_text=1000) if cap is None else connection(max_text_pdus=cap)
    limit = conn.max_text_pdus
    peer = Peer(conn)
    itt = conn.text(b"SendTargets=All\0")
    peer.sent()

    def part(i: int) -> None:
        peer.send(TextResponse(final=False, itt=itt, ttt=9, statsn=STATSN0 + i,
                               exp_cmdsn=CMDSN0 + 1 + i, max_cmdsn=CMDSN0 + 100 + i))

    for i in range(limit):
        part(i)
        assert [p.ttt for p in peer.sent()] == [9]
    err = refused(conn, lambda: part(limit))
    assert str(limit) in str(err) and events(conn) == []


def test_text_response_with_f_and_c() -> None:
    conn = connection()
    peer = Peer(conn)
    itt = conn.text(b"a=b\0")
    refused(conn, lambda: peer.send(TextResponse(final=True, cont=True, itt=itt, ttt=5,
                                                 statsn=STATSN0, exp_cmdsn=CMDSN0 + 1,
                                                 max_cmdsn=CMDSN0 + 9, data=b"x=y\0")))


def test_unfinished_text_response_without_ttt() -> None:
    conn = connection()
    peer = Peer(conn)
    itt = conn.text(b"a=b\0")
    refused(conn, lambda: peer.send(TextResponse(final=False, itt=itt, ttt=RESERVED_TAG,
                                                 statsn=STATSN0, exp_cmdsn=CMDSN0 + 1,
                                                 max_cmdsn=CMDSN0 + 9)))


# ---------------------------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------------------------


def test_data_digest_error_at_erl0() -> None:
    conn = erl(0, data_digest=True)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    peer.sent()
    wire = peer.wire(data_in(1, 0, 0, pattern(2048), status=GOOD, statsn=STATSN0))
    refused(conn, lambda: _feed(conn, flip(wire, len(wire) - 1)), DataDigestError)
    assert not t.done and conn.exp_statsn == STATSN0
    check_read(t, g, pattern(2048))


@pytest.mark.parametrize("where", ["digest", "data"])
def test_data_digest_error_at_erl1_snack_then_recovered(where: str) -> None:
    conn = erl(1, data_digest=True)
    peer = Peer(conn)
    t, g = open_read(conn, 3000)
    truth = pattern(3000, 5)
    peer.sent()
    peer.send(data_in(1, 0, 0, truth[:1000]))
    bad = peer.wire(data_in(1, 1, 1000, truth[1000:2000]))
    bad = flip(bad, len(bad) - 1 if where == "digest" else 48 + 10)
    _feed(conn, bad)
    assert peer.sent() == [SnackRequest(snack_type=SnackType.DATA_R2T, lun=LUN, itt=1,
                                        exp_statsn=STATSN0, begrun=1, run_length=0)]
    assert any(isinstance(e, RecoveryStarted) for e in events(conn))
    peer.send(data_in(1, 2, 2000, b"\xee" * 1000, status=GOOD, statsn=STATSN0))  # dropped
    assert not t.done and conn.exp_statsn == STATSN0
    peer.send(data_in(1, 1, 1000, truth[1000:2000]),
              data_in(1, 2, 2000, truth[2000:], status=GOOD, statsn=STATSN0))
    assert completed(conn) == [t]
    assert t.error is None and g.data == truth and conn.exp_statsn == STATSN0 + 1
    check_read(t, g, truth)


def test_data_digest_error_on_the_retransmission_asks_again() -> None:
    conn = erl(1, data_digest=True)
    peer = Peer(conn)
    t, g = open_read(conn, 2000)
    truth = pattern(2000, 6)
    peer.sent()
    first = peer.wire(data_in(1, 0, 0, truth[:1000]))
    _feed(conn, flip(first, 60))
    _feed(conn, flip(first, 61))  # the retransmission is damaged too
    snacks = peer.sent()
    assert [(s.snack_type, s.begrun, s.run_length) for s in snacks] == [
        (SnackType.DATA_R2T, 0, 0), (SnackType.DATA_R2T, 0, 0)]
    peer.send(data_in(1, 1, 1000, truth[1000:], status=GOOD, statsn=STATSN0))  # dropped
    peer.send(data_in(1, 0, 0, truth[:1000]),
              data_in(1, 1, 1000, truth[1000:], status=GOOD, statsn=STATSN0))
    assert t.done and t.error is None and g.data == truth
    check_read(t, g, truth)


@pytest.mark.parametrize("level", [0, 1])
def test_scsi_response_data_digest_error(level: int) -> None:
    """The sense data of a SCSI Response is damaged. ERL 0: the connection goes. ERL 1: a
    Status SNACK asks for that StatSN again (RFC 7143 11.16.1), not a Data SNACK."""
    conn = erl(level, data_digest=True)
    peer = Peer(conn)
    t, _ = open_read(conn, 8)
    peer.sent()
    peer.send(data_in(1, 0, 0, b"12345678", final=True))
    wire = peer.wire(response(1, STATSN0, status=CHECK_CONDITION, exp_datasn=1,
                              data=sense_segment(SENSE_UA)))
    bad = flip(wire, 50)
    if level == 0:
        refused(conn, lambda: _feed(conn, bad), DataDigestError)
        return
    _feed(conn, bad)
    assert peer.sent() == [SnackRequest(snack_type=SnackType.STATUS, itt=RESERVED_TAG,
                                        exp_statsn=STATSN0, begrun=STATSN0, run_length=1)]
    [ev] = events(conn)
    assert isinstance(ev, RecoveryStarted) and ev.task is t and "StatSN" in ev.reason
    assert not t.done and conn.exp_statsn == STATSN0
    _feed(conn, wire)
    assert t.done and t.status == CHECK_CONDITION and t.sense == SENSE_UA
    assert conn.exp_statsn == STATSN0 + 1


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("which", ["nop-in", "async", "text", "reject"])
def test_data_digest_error_outside_data_in_drops_the_connection(level: int, which: str) -> None:
    """Only Data-In and SCSI Response have a recovery by SNACK; a damaged NOP-In, Async
    Message, Text Response or Reject is a DataDigestError at every ERL (documented)."""
    conn = erl(level, data_digest=True)
    peer = Peer(conn)
    itt = conn.text(b"a=b\0")
    peer.sent()
    common: dict[str, Any] = {"statsn": STATSN0, "exp_cmdsn": CMDSN0 + 1,
                              "max_cmdsn": CMDSN0 + 9}
    pdu: Any = {
        "nop-in": NopIn(itt=RESERVED_TAG, ttt=5, data=b"ping", **common),
        "async": AsyncMessage(async_event=0, data=sense_segment(SENSE_UA), **common),
        "text": TextResponse(final=True, itt=itt, ttt=RESERVED_TAG, data=b"a=b\0", **common),
        "reject": Reject(reason=RejectReason.PROTOCOL_ERROR, data=bytes(48), **common),
    }[which]
    wire = peer.wire(pdu)
    refused(conn, lambda: _feed(conn, flip(wire, len(wire) - 1)), DataDigestError)
    assert peer.sent() == [] and events(conn) == []


@pytest.mark.parametrize("pos", [0, 5, 16, 47, 48, 51])
def test_header_digest_error_is_sticky(pos: int) -> None:
    conn = connection(params(header_digest=True, data_digest=True))
    peer = Peer(conn)
    t, g = open_read(conn, 100)
    peer.sent()
    wire = peer.wire(data_in(1, 0, 0, pattern(100), status=GOOD, statsn=STATSN0))
    refused(conn, lambda: _feed(conn, flip(wire, pos)), HeaderDigestError)
    assert not t.done and g.data == bytes(100)
    check_read(t, g, pattern(100))


# ---------------------------------------------------------------------------------------------
# Reject
# ---------------------------------------------------------------------------------------------


def _header_of(pdu: Any) -> bytes:
    return encode(pdu)[:48]


@pytest.mark.parametrize("reason", [RejectReason.COMMAND_NOT_SUPPORTED,
                                    RejectReason.PROTOCOL_ERROR, RejectReason.INVALID_PDU_FIELD,
                                    RejectReason.WAITING_FOR_LOGOUT])
def test_reject_of_a_command(reason: int) -> None:
    """The command is refused: the task fails, and as the target does not count the rejected
    CmdSN (RFC 7143 11.17.1) the gap is plugged with a NOP-Out carrying that CmdSN, or every
    later command would wait behind it."""
    conn = erl(0)
    peer = Peer(conn)
    t, g = open_read(conn, 16)
    later, _ = open_read(conn, 16)
    cmd, _ = peer.sent()
    peer.send(Reject(reason=reason, statsn=STATSN0, exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40,
                     data=_header_of(cmd)))
    assert completed(conn) == [t]
    assert isinstance(t.error, RemoteProtocolError) and f"0x{reason:02x}" in str(t.error)
    [ev] = events(conn)
    assert ev == RejectReceived(reject=ev.reject, itt=1, task=t)
    [plug] = peer.sent()
    assert plug == NopOut(immediate=False, itt=plug.itt, cmdsn=CMDSN0,
                          exp_statsn=STATSN0 + 1)
    assert plug.itt not in (RESERVED_TAG, 1, 2)
    # Its NOP-In answer is an ordinary ping reply; a late status for the task is an error.
    peer.send(NopIn(itt=plug.itt, ttt=RESERVED_TAG, statsn=STATSN0 + 1, exp_cmdsn=CMDSN0 + 2,
                    max_cmdsn=CMDSN0 + 40))
    assert conn.failed is None and not later.done
    refused(conn, lambda: peer.send(response(1, STATSN0 + 2)))
    check_read(t, g, pattern(16))


def test_reject_of_a_text_request_plugs_its_cmdsn() -> None:
    conn = erl(0)
    peer = Peer(conn)
    itt = conn.text(b"a=b\0")
    [req] = peer.sent()
    peer.send(Reject(reason=RejectReason.PROTOCOL_ERROR, statsn=STATSN0, exp_cmdsn=CMDSN0,
                     max_cmdsn=CMDSN0 + 40, data=_header_of(req)))
    [ev] = events(conn)
    assert isinstance(ev, RejectReceived) and ev.itt == itt and ev.task is None
    [plug] = peer.sent()
    assert isinstance(plug, NopOut) and not plug.immediate and plug.cmdsn == CMDSN0
    assert itt not in conn.tags


def test_reject_of_an_immediate_pdu_needs_no_plug() -> None:
    conn = erl(0)
    peer = Peer(conn)
    ping = conn.ping()
    [nop] = peer.sent()
    peer.send(Reject(reason=RejectReason.PROTOCOL_ERROR, statsn=STATSN0, exp_cmdsn=CMDSN0,
                     max_cmdsn=CMDSN0 + 40, data=_header_of(nop)))
    assert peer.sent() == [] and ping not in conn.tags
    [ev] = events(conn)
    assert isinstance(ev, RejectReceived) and ev.itt == ping


def test_reject_with_data_digest_error_at_erl0() -> None:
    conn = erl(0, immediate_data=False)
    peer = Peer(conn)
    w = write_task(pattern(100))
    conn.submit(w)
    peer.sent()
    peer.send(r2t(1, 5, 0, 0, 100))
    [dout] = peer.sent()
    refused(conn, lambda: peer.send(Reject(reason=RejectReason.DATA_DIGEST_ERROR, statsn=STATSN0,
                                           exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 40,
                                           data=_header_of(dout))), DataDigestError)
    assert not w.done


def test_reject_with_data_digest_error_of_data_out_at_erl1() -> None:
    """Our Data-Out arrived damaged: the task waits for the recovery R2T, answers it, and
    completes."""
    conn = erl(1, immediate_data=False, data_digest=True)
    peer = Peer(conn)
    data = pattern(100)
    w = write_task(data)
    conn.submit(w)
    peer.sent()
    peer.send(r2t(1, 5, 0, 0, 100))
    [dout] = peer.sent()
    peer.send(Reject(reason=RejectReason.DATA_DIGEST_ERROR, statsn=STATSN0,
                     exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 40, data=_header_of(dout)))
    [ev] = events(conn)
    assert isinstance(ev, RejectReceived) and ev.task is w and not w.done
    peer.send(r2t(1, 6, 0, 0, 100, statsn=STATSN0 + 1))  # recovery R2T: R2TSN repeated
    assert peer.sent() == [data_out(1, 6, 0, 0, data, True, exp_statsn=STATSN0 + 1)]
    peer.send(response(1, STATSN0 + 1))
    assert w.done and w.error is None and w.status == GOOD


def test_reject_with_data_digest_error_of_command_at_erl1_retries_it() -> None:
    """The immediate data of our command arrived damaged: the target discarded the command,
    so it is sent again with the same ITT and CmdSN (RFC 7143 7.2.1, 7.8)."""
    conn = erl(1, immediate_data=True, data_digest=True)
    peer = Peer(conn)
    data = pattern(300)
    w = write_task(data)
    conn.submit(w)
    later = Task(lun=LUN, cdb=bytes(6))
    conn.submit(later)
    cmd, _ = peer.sent()
    assert cmd == write_cmd(1, 300, CMDSN0, data=data)
    peer.send(Reject(reason=RejectReason.DATA_DIGEST_ERROR, statsn=STATSN0,
                     exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40, data=_header_of(cmd)))
    assert peer.sent() == [write_cmd(1, 300, CMDSN0, data=data, exp_statsn=STATSN0 + 1)]
    assert not w.done and conn.cmdsn == CMDSN0 + 2 and w.attempts == 1
    peer.send(response(1, STATSN0 + 1, exp_cmdsn=CMDSN0 + 2))
    assert w.done and w.error is None


def test_reject_of_our_data_snack_fails_the_read() -> None:
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 2048)
    peer.sent()
    peer.send(data_in(1, 1, 1024, b"\xee" * 1024))
    [snack] = peer.sent()
    peer.send(response(1, STATSN0, exp_datasn=2))
    assert conn.exp_statsn == STATSN0
    peer.send(Reject(reason=RejectReason.PROTOCOL_ERROR, statsn=STATSN0 + 1, exp_cmdsn=CMDSN0 + 1,
                     max_cmdsn=CMDSN0 + 40, data=_header_of(snack)))
    assert t.done and isinstance(t.error, RemoteProtocolError)
    assert conn.exp_statsn == STATSN0 + 2  # the held status is released with the task
    check_read(t, g, pattern(2048))


# ---------------------------------------------------------------------------------------------
# PDUs that have no place in the full feature phase
# ---------------------------------------------------------------------------------------------


def _r2t_with_data() -> bytes:
    wire = bytearray(encode(R2T(itt=1, ttt=5, statsn=STATSN0, exp_cmdsn=CMDSN0,
                                max_cmdsn=CMDSN0 + 9, r2tsn=0, buffer_offset=0,
                                desired_length=8)))
    wire[5:8] = (4).to_bytes(3, "big")
    return bytes(wire) + b"data"


def _with_opcode(pdu: Any, opcode: int) -> bytes:
    wire = bytearray(encode(pdu))
    wire[0] = opcode
    return bytes(wire)


UNEXPECTED: dict[str, Callable[[], bytes]] = {
    "login response": lambda: encode(LoginResponse(
        transit=True, csg=1, nsg=3, isid=b"\x80\0\0\0\0\1", tsih=1, itt=1, statsn=STATSN0,
        exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 9, status_class=0, status_detail=0)),
    "r2t with data segment": _r2t_with_data,
    "nop-in for an unknown ping": lambda: encode(NopIn(itt=0x1234, ttt=RESERVED_TAG,
                                                       statsn=STATSN0, exp_cmdsn=CMDSN0,
                                                       max_cmdsn=CMDSN0 + 9)),
    "nop-in naming a command": lambda: encode(NopIn(itt=1, ttt=RESERVED_TAG, statsn=STATSN0,
                                                    exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 9)),
    "scsi command from the target": lambda: encode(ScsiCommand(
        itt=1, expected_length=0, cmdsn=1, exp_statsn=1, cdb=bytes(16))),
    "data-out from the target": lambda: encode(DataOut(final=True, itt=1, exp_statsn=1,
                                                       datasn=0, buffer_offset=0, data=b"abcd")),
    "unknown opcode": lambda: _with_opcode(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG,
                                                 statsn=STATSN0, exp_cmdsn=CMDSN0,
                                                 max_cmdsn=CMDSN0 + 9), 0x3C),
    "tmf response for nothing": lambda: encode(TaskMgmtResponse(
        response=0, itt=1, statsn=STATSN0, exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 9)),
    "logout response for nothing": lambda: encode(LogoutResponse(
        response=0, itt=0x99, statsn=STATSN0, exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 9)),
    "text response for nothing": lambda: encode(TextResponse(
        final=True, itt=0x99, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
        max_cmdsn=CMDSN0 + 9)),
}


@pytest.mark.parametrize("name", list(UNEXPECTED))
def test_unexpected_pdu(name: str) -> None:
    conn = erl(1)
    peer = Peer(conn)
    t, g = open_read(conn, 8)
    peer.sent()
    refused(conn, lambda: _feed(conn, UNEXPECTED[name]()))
    assert not t.done and g.intact()


def test_ping_answered_twice() -> None:
    conn = erl(0)
    peer = Peer(conn)
    ping = conn.ping()
    answer = NopIn(itt=ping, ttt=RESERVED_TAG, statsn=STATSN0, exp_cmdsn=CMDSN0,
                   max_cmdsn=CMDSN0 + 9)
    peer.send(answer)
    refused(conn, lambda: peer.send(answer))


def test_text_reply_is_only_delivered_once() -> None:
    conn = erl(0)
    peer = Peer(conn)
    itt = conn.text(b"a=b\0")
    answer = TextResponse(final=True, itt=itt, ttt=RESERVED_TAG, statsn=STATSN0,
                          exp_cmdsn=CMDSN0 + 1, max_cmdsn=CMDSN0 + 9, data=b"a=b\0")
    peer.send(answer)
    assert events(conn) == [TextReply(itt=itt, data=b"a=b\0")]
    refused(conn, lambda: peer.send(answer))


# ---------------------------------------------------------------------------------------------
# Hypothesis: random plausible target PDUs against a few open reads
# ---------------------------------------------------------------------------------------------

EXAMPLES = 1000
_stats = {"examples": 0, "pdus": 0, "refused": 0, "good": 0, "snacks": 0}


def _truth(k: int, n: int) -> bytes:
    """What the target holds for read k: the only content an honest target sends."""
    return pattern(n, seed=k + 1)


def _feed_chunked(conn: Connection, wire: bytes, chunk: int | None) -> None:
    mv = memoryview(wire)
    while len(mv):
        buf = conn.get_buffer()
        n = min(len(buf), len(mv), chunk or len(mv))
        buf[:n] = mv[:n]
        mv = mv[n:]
        conn.buffer_updated(n)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), level=st.sampled_from([0, 1]), dd=st.booleans(),
       lengths=st.lists(st.integers(0, 6000), min_size=1, max_size=4))
def test_property_random_target_pdus_never_escape_the_buffers(data: st.DataObject, level: int,
                                                               dd: bool,
                                                               lengths: list[int]) -> None:
    """Half honest (the next Data-In of an open read, a fitting status), half not (any ITT,
    offset, DataSN, length, flags, residual, status; R2T, NOP-In, Reject, random bytes). Only
    RemoteProtocolError may come out, sticky; guards stay intact; GOOD means the right data."""
    mrdsl = 2048
    conn = connection(params(error_recovery_level=level, data_digest=dd,
                             max_recv_data_segment_length=mrdsl))
    peer = Peer(conn)
    reads = [open_read(conn, n) for n in lengths]
    itts = [t.itt for t, _ in reads]
    peer.sent()
    _stats["examples"] += 1
    any_itt = st.sampled_from(itts) | st.sampled_from([0, 99, RESERVED_TAG]) | st.integers(
        0, 2**32 - 1)
    any_sn = st.integers(0, 6) | st.sampled_from([0xFFFF_FFFF, 2**31])
    statsn = [STATSN0]

    def honest_body(k: int, off: int, n: int) -> bytes:
        return _truth(k, off + n)[off:off + n] if off + n <= 1 << 16 else b"\x01" * n

    def data_in_wire(itt: int, k: int, dsn: int, off: int, n: int, **kw: Any) -> bytes:
        # Wrong content only ever comes with a bad data digest: without digests a target that
        # lies about the data cannot be caught by anyone.
        corrupt = dd and n > 0 and data.draw(st.integers(0, 7)) == 0
        body = honest_body(k, off, n)
        wire = peer.wire(data_in(itt, dsn, off, bytes(b ^ 0xFF for b in body) if corrupt
                                 else body, statsn=statsn[0], **kw))
        return flip(wire, len(wire) - 1) if corrupt else wire

    def honest() -> bytes:
        k = data.draw(st.integers(0, len(reads) - 1))
        t = reads[k][0]
        off, dsn = t.next_offset, t.exp_datasn
        left = t.expected_length - off
        if data.draw(st.integers(0, 3)) == 0:  # the status, in a SCSI Response
            return peer.wire(response(t.itt, statsn[0], exp_datasn=dsn,
                                      underflow=left > 0, residual=max(left, 0)))
        n = data.draw(st.integers(0, max(0, min(mrdsl, left))))
        last = off + n >= t.expected_length
        status = GOOD if last and data.draw(st.booleans()) else None
        return data_in_wire(t.itt, k, dsn, off, n, status=status,
                            final=None if status is not None else last)

    def hostile_data_in() -> bytes:
        itt = data.draw(any_itt)
        k = itts.index(itt) if itt in itts else 0
        off = data.draw(st.integers(0, 7000) | st.sampled_from([0xFFFF_FC00, 2**32 - 1]))
        n = data.draw(st.integers(0, mrdsl))
        status = data.draw(st.none() | st.sampled_from([GOOD, CHECK_CONDITION]))
        return data_in_wire(
            itt, k, data.draw(any_sn), off, n, status=status,
            final=None if status is not None else data.draw(st.booleans()),
            underflow=data.draw(st.booleans()), overflow=data.draw(st.booleans()),
            residual=data.draw(st.integers(0, 7000)), ack=data.draw(st.booleans()),
            ttt=data.draw(st.sampled_from([7, RESERVED_TAG])))

    def hostile_response() -> bytes:
        status = data.draw(st.sampled_from([GOOD, CHECK_CONDITION]))
        return peer.wire(response(
            data.draw(any_itt), statsn[0], status=status, exp_datasn=data.draw(any_sn),
            underflow=data.draw(st.booleans()), overflow=data.draw(st.booleans()),
            residual=data.draw(st.integers(0, 7000)), response=data.draw(st.sampled_from([0, 1])),
            data=sense_segment(SENSE_UA) if status else b""))

    def other() -> bytes:
        choice = data.draw(st.integers(0, 4))
        if choice == 0:
            return peer.wire(r2t(data.draw(any_itt), 5, data.draw(any_sn), 0,
                                 data.draw(st.integers(0, 9000))))
        if choice == 1:
            return peer.wire(NopIn(itt=data.draw(st.sampled_from([RESERVED_TAG, 5])),
                                   ttt=data.draw(st.sampled_from([RESERVED_TAG, 9])),
                                   statsn=statsn[0], exp_cmdsn=CMDSN0,
                                   max_cmdsn=CMDSN0 + data.draw(st.integers(-3, 40))))
        if choice == 2:
            hdr = encode(ScsiCommand(read=True, itt=data.draw(any_itt), expected_length=8,
                                     cmdsn=CMDSN0, exp_statsn=0, cdb=bytes(16)))[:48]
            return peer.wire(Reject(reason=data.draw(st.sampled_from(list(RejectReason))),
                                    statsn=statsn[0], exp_cmdsn=CMDSN0, max_cmdsn=CMDSN0 + 40,
                                    data=hdr))
        if choice == 3:
            return bytes(data.draw(st.binary(min_size=48, max_size=120)))
        return peer.wire(data_in(data.draw(any_itt), 0, 0, b"\x01" * (mrdsl + 4)))

    error: Exception | None = None
    for _ in range(data.draw(st.integers(1, 30))):
        kind = data.draw(st.integers(0, 19))
        wire = (honest() if kind < 13 else hostile_data_in() if kind < 16
                else hostile_response() if kind < 18 else other())
        if data.draw(st.booleans()):
            statsn[0] = serial.add(statsn[0], 1)
        _stats["pdus"] += 1
        try:
            _feed_chunked(conn, wire, data.draw(st.sampled_from([None, 1, 7, 100])))
        except RemoteProtocolError as e:
            error = e
            _stats["refused"] += 1
            break
        _stats["snacks"] += sum(isinstance(e, RecoveryStarted) for e in events(conn))
        conn.take_outbound()
        for k, (t, g) in enumerate(reads):
            check_read(t, g, _truth(k, lengths[k]))
    if error is not None:
        assert conn.failed is error
        with pytest.raises(RemoteProtocolError) as again:
            conn.receive_data(b"\0")
        assert again.value is error
    for k, (t, g) in enumerate(reads):
        check_read(t, g, _truth(k, lengths[k]))
        if t.done and t.error is None and t.status == GOOD:
            _stats["good"] += 1


def test_property_statistics_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the property test in file order: prints how much it exercised."""
    with capsys.disabled():
        print(f"\nhostile property: {_stats}")
    assert _stats["examples"] == 0 or (
        _stats["examples"] >= EXAMPLES and _stats["good"] > 0 and _stats["refused"] > 0)
