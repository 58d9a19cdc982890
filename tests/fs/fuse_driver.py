# Drives an fs.Tree the way the kernel does, without a mount: FUSE requests built with the
# structs of fuse/kernel.py go to Tree.dispatch, and a fake channel records the replies, the
# errors and the notifications. Also a fake block device for the LUN files. Test code only.

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from iscsifs.fs import Tree
from iscsifs.fuse import kernel as K
from iscsifs.fuse.channel import Request


class FakeChannel:
    """Records what the tree answers: replies[unique] is the body (bytes) or -errno."""

    def __init__(self) -> None:
        self.answers: dict[int, bytes | int] = {}
        self.notified: list[tuple[int, str]] = []
        self.max_write = 1 << 20
        self.payload = bytearray(1 << 20)
        self.taken = 0

    def reply(self, unique: int, *parts: Any) -> None:
        assert unique not in self.answers, f"request {unique} answered twice"
        self.answers[unique] = b"".join(bytes(p) for p in parts)

    def error(self, unique: int, code: int) -> None:
        assert unique not in self.answers, f"request {unique} answered twice"
        self.answers[unique] = -code

    def notify(self, parts: list[bytes]) -> None:
        body = parts[1]
        parent, namelen, _ = K.NOTIFY_INVAL_ENTRY_OUT.unpack_from(body)
        name = body[K.NOTIFY_INVAL_ENTRY_OUT.size : K.NOTIFY_INVAL_ENTRY_OUT.size + namelen]
        self.notified.append((parent, name.decode()))

    def take_payload(self) -> bytearray:
        self.taken += 1
        return self.payload

    def give_payload(self, buf: bytearray) -> None:
        pass


class FuseError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"{errno.errorcode.get(code, code)}")
        self.errno = code


@dataclass
class Entry:
    inode: int
    mode: int
    size: int


class Driver:
    """A client of the tree speaking FUSE requests; each call waits for its answer."""

    def __init__(self, tree: Tree, channel: FakeChannel) -> None:
        self.tree = tree
        self.channel = channel
        self._unique = 0

    async def call(self, opcode: int, nodeid: int, body: bytes,
                   data: bytes = b"") -> bytes:
        self._unique += 1
        unique = self._unique
        payload = memoryview(self.channel.payload)
        payload[: len(data)] = data
        self.tree.dispatch(Request(opcode, unique, nodeid, 0, 0, os.getpid(), body,
                                   payload[: len(data)]))
        while unique not in self.channel.answers:
            await trio.testing.wait_all_tasks_blocked()
            if unique not in self.channel.answers:
                await trio.sleep(0.001)
        answer = self.channel.answers.pop(unique)
        if isinstance(answer, int):
            raise FuseError(-answer)
        return answer

    # -- names -----------------------------------------------------------------------------

    async def lookup(self, path: str) -> Entry:
        inode = K.ROOT_ID
        out = b""
        for name in [p for p in path.split("/") if p]:
            out = await self.call(K.Opcode.LOOKUP, inode, name.encode() + b"\0")
            inode = K.ENTRY_OUT.unpack_from(out)[0]
        if not out:
            return await self.getattr(K.ROOT_ID)
        return _entry(out[K.ENTRY_OUT.size :])

    async def getattr(self, inode: int) -> Entry:
        out = await self.call(K.Opcode.GETATTR, inode, K.GETATTR_IN.pack(0, 0, 0))
        return _entry(out[K.ATTR_OUT.size :])

    async def listdir(self, path: str) -> list[str]:
        inode = (await self.lookup(path)).inode
        await self.call(K.Opcode.OPENDIR, inode, K.OPEN_IN.pack(os.O_RDONLY, 0))
        out = await self.call(K.Opcode.READDIR, inode,
                              K.READ_IN.pack(inode, 0, 65536, 0, 0, 0, 0))
        names = []
        while out:
            _ino, _off, namelen, _type = K.DIRENT.unpack_from(out)
            names.append(out[K.DIRENT.size : K.DIRENT.size + namelen].decode())
            rec = K.DIRENT.size + namelen
            out = out[rec + (-rec & 7):]
        return names

    # -- files -----------------------------------------------------------------------------

    async def open(self, path: str, flags: int = os.O_RDONLY) -> tuple[int, int]:
        """(fh, open flags)"""
        inode = (await self.lookup(path)).inode
        out = await self.call(K.Opcode.OPEN, inode, K.OPEN_IN.pack(flags, 0))
        fh, open_flags, _ = K.OPEN_OUT.unpack(out)
        return fh, open_flags

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.call(K.Opcode.READ, 0, K.READ_IN.pack(fh, off, size, 0, 0, 0, 0))

    async def write(self, fh: int, off: int, data: bytes) -> int:
        out = await self.call(K.Opcode.WRITE, 0,
                              K.WRITE_IN.pack(fh, off, len(data), 0, 0, 0, 0), data)
        return K.WRITE_OUT.unpack(out)[0]

    async def flush(self, fh: int) -> None:
        await self.call(K.Opcode.FLUSH, 0, K.FLUSH_IN.pack(fh, 0, 0, 0))

    async def release(self, fh: int) -> None:
        await self.call(K.Opcode.RELEASE, 0, K.RELEASE_IN.pack(fh, 0, 0, 0))

    async def fsync(self, fh: int) -> None:
        await self.call(K.Opcode.FSYNC, 0, K.FSYNC_IN.pack(fh, 0, 0))

    async def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        await self.call(K.Opcode.FALLOCATE, 0, K.FALLOCATE_IN.pack(fh, off, length, mode, 0))

    async def truncate(self, path: str, size: int) -> None:
        inode = (await self.lookup(path)).inode
        body = K.SETATTR_IN.pack(K.FATTR_SIZE, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        await self.call(K.Opcode.SETATTR, inode, body)

    async def chmod(self, path: str, mode: int) -> None:
        inode = (await self.lookup(path)).inode
        body = K.SETATTR_IN.pack(K.FATTR_MODE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, mode, 0, 0, 0)
        await self.call(K.Opcode.SETATTR, inode, body)

    async def command(self, path: str, line: str) -> str:
        """Write a line to a control file and read the reply on the same open file, as the
        CLI does; raise FuseError with the reply in .reply when the write fails."""
        fh, _ = await self.open(path, os.O_RDWR)
        try:
            try:
                await self.write(fh, 0, (line + "\n").encode())
            except FuseError as e:
                e.reply = (await self.read(fh, 0, 65536)).decode()  # type: ignore[attr-defined]
                raise
            return (await self.read(fh, 0, 65536)).decode()
        finally:
            await self.release(fh)

    async def cat(self, path: str) -> str:
        fh, _ = await self.open(path)
        try:
            return (await self.read(fh, 0, 1 << 20)).decode()
        finally:
            await self.release(fh)


def _entry(attr: bytes) -> Entry:
    fields = K.ATTR.unpack_from(attr)
    return Entry(inode=fields[0], size=fields[1], mode=fields[9])


@dataclass
class FakeInfo:
    unmap: bool = False


@dataclass
class FakeDevice:
    """A block device in memory, answering through the callback and awaitable APIs of
    engine/lun.py's BlockDevice. `fail` makes every operation raise it."""

    size: int = 1 << 20
    block: int = 512
    info: FakeInfo = field(default_factory=FakeInfo)
    fail: BaseException | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = bytearray(struct.pack(">I", 0x1234567) * (self.size // 4))

    def start_read(self, lba: int, view: memoryview, done: Any, spawn: Any) -> None:
        self.calls.append(("start_read", lba, len(view)))
        if self.fail is not None:
            done(self.fail)
            return
        off = lba * self.block
        view[:] = self.data[off : off + len(view)]
        done(None)

    def start_write(self, lba: int, view: memoryview, done: Any, spawn: Any) -> None:
        self.calls.append(("start_write", lba, len(view)))
        if self.fail is not None:
            done(self.fail)
            return
        off = lba * self.block
        self.data[off : off + len(view)] = view
        done(None)

    async def read(self, offset: int, length: int) -> memoryview:
        self.calls.append(("read", offset, length))
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        return memoryview(bytes(self.data[offset : offset + length]))

    async def write(self, offset: int, data: Any) -> int:
        self.calls.append(("write", offset, len(data)))
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        self.data[offset : offset + len(data)] = data
        return len(data)

    async def sync(self) -> None:
        self.calls.append(("sync",))
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail

    async def unmap(self, offset: int, length: int) -> None:
        self.calls.append(("unmap", offset, length))
        await trio.lowlevel.checkpoint()
        self.data[offset : offset + length] = bytes(length)
