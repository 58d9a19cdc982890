# iscsifs/engine/session.py (and lun.py on top of it) in normal operation, against the fake target
# of tests/fake_target.py over a socketpair: login with and without CHAP, LUN discovery,
# BlockDevice reads and writes at odd offsets compared with the fake's disk, Data-In / R2T /
# Data-Out splitting, a queue of 32 commands, the CmdSN window, retries of UNIT ATTENTION, and
# a clean logout. Recovery from faults is in test_session_recovery.py. Every test runs on the
# autojump clock; no test sleeps in real time.

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from iscsifs import scsi
from iscsifs.engine.lun import BlockDevice, LunNotSupported, discover
from iscsifs.engine.session import Session, SessionUnavailable, State
from iscsifs.proto import pdu as P
from tests.fake_target import (
    Controller,
    Disk,
    FakeTarget,
    Recorder,
    creds,
    read_blocks,
    settings,
    wait_for,
    write_blocks,
)

SECRETS = ("alice-secret-1234", "target-proof-5678")


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        for secret in SECRETS:
            assert secret not in text


@asynccontextmanager
async def running(fake: FakeTarget, listener: Recorder | None = None,
                  **kw: Any) -> AsyncIterator[Session]:
    session = Session(settings(fake, **kw), listener=listener, connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        error = await nursery.start(session.run)
        assert error is None, error
        yield session
        await session.logout()
        nursery.cancel_scope.cancel()
    assert fake.errors == []


# -- login and discovery ----------------------------------------------------------------------


async def test_login_and_discovery(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={
        0: Controller(),
        1: Disk(blocks=2048, serial_no="SER-ONE"),
        2: Disk(blocks=100, block_size=4096, serial_no="SER-TWO", unmap=False,
                max_transfer_blocks=8),
    })
    rec = Recorder()
    async with running(fake, rec) as s:
        assert s.state is State.CONNECTED
        assert rec.names() == ["connected"]
        assert s.params is not None and s.params.max_xmit_data_segment_length == 65536
        assert [(r.tsih_requested, r.isid) for r in fake.logins] == [(0, s.settings.isid)]
        infos = await discover(s)
        assert [i.number for i in infos] == [0, 1, 2]
        ctrl, one, two = infos
        assert ctrl.device_type == 0x0C and not ctrl.is_block_device
        assert (one.block_size, one.num_blocks, one.serial, one.unmap) == (
            512, 2048, "SER-ONE", True)
        assert (two.block_size, two.num_blocks, two.serial, two.unmap) == (
            4096, 100, "SER-TWO", False)
        assert two.max_transfer_bytes == 8 * 4096
        assert (one.vendor, one.product) == ("FAKE", "iscsifs-fake")
        with pytest.raises(LunNotSupported, match="LUN 0 is a"):
            BlockDevice(s, ctrl)


async def test_chap_one_way_and_mutual(autojump_clock: Any) -> None:
    fake = FakeTarget(chap=("alice", SECRETS[0]), mutual=("target", SECRETS[1]))
    async with running(fake, chap=creds("alice", SECRETS[0]),
                       mutual=creds("target", SECRETS[1])) as s:
        assert s.login_info is not None and s.login_info.auth_method == "CHAP"
        assert await read_blocks(s, 1, 0, 1) == bytes(fake.disk().data[:512])
    fake = FakeTarget(chap=("alice", SECRETS[0]))
    async with running(fake, chap=creds("alice", SECRETS[0])) as s:
        assert fake.logins[0].auth == "CHAP"


# -- block I/O --------------------------------------------------------------------------------

TARGETS: dict[str, dict[str, Any]] = {
    # Small segments and bursts force split Data-In, unsolicited Data-Out and several R2Ts.
    "unsolicited": dict(mrdsl=1024, first_burst=2048, max_burst=4096),
    "r2t-only": dict(mrdsl=1024, max_burst=4096, initial_r2t=True, immediate_data=False),
    "immediate-only": dict(mrdsl=8192, first_burst=8192, initial_r2t=True),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
async def test_block_device_odd_offsets(autojump_clock: Any, target: str) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=512, max_transfer_blocks=16)}, **TARGETS[target])
    offers = {"MaxRecvDataSegmentLength": "1024"}
    async with running(fake, offers=offers, max_in_flight=8) as s:
        infos = await discover(s)
        dev = BlockDevice(s, infos[0])
        disk = fake.disk()
        rng = random.Random(7)
        cases = [(0, 512), (1, 1), (511, 2), (100, 5000), (4095, 8193), (1000, 70000),
                 (512 * 512 - 3, 3)]
        for offset, length in cases:
            data = bytes(rng.randrange(256) for _ in range(length))
            before = bytes(disk.data)
            assert await dev.write(offset, data) == length
            assert bytes(disk.data[offset : offset + length]) == data
            assert disk.data[:offset] == before[:offset]
            assert disk.data[offset + length :] == before[offset + length :]
            got = await dev.read(offset, length)
            assert bytes(got) == data
        # Reads past the end come back short, then empty.
        assert bytes(await dev.read(dev.size - 10, 100)) == bytes(disk.data[-10:])
        assert bytes(await dev.read(dev.size, 100)) == b""
        with pytest.raises(OverflowError):
            await dev.write(dev.size - 1, b"xy")
    received = [p for c in fake.connections for p in c.received]
    data_outs = [p for p in received if isinstance(p, P.DataOut)]
    writes = [p for p in received if isinstance(p, P.ScsiCommand) and p.write]
    solicited = [p for p in data_outs if p.ttt != P.RESERVED_TAG]
    unsolicited = [p for p in data_outs if p.ttt == P.RESERVED_TAG]
    assert all(len(p.data) <= fake.mrdsl for p in data_outs + writes)
    if target == "unsolicited":
        assert solicited and unsolicited and any(w.data for w in writes)
    elif target == "r2t-only":
        assert solicited and not unsolicited and not any(w.data for w in writes)
    else:  # every write fits its immediate data
        assert not data_outs and all(len(w.data) == w.expected_length for w in writes)


async def test_unmap_and_sync(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=64)})
    async with running(fake) as s:
        dev = BlockDevice(s, (await discover(s))[0])
        before = bytes(fake.disk().data)
        await dev.unmap(700, 2000)  # whole blocks 2..5 go; partial 1 and 5 stay
        assert bytes(fake.disk().data[1024:2560]) == bytes(1536)
        assert fake.disk().data[:1024] == before[:1024]
        assert fake.disk().data[2560:] == before[2560:]
        await dev.sync()
        assert [c.opcode for c in fake.commands][-2:] == [0x42, 0x35]


async def test_digests_both_ways(autojump_clock: Any) -> None:
    fake = FakeTarget(mrdsl=4096)
    offers = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C",
              "MaxRecvDataSegmentLength": "4096"}
    async with running(fake, offers=offers) as s:
        assert s.params is not None and s.params.header_digest and s.params.data_digest
        payload = bytes(range(256)) * 64
        await write_blocks(s, 1, 10, payload)
        assert await read_blocks(s, 1, 10, 32) == payload


async def test_trickled_bytes(autojump_clock: Any) -> None:
    """A target whose every byte arrives in its own segment: framing must not care."""
    fake = FakeTarget()
    fake.trickle = True
    async with running(fake, offers={"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}) as s:
        assert await read_blocks(s, 1, 5, 2) == bytes(fake.disk().data[2560:3584])
        await write_blocks(s, 1, 5, b"\xa5" * 1024)
        assert fake.disk().data[2560:3584] == b"\xa5" * 1024


# -- queueing ---------------------------------------------------------------------------------


async def test_32_commands_in_flight(autojump_clock: Any) -> None:
    fake = FakeTarget(window=64)
    fake.gate = 32  # answer nothing until 32 READs are outstanding at once
    async with running(fake) as s:
        results: dict[int, bytes] = {}

        async def one(lba: int) -> None:
            results[lba] = await read_blocks(s, 1, lba, 1)

        async with trio.open_nursery() as nursery:
            for lba in range(32):
                nursery.start_soon(one, lba * 3)
        assert fake.max_outstanding == 32
        for lba, data in results.items():
            assert data == bytes(fake.disk().data[lba * 512 : lba * 512 + 512])
        assert len(results) == 32


async def test_cmdsn_window_is_honoured(autojump_clock: Any) -> None:
    fake = FakeTarget(window=4)
    async with running(fake) as s:
        fake.hold_next = 4
        done: list[int] = []

        async def one(lba: int) -> None:
            await read_blocks(s, 1, lba, 1)
            done.append(lba)

        async with trio.open_nursery() as nursery:
            for lba in range(10):
                nursery.start_soon(one, lba)
            await wait_for(lambda: fake.outstanding == 4)
            await trio.sleep(5)
            # The window is closed: the other six wait in the initiator, none reached the fake.
            assert len(fake.commands) == 4
            assert s.in_flight == 10
            assert done == []
            await fake.release()
        assert sorted(done) == list(range(10))
        assert fake.max_outstanding == 4
        cmdsns = [c.cmdsn for c in fake.commands]
        assert cmdsns == list(range(cmdsns[0], cmdsns[0] + 10))


async def test_unit_attention_is_retried(autojump_clock: Any) -> None:
    fake = FakeTarget()
    rec = Recorder()
    async with running(fake, rec) as s:
        fake.unit_attention = (0x29, 0x00)  # POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
        assert await read_blocks(s, 1, 0, 1) == bytes(fake.disk().data[:512])
        fake.unit_attention = (0x3F, 0x0E)  # REPORTED LUNS DATA HAS CHANGED
        await read_blocks(s, 1, 0, 1)
        assert [c.opcode for c in fake.commands] == [0x28] * 4
        assert "luns_changed" in rec.names()


async def test_check_condition_is_raised(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=16)})
    async with running(fake) as s:
        with pytest.raises(scsi.IllegalRequest):
            await read_blocks(s, 1, 15, 2)
        assert s.state is State.CONNECTED


async def test_target_ping_is_echoed(autojump_clock: Any) -> None:
    """A NOP-In with a Target Transfer Tag asks for a NOP-Out echo (RFC 7143 11.19)."""
    fake = FakeTarget()
    async with running(fake) as s:
        conn = fake.current
        exp, mx = conn._window()
        await conn.send(P.NopIn(itt=P.RESERVED_TAG, ttt=0x55, statsn=conn.statsn,
                                exp_cmdsn=exp, max_cmdsn=mx, data=b"ping!"))
        await wait_for(lambda: any(isinstance(p, P.NopOut) for p in conn.received))
        echo = [p for p in conn.received if isinstance(p, P.NopOut)]
        assert [(p.itt, p.ttt, p.data, p.immediate) for p in echo] == [
            (P.RESERVED_TAG, 0x55, b"ping!", True)]
        assert s.state is State.CONNECTED


# -- logout -----------------------------------------------------------------------------------


async def test_clean_logout(autojump_clock: Any) -> None:
    fake = FakeTarget()
    session = Session(settings(fake), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        assert await nursery.start(session.run) is None
        await read_blocks(session, 1, 0, 1)
        conn = fake.current
        await session.logout()
        assert [x.reason for x in conn.logouts] == [P.LogoutReason.CLOSE_SESSION]
        assert conn.closed
        assert session.state is State.IDLE
        t = trio.current_time()
        with pytest.raises(SessionUnavailable, match="not logged in"):
            await read_blocks(session, 1, 0, 1)
        assert trio.current_time() == t
        assert len(fake.logins) == 1
    assert fake.errors == []


async def test_logout_waits_for_commands_in_flight(autojump_clock: Any) -> None:
    fake = FakeTarget()
    session = Session(settings(fake), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        assert await nursery.start(session.run) is None
        fake.hold_next = 1
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await read_blocks(session, 1, 6, 1))

        nursery.start_soon(reader)
        await wait_for(lambda: fake.outstanding == 1)
        conn = fake.current
        t0 = trio.current_time()
        nursery.start_soon(session.logout)
        await trio.sleep(1)
        assert conn.logouts == [] and session.state is State.LOGGING_OUT
        await fake.release()
        await wait_for(lambda: conn.closed)
        # The Logout went out as soon as the last command finished, not at the timeout.
        logout_at = [t for t, p in zip(conn.arrivals, conn.received, strict=True)
                     if isinstance(p, P.LogoutRequest)]
        assert logout_at == [t0 + 1]
        assert got == [bytes(fake.disk().data[6 * 512 : 7 * 512])]
    assert fake.errors == []
