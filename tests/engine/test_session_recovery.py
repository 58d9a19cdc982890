# How iscsifs/engine/session.py keeps I/O alive through faults, and what it does with hostile
# input, against the fake target of tests/fake_target.py: resets mid-transfer, outages shorter
# and longer than the hold time, a silent target, command timeouts (ABORT TASK -> LUN RESET ->
# drop), digest errors at ERL 0 and 1, Async Messages, Rejects, redirects, a login that never
# answers, the ordering of writes through reconnects, and CHAP failures.
#
# Everything runs on trio's MockClock with autojump: times are asserted exactly with
# trio.current_time(), and nothing sleeps in real time. The timeouts below are chosen so that no
# two of them add up to the same value, which keeps a wrong timer from passing by coincidence.

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from iscsifs.engine.lun import BlockDevice, discover
from iscsifs.engine.session import (
    CommandFailed,
    Session,
    SessionClosed,
    SessionUnavailable,
    State,
    Timeouts,
)
from iscsifs.engine.transport import TransportError
from iscsifs.proto import pdu as P
from iscsifs.proto.chap import MutualAuthenticationFailed
from iscsifs.proto.login import AuthenticationFailed, LoginError
from iscsifs.proto.pdu import AsyncEvent, TmfFunction
from tests.fake_target import (
    Disk,
    FakeTarget,
    Recorder,
    Redirect,
    creds,
    fixed_sense,
    read_blocks,
    settings,
    wait_for,
    write_blocks,
)

T = Timeouts(connect=1.0, login=4.0, logout=2.5, noop_interval=5.0, noop_timeout=3.0,
             command=10.0, tmf=2.0, hold=30.0, reconnect_min=0.25, reconnect_max=1.0)
SECRETS = ("right-secret-0123", "wrong-secret-4567", "mutual-secret-89ab", "forged-proof-cdef")


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        for secret in SECRETS:
            assert secret not in text, record


@asynccontextmanager
async def running(fake: FakeTarget, listener: Recorder | None = None,
                  **kw: Any) -> AsyncIterator[tuple[Session, trio.Nursery]]:
    """A logged-in session against `fake`, and a nursery for the test's background I/O."""
    kw.setdefault("timeouts", T)
    session = Session(settings(fake, **kw), listener=listener, connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
        assert error is None, error
        yield session, nursery
        nursery.cancel_scope.cancel()
    assert fake.errors == []


@dataclass
class Outcome:
    """What a background call came to, and when."""

    value: Any = None
    error: BaseException | None = None
    time: float | None = None

    @property
    def done(self) -> bool:
        return self.time is not None


def spawn(nursery: trio.Nursery, fn: Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
    out = Outcome()

    async def run() -> None:
        try:
            out.value = await fn(*args)
        except Exception as e:
            out.error = e
        out.time = trio.current_time()

    nursery.start_soon(run)
    return out


async def wait_call(rec: Recorder, name: str, count: int = 1) -> float:
    """Wait until the listener got its count-th `name` call; return that call's time."""
    await wait_for(lambda: rec.names().count(name) >= count)
    return [c[1] for c in rec.calls if c[0] == name][count - 1]


def disk_bytes(fake: FakeTarget, lba: int, blocks: int) -> bytes:
    return bytes(fake.disk().data[lba * 512 : (lba + blocks) * 512])


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("iscsifs")]


# -- a connection lost mid-transfer -----------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_connection_lost_mid_read(autojump_clock: Any, reset: bool) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec, offers={"MaxRecvDataSegmentLength": "4096"}) as (s, _):
        await trio.sleep(1.5)
        fake.reset = reset
        fake.drop_mid_transfer = 1
        t0 = trio.current_time()
        assert await read_blocks(s, 1, 40, 64) == disk_bytes(fake, 40, 64)
        assert trio.current_time() == t0  # reconnected and re-issued at once
        assert s.reconnects == 1
        assert [(name, state) for name, _, state, _ in rec.calls] == [
            ("connected", State.CONNECTED), ("disconnected", State.RECOVERING),
            ("connected", State.CONNECTED)]
        assert [(r.isid, r.tsih_requested) for r in fake.logins] == [(s.settings.isid, 0)] * 2
        reads = [(c.conn, c.lba_range) for c in fake.commands]
        assert reads == [(1, (40, 64)), (2, (40, 64))]


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_connection_lost_mid_write(autojump_clock: Any, reset: bool) -> None:
    fake = FakeTarget(mrdsl=8192, first_burst=16384, max_burst=16384)
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        fake.reset = reset
        fake.drop_mid_transfer = 1
        payload = bytes(range(256)) * 256  # 64 KiB: immediate, unsolicited, then R2Ts
        await write_blocks(s, 1, 100, payload)
        assert disk_bytes(fake, 100, 128) == payload
        assert s.reconnects == 1
        assert [c.conn for c in fake.commands] == [1, 2]
        assert fake.write_status == [(1, 100, 128)]
        assert rec.names() == ["connected", "disconnected", "connected"]


async def test_connection_closed_after_n_commands(autojump_clock: Any) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        fake.close_after_commands = 2
        for lba in range(4):
            assert await read_blocks(s, 1, lba, 1) == disk_bytes(fake, lba, 1)
        assert [(c.conn, c.lba_range[0]) for c in fake.commands] == [
            (1, 0), (1, 1), (1, 2), (2, 2), (2, 3)]
        assert s.reconnects == 1
        assert rec.names() == ["connected", "disconnected", "connected"]


# -- outages and the hold time ----------------------------------------------------------------


async def test_outage_shorter_than_hold_time(autojump_clock: Any) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        fake.refuse = True
        t0 = trio.current_time()
        await fake.current.drop()
        out = spawn(nursery, read_blocks, s, 1, 0, 4)
        await trio.sleep(20)
        assert not out.done and s.state is State.RECOVERING
        assert len(fake.dials) > 2  # it kept trying
        fake.refuse = False
        await wait_for(lambda: out.done)
        assert out.error is None and out.value == disk_bytes(fake, 0, 4)
        assert out.time is not None and t0 + 20 < out.time < t0 + 20 + T.reconnect_max * 1.5
        assert s.state is State.CONNECTED and s.reconnects == 1 and s.outage_since is None


async def test_outage_longer_than_hold_time(autojump_clock: Any) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        await trio.sleep(0.7)
        fake.refuse = True
        t0 = trio.current_time()
        await fake.current.drop()
        waiting = [spawn(nursery, read_blocks, s, 1, n, 1) for n in range(3)]
        await wait_for(lambda: all(o.done for o in waiting), step=0.5)
        for out in waiting:
            assert isinstance(out.error, SessionUnavailable)
            assert out.time == t0 + T.hold
            assert "hold time" in str(out.error) and "ECONNREFUSED" in str(out.error)
        assert s.state is State.FAILED
        # While unavailable, new I/O fails at once.
        t1 = trio.current_time()
        with pytest.raises(SessionUnavailable):
            await read_blocks(s, 1, 0, 1)
        assert trio.current_time() == t1
        # The same Session comes back when the target does.
        fake.refuse = False
        await wait_call(rec, "connected", 2)
        assert s.state is State.CONNECTED
        assert await read_blocks(s, 1, 7, 1) == disk_bytes(fake, 7, 1)


@pytest.mark.parametrize(("new_hold", "fails_at"), [(3.0, 5.0), (60.0, 60.0)],
                         ids=["shorter", "longer"])
async def test_hold_time_changed_during_outage(autojump_clock: Any, new_hold: float,
                                               fails_at: float) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, nursery):
        fake.refuse = True
        t0 = trio.current_time()
        await fake.current.drop()
        out = spawn(nursery, read_blocks, s, 1, 0, 1)
        await trio.sleep(5)
        assert not out.done
        s.set_hold_time(new_hold)
        await wait_for(lambda: out.done, step=0.25)
        assert isinstance(out.error, SessionUnavailable)
        assert out.time == t0 + fails_at
        assert f"{new_hold:g} s hold time" in str(out.error)


async def test_logout_during_an_outage(autojump_clock: Any) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, nursery):
        fake.refuse = True
        await fake.current.drop()
        out = spawn(nursery, read_blocks, s, 1, 0, 1)
        await trio.sleep(3)
        t = trio.current_time()
        await s.logout()
        assert trio.current_time() == t and s.state is State.IDLE
        await wait_for(lambda: out.done)
        assert isinstance(out.error, SessionClosed) and out.time == t
        with pytest.raises(SessionUnavailable, match="not logged in"):
            await read_blocks(s, 1, 0, 1)


async def test_planned_drop_then_outage_fails_after_hold(autojump_clock: Any) -> None:
    """A target that announces a drop (Time2Wait) and then stays away: waiting I/O must still
    fail after the hold time, counted from the loss."""
    fake = FakeTarget()
    async with running(fake) as (s, nursery):
        fake.refuse = True
        t0 = trio.current_time()
        await fake.send_async(AsyncEvent.CONNECTION_DROP, parameter2=2, parameter3=20)
        await fake.current.drop()
        out = spawn(nursery, read_blocks, s, 1, 0, 1)
        with trio.move_on_after(T.hold * 4):
            await wait_for(lambda: out.done, step=0.25)
        assert isinstance(out.error, SessionUnavailable)
        assert out.time == t0 + T.hold


async def test_persistent_session_fails_io_queued_before_the_first_login(
        autojump_clock: Any) -> None:
    """Auto-login (persistent) to a target that is down: I/O queued while the first attempt
    runs fails when the session turns unavailable, like I/O issued after it does."""
    fake = FakeTarget()
    fake.refuse = True

    async def slow_refusal(host: str, port: int, *, timeout: float) -> Any:
        await trio.sleep(0.5)
        return await fake.connect(host, port, timeout=timeout)

    session = Session(settings(fake, timeouts=T), connector=slow_refusal)
    async with fake.serving(), trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: session.run(persistent=True,
                                                            task_status=task_status))
        queued = spawn(nursery, read_blocks, session, 1, 0, 1)
        with trio.move_on_after(T.hold * 2):
            await wait_for(lambda: queued.done, step=0.25)
        assert session.state is State.FAILED
        assert isinstance(queued.error, SessionUnavailable)
        assert queued.time == 0.5 and "ECONNREFUSED" in str(queued.error)
        with pytest.raises(SessionUnavailable):
            await read_blocks(session, 1, 0, 1)
        fake.refuse = False
        await wait_for(lambda: session.state is State.CONNECTED)
        assert await read_blocks(session, 1, 0, 1) == disk_bytes(fake, 0, 1)
        nursery.cancel_scope.cancel()


# -- a silent target --------------------------------------------------------------------------


async def test_idle_session_pings(autojump_clock: Any) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, _):
        t0 = trio.current_time()
        await trio.sleep(17)
        assert fake.current.pings == [t0 + 5, t0 + 10, t0 + 15]
        assert s.reconnects == 0 and s.state is State.CONNECTED


@pytest.mark.parametrize("how", ["now", "after-pdus"])
async def test_silent_target_is_detected_by_ping(autojump_clock: Any, how: str) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        await trio.sleep(0.3)
        old = fake.current
        if how == "after-pdus":  # answers this READ, then nothing more
            fake.silent_after_pdus = old.pdus + 1
        await read_blocks(s, 1, 0, 1)
        t_last = trio.current_time()  # the last byte the target sends on this connection
        old.silent = True
        await trio.sleep(1)
        out = spawn(nursery, read_blocks, s, 1, 9, 2)
        lost = await wait_call(rec, "disconnected")
        assert lost == t_last + T.noop_interval + T.noop_timeout
        pings = [t for t, p in zip(old.arrivals, old.received, strict=True)
                 if isinstance(p, P.NopOut)]
        assert pings == [t_last + T.noop_interval]
        reasons = [c[3][0] for c in rec.calls if c[0] == "disconnected"]
        assert reasons == ["no answer to NOP-Out ping within 3 s"]
        await wait_for(lambda: out.done)
        assert out.value == disk_bytes(fake, 9, 2) and out.time == lost
        assert s.reconnects == 1
        assert [r.tsih_requested for r in fake.logins] == [0, 0]
        assert old.closed


# -- command timeouts -------------------------------------------------------------------------


async def test_command_timeout_abort_succeeds(autojump_clock: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, _):
        await trio.sleep(0.4)
        fake.hold_next = 1
        t0 = trio.current_time()
        assert await read_blocks(s, 1, 3, 1) == disk_bytes(fake, 3, 1)
        assert trio.current_time() == t0 + T.command
        conn = fake.current
        assert [(t, r.function, r.referenced_tag) for t, r in conn.tmfs] == [
            (t0 + T.command, TmfFunction.ABORT_TASK, fake.commands[0].itt)]
        assert [c.conn for c in fake.commands] == [1, 1]  # re-issued on the same connection
        assert s.reconnects == 0
    log = messages(caplog)
    assert any("READ(10) timed out after 10 s: sending ABORT TASK" in m for m in log)
    assert any("task aborted; re-issuing it" in m for m in log)


async def test_command_timeout_lun_reset(autojump_clock: Any,
                                         caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTarget()
    fake.abort_response = None
    async with running(fake) as (s, _):
        await trio.sleep(0.4)
        fake.hold_next = 1
        t0 = trio.current_time()
        assert await read_blocks(s, 1, 3, 1) == disk_bytes(fake, 3, 1)
        assert trio.current_time() == t0 + T.command + T.tmf
        tmfs = [(t, r.function) for t, r in fake.current.tmfs]
        assert tmfs == [(t0 + T.command, TmfFunction.ABORT_TASK),
                        (t0 + T.command + T.tmf, TmfFunction.LOGICAL_UNIT_RESET)]
        assert s.reconnects == 0
    log = messages(caplog)
    assert any("ABORT TASK got no answer: sending LOGICAL UNIT RESET" in m for m in log)
    assert any("LUN reset; re-issuing its commands" in m for m in log)


async def test_command_timeout_drops_the_connection(autojump_clock: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTarget()
    fake.abort_response = None
    fake.lun_reset_response = None
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        await trio.sleep(0.4)
        fake.hold_next = 1
        t0 = trio.current_time()
        assert await read_blocks(s, 1, 3, 1) == disk_bytes(fake, 3, 1)
        assert trio.current_time() == t0 + T.command + 2 * T.tmf
        assert [c.conn for c in fake.commands] == [1, 2]
        assert [t for t, _ in fake.connections[0].tmfs] == [t0 + 10, t0 + 12]
        assert s.reconnects == 1
        assert rec.calls[1][1] == t0 + T.command + 2 * T.tmf
    log = messages(caplog)
    assert any("LOGICAL UNIT RESET got no answer: dropping the connection" in m for m in log)


async def test_a_byte_a_second_fails_within_the_hold_time_then_recovers(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A target that answers one byte a second (the 560 bytes of a 1-block READ would take
    over 9 minutes; its logins too): the command times out, the task-management steps get no
    answer, the connection is dropped, the logins time out, and the read fails with a clear
    error once the hold time is over. Then the target speaks normally again and the same
    session works."""
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        await trio.sleep(0.4)
        fake.trickle = True
        fake.trickle_delay = 1.0
        t0 = trio.current_time()
        out = spawn(nursery, read_blocks, s, 1, 3, 1)
        await wait_for(lambda: out.done, step=0.5)
        assert isinstance(out.error, SessionUnavailable), out.error
        assert "hold time" in str(out.error)
        # command timeout, ABORT TASK and LUN RESET unanswered, then the hold time
        assert out.time == t0 + T.command + 2 * T.tmf + T.hold
        log = messages(caplog)
        assert any("LOGICAL UNIT RESET got no answer: dropping the connection" in m
                   for m in log)
        assert any("login failed" in m and "no answer within 4 s" in m for m in log)
        assert any("hold time of 30 s expired; failing 1 waiting commands" in m for m in log)
        fake.trickle = False
        await wait_call(rec, "connected", 2)
        assert await read_blocks(s, 1, 7, 1) == disk_bytes(fake, 7, 1)


async def test_command_timeout_counts_from_when_the_command_was_sent(
        autojump_clock: Any) -> None:
    """A command held back by a closed CmdSN window is not charged for the time it waited:
    its timeout starts when it goes out to the target."""
    fake = FakeTarget(window=1)
    async with running(fake) as (s, nursery):
        fake.hold_next = 2
        first = spawn(nursery, read_blocks, s, 1, 0, 1)
        await wait_for(lambda: fake.outstanding == 1)
        second = spawn(nursery, read_blocks, s, 1, 1, 1)
        await trio.sleep(9)
        assert len(fake.commands) == 1  # the second waits for the window
        t_sent = trio.current_time()
        await fake.release()  # answers the first; the second goes out now and is held
        await wait_for(lambda: second.done, step=0.5)
        assert first.time == t_sent
        assert [(t, r.function) for t, r in fake.current.tmfs] == [
            (t_sent + T.command, TmfFunction.ABORT_TASK)]
        assert second.value == disk_bytes(fake, 1, 1) and second.time == t_sent + T.command


# -- digest errors ----------------------------------------------------------------------------

DIGESTS = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C", "MaxRecvDataSegmentLength": "4096"}


async def test_data_digest_error_at_erl0_reconnects(autojump_clock: Any) -> None:
    fake = FakeTarget()
    async with running(fake, offers=DIGESTS) as (s, _):
        fake.corrupt = ("data", 2)
        assert await read_blocks(s, 1, 0, 32) == disk_bytes(fake, 0, 32)
        assert s.reconnects == 1
        assert [c.conn for c in fake.commands] == [1, 2]


async def test_data_digest_error_at_erl1_is_recovered_by_snack(autojump_clock: Any) -> None:
    fake = FakeTarget(erl=1)
    async with running(fake, offers={**DIGESTS, "ErrorRecoveryLevel": "1"}) as (s, _):
        assert s.params is not None and s.params.error_recovery_level == 1
        fake.corrupt = ("data", 2)
        assert await read_blocks(s, 1, 0, 32) == disk_bytes(fake, 0, 32)
        assert s.reconnects == 0
        assert [(x.snack_type, x.begrun, x.run_length) for x in fake.current.snacks] == [
            (P.SnackType.DATA_R2T, 2, 0)]
        assert len(fake.commands) == 1


async def test_header_digest_error_reconnects(autojump_clock: Any) -> None:
    fake = FakeTarget(erl=1)
    async with running(fake, offers={**DIGESTS, "ErrorRecoveryLevel": "1"}) as (s, _):
        fake.corrupt = ("header", 1)
        assert await read_blocks(s, 1, 0, 32) == disk_bytes(fake, 0, 32)
        assert s.reconnects == 1
        assert [c.conn for c in fake.commands] == [1, 2]


async def test_completion_arriving_with_a_fatal_error_is_not_lost(autojump_clock: Any) -> None:
    """Two answers in one segment: a good one, then one with a bad data digest (ERL 0). The
    first command is complete and must be reported as such, not forgotten with the
    connection."""
    fake = FakeTarget()
    async with running(fake, offers=DIGESTS) as (s, nursery):
        fake.gate = 2
        fake.corrupt = ("data", 0)
        fake.corrupt_skip = 1
        first = spawn(nursery, read_blocks, s, 1, 0, 1)
        second = spawn(nursery, read_blocks, s, 1, 1, 1)
        with trio.move_on_after(60):
            await wait_for(lambda: first.done and second.done, step=0.1)
        assert first.done and first.value == disk_bytes(fake, 0, 1)
        assert second.done and second.value == disk_bytes(fake, 1, 1)


# -- Async Messages ---------------------------------------------------------------------------


async def test_async_logout_request(autojump_clock: Any,
                                    caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        fake.hold_next = 1
        first = spawn(nursery, read_blocks, s, 1, 0, 1)
        await wait_for(lambda: fake.outstanding == 1)
        t0 = trio.current_time()
        await fake.send_async(AsyncEvent.LOGOUT_REQUEST, parameter3=10)
        later = spawn(nursery, read_blocks, s, 1, 8, 1)
        await trio.sleep(2)
        old = fake.current
        assert old.logouts == [] and len(fake.commands) == 1  # draining: nothing new goes out
        await fake.release()
        await wait_for(lambda: first.done and later.done)
        assert first.value == disk_bytes(fake, 0, 1) and later.value == disk_bytes(fake, 8, 1)
        assert len(old.logouts) == 1 and old.closed
        assert [r.time for r in fake.logins] == [0.0, t0 + 2]  # back within Parameter3
        assert [c.conn for c in fake.commands] == [1, 2]
        assert s.state is State.CONNECTED
        assert rec.names() == ["connected", "disconnected", "connected"]
        assert rec.calls[1][3] == ("logged out at the target's request; logging in again",)
    # A logout the target asked for is not a failure: nothing at WARNING or above.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("event", [AsyncEvent.CONNECTION_DROP, AsyncEvent.SESSION_DROP])
async def test_async_drop_waits_time2wait(autojump_clock: Any, event: AsyncEvent) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, nursery):
        await trio.sleep(0.6)
        t0 = trio.current_time()
        await fake.send_async(event, parameter2=3, parameter3=20)
        await fake.current.drop()
        out = spawn(nursery, read_blocks, s, 1, 4, 1)
        await wait_for(lambda: out.done)
        assert out.value == disk_bytes(fake, 4, 1)
        assert [r.time for r in fake.logins] == [0.0, t0 + 3]
        assert out.time == t0 + 3


async def test_async_negotiation_request(autojump_clock: Any) -> None:
    fake = FakeTarget()
    async with running(fake) as (s, _):
        await fake.send_async(AsyncEvent.NEGOTIATION_REQUEST, parameter3=5)
        assert await read_blocks(s, 1, 2, 1) == disk_bytes(fake, 2, 1)
        assert len(fake.current.texts) == 1
        assert s.reconnects == 0 and s.state is State.CONNECTED


async def test_async_scsi_event_luns_changed(autojump_clock: Any) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        await fake.send_async(AsyncEvent.SCSI_ASYNC_EVENT, sense=fixed_sense(0x6, 0x3F, 0x0E))
        await wait_call(rec, "luns_changed")
        assert await read_blocks(s, 1, 2, 1) == disk_bytes(fake, 2, 1)
        assert s.reconnects == 0


@pytest.mark.parametrize(("event", "sense", "reconnects", "logged"), [
    (AsyncEvent.SCSI_ASYNC_EVENT, b"\x7f\x00", 0, "SCSI asynchronous event: undecodable"),
    (200, b"", 0, "asynchronous message 200 ignored"),
    (AsyncEvent.TASK_TERMINATION, b"", 1, "target terminated all tasks of a LUN"),
], ids=["bad-sense", "unknown-event", "task-termination"])
async def test_other_async_messages(autojump_clock: Any, caplog: pytest.LogCaptureFixture,
                                    event: int, sense: bytes, reconnects: int,
                                    logged: str) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as (s, nursery):
        fake.hold_next = 1
        out = spawn(nursery, read_blocks, s, 1, 3, 1)
        await wait_for(lambda: fake.outstanding == 1)
        await fake.send_async(event, sense=sense)
        await trio.sleep(1)
        if not reconnects:
            await fake.release()
        await wait_for(lambda: out.done)
        assert out.value == disk_bytes(fake, 3, 1)
        assert s.reconnects == reconnects and s.state is State.CONNECTED
        assert "luns_changed" not in rec.names()
    assert any(logged in m for m in messages(caplog))


# -- Reject -----------------------------------------------------------------------------------


async def test_rejected_command_fails_alone(autojump_clock: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTarget()
    rejected: list[int] = []

    def reject(cmd: P.ScsiCommand) -> int | None:
        if cmd.cdb[0] == 0x28 and not rejected:
            rejected.append(cmd.itt)
            return P.RejectReason.INVALID_PDU_FIELD
        return None

    async with running(fake) as (s, _):
        fake.reject = reject
        with pytest.raises(CommandFailed, match=r"target rejected the command \(reason 0x09\)"):
            await read_blocks(s, 1, 0, 1)
        assert s.state is State.CONNECTED and s.reconnects == 0
        assert await read_blocks(s, 1, 0, 1) == disk_bytes(fake, 0, 1)
    assert any("rejected a PDU (reason 0x09)" in m for m in messages(caplog))


# -- redirects and login timing -----------------------------------------------------------------


async def test_temporary_redirect(autojump_clock: Any) -> None:
    fake = FakeTarget()
    fake.redirects[("127.0.0.1", 3260)] = Redirect("127.0.0.2", 3261)
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        assert fake.dials == [("127.0.0.1", 3260), ("127.0.0.2", 3261)]
        await fake.current.drop()
        await wait_call(rec, "connected", 2)
        # A temporary redirect holds for one login: the reconnect asks the original portal.
        assert fake.dials[2:] == [("127.0.0.1", 3260), ("127.0.0.2", 3261)]
        assert "portal_moved" not in rec.names()
        assert await read_blocks(s, 1, 0, 1) == disk_bytes(fake, 0, 1)


async def test_permanent_redirect(autojump_clock: Any) -> None:
    fake = FakeTarget()
    fake.redirects[("127.0.0.1", 3260)] = Redirect("127.0.0.3", 3262, permanent=True)
    rec = Recorder()
    async with running(fake, rec) as (s, _):
        assert fake.dials == [("127.0.0.1", 3260), ("127.0.0.3", 3262)]
        assert [c[3] for c in rec.calls if c[0] == "portal_moved"] == [("127.0.0.3", 3262)]
        assert await read_blocks(s, 1, 0, 1) == disk_bytes(fake, 0, 1)


@pytest.mark.parametrize("hops", [2, 3])
async def test_redirect_chain(autojump_clock: Any, hops: int) -> None:
    fake = FakeTarget()
    for i in range(hops):
        fake.redirects[(f"127.0.0.{i + 1}", 3260)] = Redirect(f"127.0.0.{i + 2}", 3260)
    session = Session(settings(fake, timeouts=T, max_redirects=2), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
        if hops <= 2:
            assert error is None and len(fake.dials) == hops + 1
            nursery.cancel_scope.cancel()
        else:
            assert isinstance(error, TransportError)
            assert str(error) == f"login to {fake.name}: more than 2 redirects"
            assert len(fake.dials) == 3
            assert session.state is State.IDLE


async def test_login_that_never_answers_times_out(autojump_clock: Any) -> None:
    fake = FakeTarget()
    fake.login_silent = True
    session = Session(settings(fake, timeouts=T), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        await trio.sleep(0.9)
        t0 = trio.current_time()
        error = await nursery.start(session.run)
        assert trio.current_time() == t0 + T.login
        assert isinstance(error, TransportError)
        assert "no answer within 4 s" in str(error)


@pytest.mark.parametrize(("delay", "ok"), [(0.9, True), (1.1, False)])
async def test_slow_login(autojump_clock: Any, delay: float, ok: bool) -> None:
    fake = FakeTarget()
    fake.login_delay = delay  # two login exchanges: 2 * delay against the 4 s limit... of 2 s
    session = Session(settings(fake, timeouts=Timeouts(login=2.0)), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
        assert (error is None) is ok
        if not ok:
            assert trio.current_time() == 2.0
        nursery.cancel_scope.cancel()


# -- nothing lost -----------------------------------------------------------------------------


async def test_write_returns_after_good_status_for_every_command(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=1024, max_transfer_blocks=8)}, mrdsl=1024,
                      first_burst=1024)
    async with running(fake) as (s, _):
        dev = BlockDevice(s, (await discover(s))[0])
        fake.drop_mid_transfer = 2
        payload = bytes((i * 7) & 0xFF for i in range(64 * 512))
        await dev.write(512 * 100, payload)
        # Every block of the write was answered GOOD before write() returned.
        covered: set[int] = set()
        for _lun, lba, count in fake.write_status:
            covered.update(range(lba, lba + count))
        assert covered >= set(range(100, 164))
        assert disk_bytes(fake, 100, 64) == payload
        assert s.reconnects == 2


async def test_overlapping_writes_never_in_flight_together(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=256, max_transfer_blocks=8)}, mrdsl=1024,
                      first_burst=1024)
    async with running(fake) as (s, nursery):
        dev = BlockDevice(s, (await discover(s))[0])
        fake.drop_mid_transfer = 1
        seen = len(fake.commands)
        a = spawn(nursery, dev.write, 10 * 512 + 100, b"A" * 8000)
        await wait_for(lambda: len(fake.commands) > seen)  # A holds its range now
        b = spawn(nursery, dev.write, 20 * 512, b"B" * 4096)
        await wait_for(lambda: a.done and b.done)
        assert a.error is None and b.error is None
        assert s.reconnects == 1
        got = bytes(fake.disk().data)
        assert got[10 * 512 + 100 : 20 * 512] == b"A" * (20 * 512 - 10 * 512 - 100)
        assert got[20 * 512 : 28 * 512] == b"B" * 4096
    # running() checked fake.errors: no WRITE overlapped another one in flight.


async def test_overlap_detector_sees_raw_commands(autojump_clock: Any) -> None:
    """The fake's overlap check itself: two raw WRITEs to the same blocks at once are seen."""
    fake = FakeTarget()
    session = Session(settings(fake, timeouts=T), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        assert await nursery.start(session.run) is None
        fake.gate = 2
        async with trio.open_nursery() as inner:
            inner.start_soon(write_blocks, session, 1, 0, b"x" * 1024)
            inner.start_soon(write_blocks, session, 1, 1, b"y" * 1024)
        nursery.cancel_scope.cancel()
    assert len(fake.errors) == 1 and "in flight" in fake.errors[0]


# -- hostile input ----------------------------------------------------------------------------

STAT: dict[str, Any] = dict(statsn=0x9000, exp_cmdsn=1, max_cmdsn=64)
HOSTILE = {
    "response-unknown-itt": (P.ScsiResponse(status=0, itt=0x7777, **STAT),
                             "SCSI Response for unknown task ITT 0x00007777"),
    "data-in-unknown-itt": (P.DataIn(final=True, itt=0x7778, datasn=0, buffer_offset=0,
                                     exp_cmdsn=1, max_cmdsn=64, data=b"x" * 512),
                            "unknown or non-read task ITT 0x00007778"),
    "nop-in-unknown-ping": (P.NopIn(itt=0x7779, ttt=P.RESERVED_TAG, **STAT),
                            "NOP-In for unknown ping ITT 0x00007779"),
    "r2t-unknown-itt": (P.R2T(itt=0x777A, ttt=5, r2tsn=0, buffer_offset=0, desired_length=512,
                              **STAT), "R2T for unknown or non-write task ITT 0x0000777a"),
    "unknown-opcode": (bytes([0x3E]) + bytes(47), "unknown PDU opcode 0x3e"),
    "oversized-segment": (bytes([0x25, 0x80, 0, 0, 0, 0x10, 0, 0]) + bytes(40),
                          "data segment of 1048576 bytes (opcode 0x25) exceeds the 262144"),
    "logout-response-unasked": (P.LogoutResponse(response=0, itt=0x777B, **STAT),
                                "logout response for unknown ITT 0x0000777b"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_pdu_drops_the_connection(autojump_clock: Any, case: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A PDU the protocol forbids ends the connection; the I/O on it is re-issued on the
    next one and completes, and the log names the cause."""
    what, cause = HOSTILE[case]
    fake = FakeTarget()
    async with running(fake) as (s, nursery):
        fake.hold_next = 1
        out = spawn(nursery, read_blocks, s, 1, 5, 2)
        await wait_for(lambda: fake.outstanding == 1)
        await fake.current.send(what)
        await wait_for(lambda: out.done)
        assert out.error is None and out.value == disk_bytes(fake, 5, 2)
        assert s.reconnects == 1 and s.state is State.CONNECTED
        assert [c.conn for c in fake.commands] == [1, 2]
    lost = [m for m in messages(caplog) if "connection lost" in m]
    assert len(lost) == 1 and cause in lost[0], lost


async def test_zero_length_data_in_is_accepted(autojump_clock: Any) -> None:
    """RFC 7143 11.7.7: initiators MUST be able to receive 0-length data segments."""
    fake = FakeTarget()
    async with running(fake) as (s, _):
        fake.empty_data_in = 1
        assert await read_blocks(s, 1, 3, 2) == disk_bytes(fake, 3, 2)
        assert s.reconnects == 0  # not merely recovered by a reconnect


async def test_command_right_after_a_completion_that_preceded_a_fatal_pdu(
        autojump_clock: Any) -> None:
    """A large READ completes (its data received straight into the caller's buffer) and a
    forbidden PDU follows in the same segment. The caller goes on with its next command at
    once, before the session has cleaned up the dead connection: that command must wait for
    the reconnect, not fail with the dead connection's protocol error."""
    fake = FakeTarget(max_burst=1 << 20)  # one 1 MiB Data-In: more than the staging buffer
    async with running(fake, offers={"MaxRecvDataSegmentLength": str(1 << 20)}) as (s, _):
        # Whether the next command runs before the cleanup depends on trio's (randomised)
        # scheduling order and on where the socket splits the stream: about one round in
        # two hits the window, so twelve rounds all but surely do.
        for round_ in range(1, 13):
            fake.after_next_answer = HOSTILE["response-unknown-itt"][0]
            assert await read_blocks(s, 1, 0, 2048) == disk_bytes(fake, 0, 2048)
            assert await read_blocks(s, 1, 200, 1) == disk_bytes(fake, 200, 1)
            assert s.reconnects == round_


async def test_cancelled_write_keeps_its_range_until_the_target_is_done(
        autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=64)})
    async with running(fake) as (s, _):
        dev = BlockDevice(s, (await discover(s))[0])
        fake.hold_next = 1
        with trio.move_on_after(1):  # e.g. a FUSE interrupt
            await dev.write(0, b"A" * 1024)
        await dev.write(512, b"B" * 512)
    # running() fails here when the fake saw the two WRITEs in flight together.


# -- CHAP failures ------------------------------------------------------------------------------


async def test_wrong_chap_secret(autojump_clock: Any) -> None:
    fake = FakeTarget(chap=("alice", SECRETS[0]))
    session = Session(settings(fake, timeouts=T, chap=creds("alice", SECRETS[1])),
                      connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
    assert isinstance(error, AuthenticationFailed) and isinstance(error, LoginError)
    text = str(error)
    assert text == (f"login to {fake.name}: authentication failed "
                    "(CHAP user name or secret rejected by target)")
    assert "\n" not in text and all(x not in text + repr(error) for x in SECRETS)
    assert session.state is State.IDLE and fake.logins == []


async def test_forged_mutual_chap_proof(autojump_clock: Any) -> None:
    fake = FakeTarget(chap=("alice", SECRETS[0]), mutual=("target", SECRETS[3]))
    session = Session(settings(fake, timeouts=T, chap=creds("alice", SECRETS[0]),
                               mutual=creds("target", SECRETS[2])), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
    assert isinstance(error, MutualAuthenticationFailed)
    assert "target's CHAP response is wrong" in str(error)
    assert all(x not in str(error) for x in SECRETS)
