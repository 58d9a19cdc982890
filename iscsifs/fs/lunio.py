# The LUN files' I/O: FUSE READ, WRITE, FSYNC and FALLOCATE on a LUN, and the errno each engine
# or SCSI failure becomes (the only place that translation happens, docs/design.md rule 11).
#
# The path is hot and has no task of its own: an aligned READ or WRITE becomes one SCSI command
# started from the request's dispatch, and the reply is written from the completion callback,
# in the iSCSI reader, the moment the status arrives. Data-In lands in the reply buffer, which
# goes to the kernel with writev; a large WRITE's payload buffer is taken from the channel
# instead of copied. Anything slower (partial blocks, fsync, retries) runs in a task.
# Must not know the tree's names or the control files.

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import scsi
from ..engine.lun import LunNotSupported
from ..engine.session import SessionError, SessionUnavailable
from ..fuse import kernel as K
from .files import FsError

log = logging.getLogger(__name__)

#: WRITE payloads at least this large keep the channel's buffer instead of being copied.
TAKE_PAYLOAD = 64 * 1024

Done = Callable[[BaseException | None], None]
Spawn = Callable[..., None]
#: spawn(unique, what, work): run work() in a task on behalf of request `unique`
TaskSpawn = Callable[[int, str, Callable[[], Awaitable[None]]], None]


class Device(Protocol):
    """What a LUN file needs of a block device (engine/lun.py's BlockDevice)."""

    size: int
    block: int
    info: Any  # .unmap: the LUN supports UNMAP
    def start_read(self, lba: int, view: memoryview, done: Done, spawn: Spawn) -> None: ...
    def start_write(self, lba: int, view: memoryview, done: Done, spawn: Spawn) -> None: ...
    async def read(self, offset: int, length: int) -> memoryview: ...
    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int: ...
    async def sync(self) -> None: ...
    async def unmap(self, offset: int, length: int) -> None: ...


class Replies(Protocol):
    """Where answers go (fuse/channel.py's Channel)."""

    def reply(self, unique: int, *parts: Any) -> None: ...
    def error(self, unique: int, code: int) -> None: ...
    def take_payload(self) -> bytearray: ...
    def give_payload(self, buf: bytearray) -> None: ...


def errno_for(e: BaseException) -> int:
    """The errno an application sees for an engine or SCSI failure."""
    if isinstance(e, FsError):
        return e.errno
    if isinstance(e, SessionUnavailable):
        return errno.EIO
    if isinstance(e, LunNotSupported):
        return errno.EOPNOTSUPP
    if isinstance(e, scsi.DataProtect):
        return errno.EROFS
    if isinstance(e, scsi.NotReady) and e.asc == 0x3A:
        return errno.ENOMEDIUM
    if isinstance(e, scsi.ReservationConflict):
        return errno.EBADE  # as Linux's block layer reports a reservation conflict
    if isinstance(e, scsi.IllegalRequest) and e.asc == 0x21:
        return errno.ENOSPC
    if isinstance(e, OverflowError):
        return errno.ENOSPC
    return errno.EIO


#: The failures of the I/O path that are the network's, the target's or the request's: an
#: errno and a log line, never a traceback.
EXPECTED = (scsi.ScsiError, SessionError, LunNotSupported, OSError, OverflowError, FsError)


class Throttle:
    """At most one log line per key per interval: an outage must not flood the log with one
    line per failed read."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            self._last[key] = now
            return True
        self.suppressed += 1
        return False


class BufferPool:
    """Reply buffers for LUN reads, reused: the reply is written synchronously, so a buffer is
    free again as soon as it has been handed to the kernel."""

    def __init__(self, keep: int = 32) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self.keep = keep

    def get(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def put(self, buf: bytearray) -> None:
        free = self._free.setdefault(len(buf), [])
        if len(free) < self.keep:
            free.append(buf)


class LunIO:
    """Answers the I/O requests of open LUN files."""

    def __init__(self, replies: Replies, spawn: TaskSpawn, start_soon: Spawn) -> None:
        self._replies = replies
        self._spawn = spawn  # runs slow work in a task; an unexpected failure becomes EIO
        self._start_soon = start_soon  # what the engine continues a command in
        self._pool = BufferPool()
        self._throttle = Throttle()

    def read(self, unique: int, dev: Device, name: str, off: int, size: int) -> None:
        replies = self._replies
        end = min(off + size, dev.size)
        if off >= end:
            replies.reply(unique)
            return
        bs = dev.block
        if off % bs or (end - off) % bs:
            async def partial() -> None:
                replies.reply(unique, await dev.read(off, end - off))

            self._run(unique, name, "read", off, end - off, partial)
            return
        pool = self._pool
        buf = pool.get(end - off)

        def done(err: BaseException | None) -> None:
            if err is None:
                replies.reply(unique, buf)
            else:
                self.failed(unique, name, "read", off, end - off, err)
            pool.put(buf)

        dev.start_read(off // bs, memoryview(buf), done, self._start_soon)

    def write(self, unique: int, dev: Device, name: str, off: int, size: int,
              data: memoryview) -> None:
        if off >= dev.size and size:
            raise FsError(errno.ENOSPC)
        n = min(size, dev.size - off)  # a write crossing the end is short; the next: ENOSPC
        bs = dev.block
        replies = self._replies
        if off % bs or n % bs:
            payload = bytes(data[:n])

            async def partial() -> None:
                await dev.write(off, payload)
                replies.reply(unique, K.write_out(n))

            self._run(unique, name, "write", off, n, partial)
            return
        owned: bytearray | None = None
        if n >= TAKE_PAYLOAD:
            owned = replies.take_payload()
            view = memoryview(owned)[:n]
        else:
            view = memoryview(bytes(data[:n]))

        def done(err: BaseException | None) -> None:
            if owned is not None:
                replies.give_payload(owned)
            if err is None:
                replies.reply(unique, K.write_out(n))
            else:
                self.failed(unique, name, "write", off, n, err)

        dev.start_write(off // bs, view, done, self._start_soon)

    def fsync(self, unique: int, dev: Device, name: str) -> None:
        async def sync() -> None:
            await dev.sync()
            self._replies.reply(unique)

        self._run(unique, name, "fsync", 0, 0, sync)

    def fallocate(self, unique: int, dev: Device, name: str, off: int, length: int,
                  mode: int) -> None:
        if mode == 0 and off + length <= dev.size:
            self._replies.reply(unique)  # the space of a LUN is always there
            return
        if mode != K.FALLOC_FL_PUNCH_HOLE | K.FALLOC_FL_KEEP_SIZE or not dev.info.unmap:
            raise FsError(errno.EOPNOTSUPP)

        async def punch_hole() -> None:
            await dev.unmap(off, length)
            self._replies.reply(unique)

        self._run(unique, name, "unmap", off, length, punch_hole)

    def _run(self, unique: int, name: str, op: str, off: int, size: int,
             work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await work()
            except EXPECTED as e:
                self.failed(unique, name, op, off, size, e)

        self._spawn(unique, op, run)

    def failed(self, unique: int, name: str, op: str, off: int, size: int,
               e: BaseException) -> None:
        code = errno_for(e)
        if self._throttle.allow(f"{name}:{type(e).__name__}"):
            log.error("%s: %s of %d bytes at %d failed: %s (%s)", name, op, size, off, e,
                      errno.errorcode.get(code, code))
        self._replies.error(unique, code)
