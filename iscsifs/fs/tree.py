# The FUSE filesystem: each request of the kernel (fuse/channel.py) answered from the namespace
# (fs/namespace.py), the text files' protocol (fs/control.py) or the LUN I/O path
# (fs/lunio.py). The edge where failures become errno replies (docs/design.md rule 11).
# Owns open files (handles), attributes and the INIT negotiation. Must not know what a file
# says or what a command does: the table's functions (the daemon's) do.

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import trio

from ..fuse import kernel as K
from ..fuse.channel import Request
from .control import TextHandle
from .files import File, FsError, Kind
from .lunio import Device, LunIO, Replies
from .namespace import Namespace, Node

log = logging.getLogger(__name__)


class Channel(Replies, Protocol):
    """What the tree needs of the FUSE device (fuse/channel.py's Channel)."""

    max_write: int

    def notify(self, parts: list[bytes]) -> None: ...


class LunHandle:
    """One open LUN file: the device it was opened on (a rescan may replace the node's)."""

    __slots__ = ("device", "name", "node")

    def __init__(self, node: Node, device: Device) -> None:
        self.node = node
        self.device = device
        self.name = "/".join(node.path)  # for log lines


Handle = TextHandle | LunHandle


class Tree:
    """The iscsifs filesystem, answering the kernel's FUSE requests on `channel`; slow work
    runs in `nursery`."""

    def __init__(self, channel: Channel, nursery: trio.Nursery, *, uid: int | None = None,
                 gid: int | None = None, max_write: int = 1 << 20, max_read: int = 0,
                 max_background: int = 64) -> None:
        self.channel = channel
        self.nursery = nursery
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.max_write = max_write
        self.max_read = max_read
        self.max_background = max_background
        self.closing = False  # at shutdown: no more notifications
        self.destroyed = trio.Event()
        self.names = Namespace(notify=self._notify)
        self.lunio = LunIO(channel, self._spawn, nursery.start_soon)
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._time_ns = int(time.time() * 1e9)
        self._ops: dict[int, Callable[[Request], None]] = {
            K.Opcode.INIT: self._init,
            K.Opcode.LOOKUP: self._lookup,
            K.Opcode.FORGET: self._no_reply,
            K.Opcode.BATCH_FORGET: self._no_reply,
            K.Opcode.GETATTR: self._getattr,
            K.Opcode.SETATTR: self._setattr,
            K.Opcode.OPEN: self._open,
            K.Opcode.READ: self._read,
            K.Opcode.WRITE: self._write,
            K.Opcode.FLUSH: self._flush,
            K.Opcode.RELEASE: self._release,
            K.Opcode.FSYNC: self._fsync,
            K.Opcode.OPENDIR: self._opendir,
            K.Opcode.READDIR: self._readdir,
            K.Opcode.RELEASEDIR: self._ok,
            K.Opcode.FSYNCDIR: self._ok,
            K.Opcode.STATFS: self._statfs,
            K.Opcode.ACCESS: self._ok,
            K.Opcode.FALLOCATE: self._fallocate,
            K.Opcode.INTERRUPT: self._no_reply,
            K.Opcode.DESTROY: self._destroy,
        }

    # -- what the daemon calls -------------------------------------------------------------

    def register(self, files: Iterable[File]) -> None:
        """Take the table of files (the daemon's)."""
        self.names.register(files)

    def add(self, pattern: str, obj: Any = None, **values: object) -> None:
        """A directory of the table, or a file added on its own, appears (see Namespace.add)."""
        self.names.add(pattern, obj, **values)

    def remove(self, pattern: str, **values: object) -> None:
        self.names.remove(pattern, **values)

    def _notify(self, parent: int, name: str) -> None:
        """Tell the kernel an entry changed. Queued: the channel's notifier thread writes it."""
        if not self.closing:
            self.channel.notify(K.notify_inval_entry(parent, os.fsencode(name)))

    # -- serving ---------------------------------------------------------------------------

    def dispatch(self, req: Request) -> None:
        """Answer one request: now, or later from a callback or a task."""
        op = self._ops.get(req.opcode)
        try:
            if op is None:
                raise FsError(errno.ENOSYS)
            op(req)
        except FsError as e:
            self.channel.error(req.unique, e.errno)

    def _spawn(self, unique: int, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run slow work in a task; a failure it did not answer itself becomes an errno."""
        channel = self.channel

        async def run() -> None:
            try:
                await work()
            except FsError as e:
                channel.error(unique, e.errno)
            except Exception:
                log.exception("%s failed", what)
                channel.error(unique, errno.EIO)

        self.nursery.start_soon(run)

    def _ok(self, req: Request) -> None:
        self.channel.reply(req.unique)

    def _no_reply(self, req: Request) -> None:
        return None  # nodes live as long as the tree; an interrupted request still completes

    def _destroy(self, req: Request) -> None:
        self.channel.reply(req.unique)
        self.destroyed.set()

    def _init(self, req: Request) -> None:
        want = (K.InitFlag.ASYNC_READ | K.InitFlag.ATOMIC_O_TRUNC | K.InitFlag.BIG_WRITES
                | K.InitFlag.ASYNC_DIO | K.InitFlag.PARALLEL_DIROPS | K.InitFlag.MAX_PAGES)
        result = K.negotiate_init(req.body, max_write=self.max_write, max_read=self.max_read,
                                  max_background=self.max_background, want=want)
        self.channel.max_write = result.max_write
        log.info("FUSE 7.%d: max_read %d, max_write %d, max_background %d", result.minor,
                 self.max_read, result.max_write, self.max_background)
        self.channel.reply(req.unique, result.reply)

    # -- names and attributes --------------------------------------------------------------

    def _attr(self, node: Node) -> K.Attr:
        size = 0
        blksize = 4096
        if node.kind is Kind.LUN:
            dev: Device = node.obj
            size, blksize = dev.size, dev.block
        fmt = stat.S_IFDIR if node.is_dir else stat.S_IFREG
        return K.Attr(ino=node.inode, mode=fmt | node.mode, size=size,
                      nlink=2 if node.is_dir else 1, uid=self.uid, gid=self.gid,
                      blksize=blksize, time_ns=self._time_ns)

    @staticmethod
    def _attr_timeout(node: Node) -> float:
        # Everything here can change behind the kernel's back (sessions come and go): no
        # caching of names, short caching of LUN sizes.
        return 1.0 if node.kind is Kind.LUN else 0.0

    def _lookup(self, req: Request) -> None:
        parent = self.names.get(req.nodeid)
        node = self.names.lookup(parent, os.fsdecode(K.cstring(req.body)))
        self.channel.reply(req.unique, K.entry_out(self._attr(node),
                                                   attr_timeout=self._attr_timeout(node)))

    def _getattr(self, req: Request) -> None:
        node = self.names.get(req.nodeid)
        self.channel.reply(req.unique, K.attr_out(self._attr(node),
                                                  attr_timeout=self._attr_timeout(node)))

    def _setattr(self, req: Request) -> None:
        node = self.names.get(req.nodeid)
        valid, _pad, _fh, size = K.SETATTR_IN.unpack_from(req.body)[:4]
        if valid & K.FATTR_SIZE:
            # Truncating a block device is meaningless; shells do it for `>` redirections of
            # control files, which is harmless, and `truncate` on a LUN file must not lie.
            if node.kind is Kind.LUN and size != node.obj.size:
                raise FsError(errno.EINVAL)
        elif valid & (K.FATTR_MODE | K.FATTR_UID | K.FATTR_GID):
            raise FsError(errno.EPERM)
        self.channel.reply(req.unique, K.attr_out(self._attr(node)))

    def _opendir(self, req: Request) -> None:
        node = self.names.get(req.nodeid)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        self.channel.reply(req.unique, K.open_out(node.inode, 0))

    def _readdir(self, req: Request) -> None:
        fh, off, size = K.READ_IN.unpack_from(req.body)[:3]
        node = self.names.get(fh)
        entries = [(c.inode, os.fsencode(name), (stat.S_IFDIR if c.is_dir else stat.S_IFREG))
                   for name, c in self.names.entries(node)]
        self.channel.reply(req.unique, K.dirents(entries, off, size))

    def _statfs(self, req: Request) -> None:
        total = sum(n.obj.size for n in self.names.nodes(Kind.LUN))
        self.channel.reply(req.unique, K.statfs_out(blocks=total // 512, bsize=512,
                                                    files=len(self.names)))

    # -- open files ------------------------------------------------------------------------

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    def _open(self, req: Request) -> None:
        node = self.names.get(req.nodeid)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        flags = K.OPEN_IN.unpack_from(req.body)[0]
        accmode = flags & os.O_ACCMODE
        want_write = accmode in (os.O_WRONLY, os.O_RDWR)
        want_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if (want_write and not node.mode & 0o200) or (want_read and not node.mode & 0o400):
            raise FsError(errno.EACCES)
        # Direct I/O: LUN I/O reaches the target at the size the application asked for, and
        # text files can report size 0 yet be read whole (their length is known on read).
        open_flags = K.FOPEN_DIRECT_IO
        handle: Handle
        if node.kind is Kind.LUN:
            handle = LunHandle(node, node.obj)
            # Writes to different blocks may run together; the device orders overlapping ones.
            open_flags |= K.FOPEN_PARALLEL_DIRECT_WRITES
        else:
            handle = TextHandle(node, snapshot=want_read and not want_write)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        self.channel.reply(req.unique, K.open_out(fh, open_flags))

    def _read(self, req: Request) -> None:
        fh, off, size = K.READ_IN.unpack_from(req.body)[:3]
        handle = self._handle(fh)
        if isinstance(handle, LunHandle):
            self.lunio.read(req.unique, handle.device, handle.name, off, size)
        else:
            self.channel.reply(req.unique, handle.read(off, size))

    def _write(self, req: Request) -> None:
        fh, off, size = K.WRITE_IN.unpack_from(req.body)[:3]
        handle = self._handle(fh)
        if isinstance(handle, LunHandle):
            self.lunio.write(req.unique, handle.device, handle.name, off, size, req.data)
            return
        unique = req.unique
        data = bytes(req.data[:size])

        async def command() -> None:
            await handle.write(off, data)
            self.channel.reply(unique, K.write_out(len(data)))

        self._spawn(unique, "command", command)

    def _flush(self, req: Request) -> None:
        fh = K.FLUSH_IN.unpack_from(req.body)[0]
        handle = self._handles.get(fh)
        if not isinstance(handle, TextHandle) or not handle.has_pending:
            self.channel.reply(req.unique)
            return
        unique = req.unique

        async def run_pending() -> None:
            await handle.flush()
            self.channel.reply(unique)

        self._spawn(unique, "command", run_pending)

    def _release(self, req: Request) -> None:
        fh = K.RELEASE_IN.unpack_from(req.body)[0]
        self._handles.pop(fh, None)
        self.channel.reply(req.unique)

    def _fsync(self, req: Request) -> None:
        fh = K.FSYNC_IN.unpack_from(req.body)[0]
        handle = self._handle(fh)
        if isinstance(handle, LunHandle):
            self.lunio.fsync(req.unique, handle.device, handle.name)
        else:
            self.channel.reply(req.unique)

    def _fallocate(self, req: Request) -> None:
        fh, off, length, mode = K.FALLOCATE_IN.unpack_from(req.body)[:4]
        handle = self._handle(fh)
        if not isinstance(handle, LunHandle):
            raise FsError(errno.EOPNOTSUPP)
        self.lunio.fallocate(req.unique, handle.device, handle.name, off, length, mode)
