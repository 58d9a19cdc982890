# The FUSE tree: the requests of the kernel (fuse/channel.py) answered from the daemon's
# state. Every LUN is a file; control files take commands, text files show state. This module
# owns the file mechanics only (inodes, handles, sizes, modes, reading and writing) and the
# translation of errors to errno: it is the edge where exceptions become errno replies (house
# rule 11). What a command does and what a status says belong to the daemon, behind Backend.
#
# The LUN path is hot and has no task of its own: an aligned READ or WRITE becomes one SCSI
# command started from dispatch(), and the reply is written from the completion callback, in
# the iSCSI reader, the moment the status arrives. Data-In lands in the reply buffer, which goes
# to the kernel with writev; a large WRITE's payload buffer is taken from the channel instead
# of copied. Anything slower (control commands, fsync, partial blocks, retries) runs in a task.

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from . import scsi
from .engine.lun import BlockDevice, LunNotSupported
from .engine.session import SessionError, SessionUnavailable
from .fuse import kernel as K
from .fuse.channel import Channel, Request

log = logging.getLogger(__name__)

ROOT = K.ROOT_ID


class CommandError(Exception):
    """A command written to a control file failed: the message is for the person, the errno
    for the write() that carried it."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = code


# ---------------------------------------------------------------------------------------------
# What the daemon provides.
# ---------------------------------------------------------------------------------------------


class PortalView(Protocol):
    """One added target portal, as the tree shows it."""

    iqn: str
    dirname: str  # "127.0.0.1:3260" or "[::1]:3260"

    def status_text(self) -> str: ...
    def params_text(self) -> str: ...
    def luns_text(self) -> str: ...
    def setup_text(self) -> str: ...
    def hold_time_text(self) -> str: ...
    async def set_hold_time(self, text: str) -> str: ...
    async def control(self, line: str) -> str: ...
    def devices(self) -> dict[int, BlockDevice]: ...


class Backend(Protocol):
    """The daemon, seen from the tree. Text methods return whole file contents; command methods
    return a reply (shown to a reader of the same open file) or raise CommandError."""

    def portals(self) -> Sequence[PortalView]: ...
    def text(self, name: str) -> str: ...  # "initiator/name", "discovery/targets", "log", ...
    async def command(self, name: str, line: str) -> str: ...  # "discovery/control", ...


@dataclass(frozen=True)
class StaticFile:
    """A file at a fixed path: readable (text(path)), writable (command(path, line)), or both."""

    path: str
    readable: bool
    writable: bool


#: The fixed part of the tree. Directories are implied by paths.
STATIC_FILES: tuple[StaticFile, ...] = (
    StaticFile("version", True, False),
    StaticFile("log", True, False),
    StaticFile("initiator/name", True, True),
    StaticFile("initiator/boot_delay", True, True),
    StaticFile("initiator/isns", True, True),
    StaticFile("discovery/control", True, True),
    StaticFile("discovery/targets", True, False),
    StaticFile("targets/control", True, True),
    StaticFile("targets/setup", True, False),
    StaticFile("targets/status", True, False),
)

PORTAL_FILES = ("control", "status", "params", "luns", "setup", "hold_time")


# ---------------------------------------------------------------------------------------------
# Nodes and handles.
# ---------------------------------------------------------------------------------------------


class FsError(Exception):
    """A request fails with this errno."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


@dataclass
class Node:
    inode: int
    path: tuple[str, ...]
    kind: str  # "dir" | "static" | "portal" | "lun"
    mode: int
    static: StaticFile | None = None
    portal: PortalView | None = None
    lun: int = -1

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


@dataclass
class Handle:
    node: Node
    content: bytes = b""  # snapshot of a text file, or the reply to the last command
    device: BlockDevice | None = None
    wrote: bool = False
    pending: bytearray | None = None  # a command line not yet terminated by a newline
    reply_at: int = 0  # file offset where the last command's write ended
    shift: int | None = None  # decided by the first read after a command (see _read_text)
    busy: trio.Lock | None = None  # commands on one open control file run in order


def _lines(data: bytes) -> list[str]:
    return [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]


def _errno_for(e: BaseException) -> int:
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


class _Throttle:
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


class _BufferPool:
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


#: WRITE payloads at least this large keep the channel's buffer instead of being copied.
TAKE_PAYLOAD = 64 * 1024


class Tree:
    """The iscsifs tree, answering the kernel's FUSE requests."""

    def __init__(self, backend: Backend, *, uid: int | None = None, gid: int | None = None,
                 max_write: int = 1 << 20, max_read: int = 0, max_background: int = 64) -> None:
        self.backend = backend
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.max_write = max_write
        self.max_read = max_read
        self.max_background = max_background
        self.channel: Channel | None = None
        self.nursery: trio.Nursery | None = None
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[tuple[str, ...], int] = {}
        self._next_inode = ROOT + 1
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._pool = _BufferPool()
        self._throttle = _Throttle()
        self.closing = False  # at shutdown: no more invalidations
        self.destroyed = trio.Event()
        self._started = time.time()
        self._node((), "dir", 0o755)
        self._ops: dict[int, Callable[[Request], None]] = {
            K.Opcode.INIT: self._init,
            K.Opcode.LOOKUP: self._lookup,
            K.Opcode.FORGET: self._forget,
            K.Opcode.BATCH_FORGET: self._forget,
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
            K.Opcode.RELEASEDIR: self._releasedir,
            K.Opcode.FSYNCDIR: self._ok,
            K.Opcode.STATFS: self._statfs,
            K.Opcode.ACCESS: self._ok,
            K.Opcode.FALLOCATE: self._fallocate,
            K.Opcode.INTERRUPT: self._forget,
            K.Opcode.DESTROY: self._destroy,
        }

    # -- serving ---------------------------------------------------------------------------

    def dispatch(self, req: Request) -> None:
        """Answer one request: now, or later from a callback or a task."""
        op = self._ops.get(req.opcode)
        try:
            if op is None:
                raise FsError(errno.ENOSYS)
            op(req)
        except FsError as e:
            self._error(req.unique, e.errno)

    def _reply(self, unique: int, *parts: Any) -> None:
        assert self.channel is not None
        self.channel.reply(unique, *parts)

    def _error(self, unique: int, code: int) -> None:
        assert self.channel is not None
        self.channel.error(unique, code)

    def _spawn(self, unique: int, work: Callable[[], Awaitable[None]], what: str) -> None:
        """Run slow work in a task; any failure becomes an errno reply (and a log line)."""
        assert self.nursery is not None

        async def run() -> None:
            try:
                await work()
            except FsError as e:
                self._error(unique, e.errno)
            except (scsi.ScsiError, SessionError, LunNotSupported, OSError) as e:
                self._error(unique, _errno_for(e))
            except Exception:
                log.exception("%s failed", what)
                self._error(unique, errno.EIO)

        self.nursery.start_soon(run)

    # -- the shape of the tree -------------------------------------------------------------

    def _node(self, path: tuple[str, ...], kind: str, mode: int, **kw: Any) -> Node:
        inode = ROOT if not path else self._by_path.get(path)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self._by_path[path] = inode
        node = self._nodes.get(inode)
        if node is None or node.kind != kind:
            node = Node(inode=inode, path=path, kind=kind, mode=mode, **kw)
            self._nodes[inode] = node
        else:
            node.mode = mode
            for k, v in kw.items():
                setattr(node, k, v)
        return node

    def _children(self, path: tuple[str, ...]) -> dict[str, Node]:
        """The current entries of a directory, built from the backend's state each time."""
        out: dict[str, Node] = {}
        depth = len(path)
        for f in STATIC_FILES:
            parts = tuple(f.path.split("/"))
            if parts[:depth] != path or len(parts) <= depth:
                continue
            name = parts[depth]
            if len(parts) == depth + 1:
                mode = (0o400 if f.readable else 0) | (0o200 if f.writable else 0)
                out[name] = self._node(parts, "static", mode, static=f)
            else:
                out[name] = self._node((*path, name), "dir", 0o755)
        if path == ("targets",):
            for p in self.backend.portals():
                out.setdefault(p.iqn, self._node((*path, p.iqn), "dir", 0o755))
        elif depth == 2 and path[0] == "targets":
            for p in self.backend.portals():
                if p.iqn == path[1]:
                    out[p.dirname] = self._node((*path, p.dirname), "dir", 0o755)
        elif depth == 3 and path[0] == "targets":
            portal = self._portal(path[1], path[2])
            if portal is not None:
                for name in PORTAL_FILES:
                    mode = {"control": 0o600, "hold_time": 0o600}.get(name, 0o400)
                    out[name] = self._node((*path, name), "portal", mode, portal=portal)
                for number in sorted(portal.devices()):
                    name = f"lun{number}"
                    out[name] = self._node((*path, name), "lun", 0o600, portal=portal,
                                           lun=number)
        return out

    def _portal(self, iqn: str, dirname: str) -> PortalView | None:
        for p in self.backend.portals():
            if p.iqn == iqn and p.dirname == dirname:
                return p
        return None

    def _live(self, inode: int) -> Node:
        """The node of an inode, if it still exists in the tree."""
        node = self._nodes.get(inode)
        if node is None:
            raise FsError(errno.ENOENT)
        if node.path:
            parent = node.path[:-1]
            if node.path[-1] not in self._children(parent):
                raise FsError(errno.ENOENT)
        return node

    def _device(self, node: Node) -> BlockDevice | None:
        if node.kind != "lun" or node.portal is None:
            return None
        return node.portal.devices().get(node.lun)

    def _attr(self, node: Node) -> K.Attr:
        size = 0
        blksize = 4096
        if node.kind == "lun":
            dev = self._device(node)
            if dev is not None:
                size, blksize = dev.size, dev.block
        fmt = stat.S_IFDIR if node.is_dir else stat.S_IFREG
        return K.Attr(ino=node.inode, mode=fmt | node.mode, size=size,
                      nlink=2 if node.is_dir else 1, uid=self.uid, gid=self.gid,
                      blksize=blksize, time_ns=int(self._started * 1e9))

    def _attr_timeout(self, node: Node) -> float:
        # Everything here can change behind the kernel's back (sessions come and go): no
        # caching of names, short caching of LUN sizes.
        return 1.0 if node.kind == "lun" else 0.0

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    # -- metadata --------------------------------------------------------------------------

    def _init(self, req: Request) -> None:
        assert self.channel is not None
        want = (K.InitFlag.ASYNC_READ | K.InitFlag.ATOMIC_O_TRUNC | K.InitFlag.BIG_WRITES
                | K.InitFlag.ASYNC_DIO | K.InitFlag.PARALLEL_DIROPS | K.InitFlag.MAX_PAGES)
        result = K.negotiate_init(req.body, max_write=self.max_write, max_read=self.max_read,
                                  max_background=self.max_background, want=want)
        self.channel.max_write = result.max_write
        log.info("FUSE 7.%d: max_read %d, max_write %d, max_background %d", result.minor,
                 self.max_read, result.max_write, self.max_background)
        self._reply(req.unique, result.reply)

    def _ok(self, req: Request) -> None:
        self._reply(req.unique)

    def _forget(self, req: Request) -> None:
        return None  # nodes live as long as the tree; nothing to forget, nothing to answer

    def _destroy(self, req: Request) -> None:
        self._reply(req.unique)
        self.destroyed.set()

    def _lookup(self, req: Request) -> None:
        parent = self._live(req.nodeid)
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        node = self._children(parent.path).get(os.fsdecode(K.cstring(req.body)))
        if node is None:
            raise FsError(errno.ENOENT)
        self._reply(req.unique, K.entry_out(self._attr(node),
                                            attr_timeout=self._attr_timeout(node)))

    def _getattr(self, req: Request) -> None:
        node = self._live(req.nodeid)
        self._reply(req.unique, K.attr_out(self._attr(node),
                                           attr_timeout=self._attr_timeout(node)))

    def _setattr(self, req: Request) -> None:
        node = self._live(req.nodeid)
        valid, _pad, _fh, size = K.SETATTR_IN.unpack_from(req.body)[:4]
        if valid & K.FATTR_SIZE:
            # Truncating a block device is meaningless; shells do it for `>` redirections of
            # control files, which is harmless, and `truncate` on a LUN file must not lie.
            if node.kind == "lun":
                dev = self._device(node)
                if dev is None or size != dev.size:
                    raise FsError(errno.EINVAL)
        elif valid & (K.FATTR_MODE | K.FATTR_UID | K.FATTR_GID):
            raise FsError(errno.EPERM)
        self._reply(req.unique, K.attr_out(self._attr(node)))

    def _opendir(self, req: Request) -> None:
        node = self._live(req.nodeid)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        self._reply(req.unique, K.open_out(node.inode, 0))

    def _readdir(self, req: Request) -> None:
        fh, off, size = K.READ_IN.unpack_from(req.body)[:3]
        node = self._live(fh)
        entries = [(c.inode, os.fsencode(name), self._attr(c).mode)
                   for name, c in sorted(self._children(node.path).items())]
        self._reply(req.unique, K.dirents(entries, off, size))

    def _releasedir(self, req: Request) -> None:
        self._reply(req.unique)

    def _statfs(self, req: Request) -> None:
        total = sum(d.size for p in self.backend.portals() for d in p.devices().values())
        self._reply(req.unique, K.statfs_out(blocks=total // 512, bsize=512,
                                             files=len(self._nodes)))

    # -- files -----------------------------------------------------------------------------

    def _open(self, req: Request) -> None:
        node = self._live(req.nodeid)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        flags = K.OPEN_IN.unpack_from(req.body)[0]
        accmode = flags & os.O_ACCMODE
        want_write = accmode in (os.O_WRONLY, os.O_RDWR)
        want_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if (want_write and not node.mode & 0o200) or (want_read and not node.mode & 0o400):
            raise FsError(errno.EACCES)
        handle = Handle(node=node)
        open_flags = K.FOPEN_DIRECT_IO
        if node.kind == "lun":
            handle.device = self._device(node)
            if handle.device is None:
                raise FsError(errno.ENOENT)
            # Writes to different blocks may run together; BlockDevice orders overlapping ones.
            open_flags |= K.FOPEN_PARALLEL_DIRECT_WRITES
        else:
            if want_read and not want_write:
                handle.content = self._render(node).encode()
            handle.busy = trio.Lock()
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        # Direct I/O: LUN I/O reaches the target at the size the application asked for, and
        # text files can report size 0 yet be read whole (their length is known on read).
        self._reply(req.unique, K.open_out(fh, open_flags))

    def _render(self, node: Node) -> str:
        try:
            if node.kind == "static" and node.static is not None:
                return self.backend.text(node.static.path)
            if node.kind == "portal" and node.portal is not None:
                name = node.path[-1]
                p = node.portal
                return {
                    "status": p.status_text,
                    "params": p.params_text,
                    "luns": p.luns_text,
                    "setup": p.setup_text,
                    "hold_time": p.hold_time_text,
                    "control": lambda: "",
                }[name]()
        except Exception:
            log.exception("rendering %s", "/".join(node.path))
            raise FsError(errno.EIO) from None
        return ""

    def _read(self, req: Request) -> None:
        fh, off, size = K.READ_IN.unpack_from(req.body)[:3]
        handle = self._handle(fh)
        dev = handle.device
        if dev is None:
            self._reply(req.unique, self._read_text(handle, off, size))
            return
        unique = req.unique
        end = min(off + size, dev.size)
        if off >= end:
            self._reply(unique)
            return
        bs = dev.block
        if off % bs or (end - off) % bs:
            async def partial() -> None:
                data = await dev.read(off, end - off)
                self._reply(unique, data)

            self._spawn(unique, partial, "read")
            return
        buf = self._pool.get(end - off)

        def done(err: BaseException | None) -> None:
            if err is None:
                self._reply(unique, buf)
            else:
                self._io_error(unique, handle, "read", off, end - off, err)
            self._pool.put(buf)

        dev.start_read(off // bs, memoryview(buf), done, self._start_soon)

    def _start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    def _read_text(self, handle: Handle, off: int, size: int) -> bytes:
        if not handle.content and not handle.wrote:
            handle.content = self._render(handle.node).encode()
        # After a command, a program that preads from 0 reads the reply as a file; a shell
        # reading on the same descriptor (exec 3<>control; echo >&3; cat <&3) reads from
        # where its write left the offset. The first read after the command tells which.
        if handle.wrote:
            if handle.shift is None:
                handle.shift = handle.reply_at if off == handle.reply_at else 0
            off -= handle.shift
            if off < 0:
                return b""
        return handle.content[off : off + size]

    def _write(self, req: Request) -> None:
        fh, off, size = K.WRITE_IN.unpack_from(req.body)[:3]
        handle = self._handle(fh)
        unique = req.unique
        handle.reply_at = off + size
        handle.shift = None
        dev = handle.device
        if dev is None:
            data = bytes(req.data[:size])
            self._spawn(unique, lambda: self._command(unique, handle, data), "command")
            return
        if off >= dev.size and size:
            raise FsError(errno.ENOSPC)
        n = min(size, dev.size - off)  # a write crossing the end is short; the next: ENOSPC
        bs = dev.block
        if off % bs or n % bs:
            data = bytes(req.data[:n])

            async def partial() -> None:
                await dev.write(off, data)
                self._reply(unique, K.write_out(n))

            self._spawn(unique, partial, "write")
            return
        assert self.channel is not None
        channel = self.channel
        owned: bytearray | None = None
        if n >= TAKE_PAYLOAD:
            owned = channel.take_payload()
            view = memoryview(owned)[:n]
        else:
            view = memoryview(bytes(req.data[:n]))

        def done(err: BaseException | None) -> None:
            if owned is not None:
                channel.give_payload(owned)
            if err is None:
                self._reply(unique, K.write_out(n))
            else:
                self._io_error(unique, handle, "write", off, n, err)

        dev.start_write(off // bs, view, done, self._start_soon)

    async def _command(self, unique: int, handle: Handle, data: bytes) -> None:
        """Run each complete line written to a control file. The reply (or the error message)
        is what a read of the same open file returns; a failure also fails the write. A last
        line without a newline (printf) runs when the file is closed."""
        assert handle.busy is not None
        async with handle.busy:
            pending = (handle.pending or bytearray()) + data
            if len(pending) > 65536:
                raise FsError(errno.E2BIG)
            if b"\n" in pending:
                complete, _, rest = bytes(pending).rpartition(b"\n")
                handle.pending = bytearray(rest) if rest else None
                await self._run_lines(handle, _lines(complete))
            else:
                handle.pending = pending
        self._reply(unique, K.write_out(len(data)))

    async def _run_lines(self, handle: Handle, lines: Iterable[str]) -> None:
        node = handle.node
        replies: list[str] = []
        handle.wrote = True
        for line in lines:
            try:
                if node.kind == "static" and node.static is not None:
                    replies.append(await self.backend.command(node.static.path, line))
                elif node.kind == "portal" and node.portal is not None:
                    if node.path[-1] == "hold_time":
                        replies.append(await node.portal.set_hold_time(line))
                    else:
                        replies.append(await node.portal.control(line))
                else:
                    raise CommandError("this file takes no commands", errno.EBADF)
            except CommandError as e:
                log.warning("%s: %s: %s", "/".join(node.path), line.split(" ", 1)[0], e)
                handle.content = ("ERROR. " + str(e) + "\n").encode()
                raise FsError(e.errno) from None
            except FsError:
                raise
            except Exception:
                log.exception("%s: command failed", "/".join(node.path))
                handle.content = b"ERROR. internal error; see the log\n"
                raise FsError(errno.EIO) from None
        handle.content = "".join(r if r.endswith("\n") or not r else r + "\n"
                                 for r in replies).encode()

    def _io_error(self, unique: int, handle: Handle, op: str, off: int, size: int,
                  e: BaseException) -> None:
        code = _errno_for(e)
        name = "/".join(handle.node.path)
        if self._throttle.allow(f"{name}:{type(e).__name__}"):
            log.error("%s: %s of %d bytes at %d failed: %s (%s)", name, op, size, off, e,
                      errno.errorcode.get(code, code))
        self._error(unique, code)

    def _flush(self, req: Request) -> None:
        fh = K.FLUSH_IN.unpack_from(req.body)[0]
        handle = self._handles.get(fh)
        if handle is None or not handle.pending:
            self._reply(req.unique)
            return
        unique = req.unique

        async def run_pending() -> None:
            assert handle.busy is not None
            async with handle.busy:
                line = bytes(handle.pending or b"")
                handle.pending = None
                await self._run_lines(handle, _lines(line))
            self._reply(unique)

        self._spawn(unique, run_pending, "command")

    def _release(self, req: Request) -> None:
        fh = K.RELEASE_IN.unpack_from(req.body)[0]
        self._handles.pop(fh, None)
        self._reply(req.unique)

    def _fsync(self, req: Request) -> None:
        fh = K.FSYNC_IN.unpack_from(req.body)[0]
        handle = self._handle(fh)
        dev = handle.device
        if dev is None:
            self._reply(req.unique)
            return
        unique = req.unique

        async def sync() -> None:
            try:
                await dev.sync()
            except (scsi.ScsiError, SessionError) as e:
                self._io_error(unique, handle, "fsync", 0, 0, e)
                return
            self._reply(unique)

        self._spawn(unique, sync, "fsync")

    def _fallocate(self, req: Request) -> None:
        fh, off, length, mode = K.FALLOCATE_IN.unpack_from(req.body)[:4]
        handle = self._handle(fh)
        dev = handle.device
        punch = K.FALLOC_FL_PUNCH_HOLE | K.FALLOC_FL_KEEP_SIZE
        if dev is None:
            raise FsError(errno.EOPNOTSUPP)
        if mode == 0 and off + length <= dev.size:
            self._reply(req.unique)  # the space of a LUN is always there
            return
        if mode != punch:
            raise FsError(errno.EOPNOTSUPP)
        if not dev.info.unmap:
            raise FsError(errno.EOPNOTSUPP)
        unique = req.unique

        async def punch_hole() -> None:
            await dev.unmap(off, length)
            self._reply(unique)

        self._spawn(unique, punch_hole, "unmap")

    # -- notifications ---------------------------------------------------------------------

    def invalidate(self, path: Sequence[str]) -> None:
        """Tell the kernel a directory entry changed (a LUN came or went)."""
        path = tuple(path)
        if self.closing or self.channel is None:
            return
        parent = self._by_path.get(path[:-1]) if len(path) > 1 else ROOT
        if parent is None:
            return
        # Queued: the channel's notifier thread writes it and logs a failure.
        self.channel.notify(K.notify_inval_entry(parent, os.fsencode(path[-1])))
