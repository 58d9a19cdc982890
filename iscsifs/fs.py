# The FUSE tree: pyfuse3 Operations over the daemon's state. Every LUN is a file; control files
# take commands, text files show state. This module owns the file mechanics only (inodes,
# handles, sizes, modes, reading and writing) and the translation of errors to errno: it is the
# edge where exceptions become pyfuse3.FUSEError (house rule 11). What a command does and what
# a status says belong to the daemon, behind the Backend interface below.
#
# The LUN read path is hot: an aligned read goes straight to BlockDevice.read_blocks into a
# buffer owned by the pyfuse3 worker task that serves the request. pyfuse3 copies the reply to
# the kernel synchronously after the handler returns and a worker serves one request at a time,
# so the worker's next request may reuse that buffer: no allocation and no copy per read.

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyfuse3
import trio

from . import scsi
from .engine.lun import BlockDevice, LunNotSupported
from .engine.session import SessionError, SessionUnavailable

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE


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
    shift: int | None = None  # decided by the first read after a command (see read())


def _lines(data: bytes) -> list[str]:
    return [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]


def _errno_for(e: BaseException) -> int:
    """The errno an application sees for an engine or SCSI failure."""
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


class Tree(pyfuse3.Operations):
    """pyfuse3 operations for the iscsifs tree."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, backend: Backend, *, uid: int | None = None, gid: int | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[tuple[str, ...], int] = {}
        self._next_inode = ROOT + 1
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._buffers: weakref.WeakKeyDictionary[Any, bytearray] = weakref.WeakKeyDictionary()
        self._throttle = _Throttle()
        self.closing = False  # at shutdown the kernel refuses invalidations: skip them
        self._started = time.time()
        self._node((), "dir", 0o755)

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
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.path:
            parent = node.path[:-1]
            if node.path[-1] not in self._children(parent):
                raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _device(self, node: Node) -> BlockDevice | None:
        if node.kind != "lun" or node.portal is None:
            return None
        return node.portal.devices().get(node.lun)

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | node.mode
            a.st_nlink = 2
        else:
            a.st_mode = stat.S_IFREG | node.mode
            a.st_nlink = 1
        size = 0
        if node.kind == "lun":
            dev = self._device(node)
            size = dev.size if dev is not None else 0
            a.st_blksize = dev.block if dev is not None else 512
        a.st_size = size
        a.st_blocks = (size + 511) // 512
        a.st_uid = self.uid
        a.st_gid = self.gid
        ns = int(self._started * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        # Everything here can change behind the kernel's back (sessions come and go): no
        # caching of names, short caching of sizes.
        a.entry_timeout = 0
        a.attr_timeout = 1 if node.kind == "lun" else 0
        a.generation = 0
        return a

    # -- metadata operations ---------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._live(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = self._children(parent.path).get(os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._live(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._live(inode)
        if fields.update_size:
            # Truncating a block device is meaningless; shells do it for `>` redirections of
            # control files, which is harmless, and `truncate` on a LUN file must not lie.
            if node.kind == "lun":
                dev = self._device(node)
                if dev is None or attr.st_size != dev.size:
                    raise pyfuse3.FUSEError(errno.EINVAL)
        elif fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attr(node)

    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._live(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._live(fh)
        entries = sorted(self._children(node.path).items())
        for i, (name, child) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(child), i):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 512
        total = sum(d.size for p in self.backend.portals() for d in p.devices().values())
        s.f_blocks = total // 512
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- files -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._live(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        want_write = accmode in (os.O_WRONLY, os.O_RDWR)
        want_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if (want_write and not node.mode & 0o200) or (want_read and not node.mode & 0o400):
            raise pyfuse3.FUSEError(errno.EACCES)
        handle = Handle(node=node)
        if node.kind == "lun":
            handle.device = self._device(node)
            if handle.device is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
        elif want_read and not want_write:
            handle.content = self._render(node).encode()
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        # direct_io: LUN I/O goes to the target at the size the application asked for, and
        # text files can report size 0 yet be read whole (their length is only known on read).
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

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
            raise pyfuse3.FUSEError(errno.EIO) from None
        return ""

    async def read(self, fh: int, off: int, size: int) -> Any:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        dev = handle.device
        if dev is None:
            if not handle.content and not handle.wrote and handle.node.kind != "lun":
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
        try:
            bs = dev.block
            if not (off % bs or size % bs) and off + size <= dev.size:
                buf = self._buffer(size)
                await dev.read_blocks(off // bs, buf)
                return buf
            return await dev.read(off, size)
        except (scsi.ScsiError, SessionError, ValueError) as e:
            raise self._io_error(handle, "read", off, size, e) from None

    def _buffer(self, size: int) -> memoryview:
        """A read buffer private to the pyfuse3 worker task serving this request."""
        task = trio.lowlevel.current_task()
        buf = self._buffers.get(task)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 1 << 16))
            self._buffers[task] = buf
        return memoryview(buf)[:size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        handle.reply_at = off + len(buf)
        handle.shift = None
        dev = handle.device
        if dev is not None:
            if off >= dev.size and buf:
                raise pyfuse3.FUSEError(errno.ENOSPC)
            if off + len(buf) > dev.size:
                buf = buf[: dev.size - off]  # a short write; the next one gets ENOSPC
            try:
                return await dev.write(off, buf)
            except (scsi.ScsiError, SessionError, ValueError, OverflowError) as e:
                raise self._io_error(handle, "write", off, len(buf), e) from None
        return await self._command(handle, buf)

    async def _command(self, handle: Handle, buf: bytes) -> int:
        """Run each complete line written to a control file. The reply (or the error message)
        is what a read of the same open file returns; a failure also fails the write. A last
        line without a newline (printf) runs when the file is closed."""
        pending = (handle.pending or bytearray()) + buf
        if len(pending) > 65536:
            raise pyfuse3.FUSEError(errno.E2BIG)
        if b"\n" not in pending:
            handle.pending = pending
            return len(buf)
        complete, _, rest = bytes(pending).rpartition(b"\n")
        handle.pending = bytearray(rest) if rest else None
        await self._run_lines(handle, _lines(complete))
        return len(buf)

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
                raise pyfuse3.FUSEError(e.errno) from None
            except Exception:
                log.exception("%s: command failed", "/".join(node.path))
                handle.content = b"ERROR. internal error; see the log\n"
                raise pyfuse3.FUSEError(errno.EIO) from None
        handle.content = "".join(r if r.endswith("\n") or not r else r + "\n"
                                 for r in replies).encode()

    def _io_error(self, handle: Handle, op: str, off: int, size: int,
                  e: BaseException) -> pyfuse3.FUSEError:
        code = _errno_for(e)
        name = "/".join(handle.node.path)
        if self._throttle.allow(f"{name}:{type(e).__name__}"):
            log.error("%s: %s of %d bytes at %d failed: %s (%s)", name, op, size, off, e,
                      errno.errorcode.get(code, code))
        return pyfuse3.FUSEError(code)

    async def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None and handle.pending:
            line = bytes(handle.pending)
            handle.pending = None
            await self._run_lines(handle, _lines(line))

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.device is not None:
            try:
                await handle.device.sync()
            except (scsi.ScsiError, SessionError) as e:
                raise self._io_error(handle, "fsync", 0, 0, e) from None

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # -- notifications ---------------------------------------------------------------------

    def invalidate(self, path: Sequence[str]) -> None:
        """Tell the kernel a directory entry changed (a LUN came or went)."""
        path = tuple(path)
        if self.closing:
            return
        parent = self._by_path.get(path[:-1]) if len(path) > 1 else ROOT
        if parent is None:
            return
        try:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(path[-1]), ignore_enoent=True)
        except Exception:  # not mounted (tests), or the kernel queue is gone at shutdown
            pass

