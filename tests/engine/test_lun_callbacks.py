# BlockDevice's completion-by-callback path (what the FUSE layer uses): one command per read,
# writes cut into MaxBurstLength commands issued together, retries of UNIT ATTENTION in a task
# with the range still locked, and a session that cannot take the command. Through the
# target-side fake, with exact times on trio's mock clock.

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from iscsifs import scsi
from iscsifs.engine.lun import BlockDevice, discover
from iscsifs.engine.session import Session, SessionUnavailable, Timeouts

from ..fake_target import Disk, FakeTarget, settings

T = Timeouts(connect=1.0, login=4.0, logout=2.5, noop_interval=5.0, noop_timeout=3.0,
             command=10.0, tmf=2.0, hold=30.0, reconnect_min=0.25, reconnect_max=1.0)
WRITE10, WRITE16, READ10 = 0x2A, 0x8A, 0x28


@asynccontextmanager
async def device(fake: FakeTarget) -> AsyncIterator[tuple[Session, BlockDevice, trio.Nursery]]:
    session = Session(settings(fake, timeouts=T), connector=fake.connect)
    async with fake.serving(), trio.open_nursery() as nursery:
        assert await nursery.start(session.run) is None
        info = next(i for i in await discover(session) if i.is_block_device)
        yield session, BlockDevice(session, info), nursery
        nursery.cancel_scope.cancel()
    assert fake.errors == []


async def run(start: Any, *args: Any, nursery: trio.Nursery) -> BaseException | None:
    """Call start_read/start_write and wait for its callback."""
    box: list[BaseException | None] = []
    finished = trio.Event()

    def done(err: BaseException | None) -> None:
        box.append(err)
        finished.set()

    start(*args, done, nursery.start_soon)
    await finished.wait()
    assert len(box) == 1, "done() must be called exactly once"
    return box[0]


def media(fake: FakeTarget, opcodes: tuple[int, ...]) -> list[Any]:
    return [c for c in fake.commands if c.opcode in opcodes]


async def test_read_is_one_command_and_lands_in_the_buffer(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=4096)})
    async with device(fake) as (_s, dev, nursery):
        before = len(media(fake, (READ10,)))
        buf = bytearray(1 << 20)
        assert await run(dev.start_read, 100, memoryview(buf), nursery=nursery) is None
        assert bytes(buf) == bytes(fake.luns[1].data[100 * 512 : 100 * 512 + (1 << 20)])
        assert len(media(fake, (READ10,))) - before == 1


async def test_large_write_goes_out_as_bursts_together(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=4096)}, max_burst=256 * 1024)
    async with device(fake) as (session, dev, nursery):
        assert session.params is not None and session.params.max_burst_length == 256 * 1024
        data = bytes(range(256)) * 4096  # 1 MiB
        before = len(media(fake, (WRITE10, WRITE16)))
        assert await run(dev.start_write, 8, memoryview(data), nursery=nursery) is None
        writes = media(fake, (WRITE10, WRITE16))[before:]
        assert [w.length for w in writes] == [256 * 1024] * 4
        # Issued together: all four were sent before the first finished.
        assert len({w.time for w in writes}) == 1
        assert bytes(fake.luns[1].data[8 * 512 : 8 * 512 + len(data)]) == data
        assert session.bytes_written == len(data)


async def test_unit_attention_is_retried_with_the_range_still_locked(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=4096)})
    async with device(fake) as (_s, dev, nursery):
        fake.unit_attention = (0x29, 0x00)
        before = len(media(fake, (WRITE10, WRITE16)))
        data = b"\x5a" * 4096
        got: list[BaseException | None] = []
        done_first = trio.Event()

        def first_done(err: BaseException | None) -> None:
            got.append(err)
            done_first.set()

        dev.start_write(0, memoryview(data), first_done, nursery.start_soon)
        # The overlapping write cannot take the range while the retry holds it: it waits in
        # a task, and lands after the first, so the later data wins.
        assert dev._locks.try_acquire(0, 8) is None
        second = b"\xa5" * 4096
        assert await run(dev.start_write, 0, memoryview(second), nursery=nursery) is None
        await done_first.wait()
        assert got == [None]
        # The first write went out twice (UNIT ATTENTION, then its retry), then the second.
        assert len(media(fake, (WRITE10, WRITE16))) - before == 3
        assert bytes(fake.luns[1].data[:4096]) == second


async def test_errors_arrive_through_the_callback(autojump_clock: Any) -> None:
    fake = FakeTarget(luns={1: Disk(blocks=64)})
    async with device(fake) as (session, dev, nursery):
        buf = bytearray(512)
        err = await run(dev.start_read, 10_000, memoryview(buf), nursery=nursery)
        assert isinstance(err, scsi.IllegalRequest)  # LBA out of range, not retried
        await session.logout()
        err = await run(dev.start_read, 0, memoryview(buf), nursery=nursery)
        assert isinstance(err, SessionUnavailable)
        err = await run(dev.start_write, 0, memoryview(bytes(512)), nursery=nursery)
        assert isinstance(err, SessionUnavailable)
        assert dev._locks.try_acquire(0, 1) is not None  # the failed write let go of it
