# The FUSE device: mounting and unmounting, reading requests and writing replies, on trio.
#
# One task reads requests until the device has none left (no lock, no epoll round per
# request) and hands each to the filesystem's dispatch() synchronously. A handler either
# replies at once, or keeps what it needs and replies later from wherever the work finishes
# (for a LUN read: from the iSCSI reader, the moment the data is in). Each read goes into a
# header buffer and a payload buffer; a WRITE's data starts at the payload buffer's first byte,
# so a handler that keeps a large write takes the buffer (take_payload) instead of copying it.
# Must not know what the files are: fs/ does.

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from . import kernel as K

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2


class MountError(OSError):
    """The mount could not be made; the message says why in one line."""


class Request:
    """One request, valid only during dispatch() unless the handler copies what it keeps."""

    __slots__ = ("body", "data", "gid", "nodeid", "opcode", "pid", "uid", "unique")

    def __init__(self, opcode: int, unique: int, nodeid: int, uid: int, gid: int, pid: int,
                 body: bytes | memoryview, data: memoryview) -> None:
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.body = body  # the opcode's own header and arguments
        self.data = data  # a WRITE's payload (a view of the channel's payload buffer)


def _common_options(allow_other: bool, max_read: int) -> str:
    opts = ",allow_other" if allow_other else ""
    return opts + (f",max_read={max_read}" if max_read else "")


def _mount_options(fd: int, uid: int, gid: int, allow_other: bool, max_read: int = 0) -> str:
    opts = f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions"
    return opts + _common_options(allow_other, max_read)


def mount(mountpoint: str, *, fsname: str = "iscsifs", allow_other: bool = False,
          max_read: int = 0) -> int:
    """Mount a FUSE filesystem at mountpoint and return the device fd (non-blocking).
    As root with mount(2); otherwise through fusermount3, which passes the fd back.
    max_read: the largest read the kernel sends in one request (0: its own limit)."""
    if os.geteuid() == 0:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = _mount_options(fd, os.getuid(), os.getgid(), allow_other, max_read)
        rc = _libc.mount(fsname.encode(), mountpoint.encode(), f"fuse.{fsname}".encode(),
                         MS_NOSUID | MS_NODEV, opts.encode())
        if rc != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise MountError(err, f"cannot mount {mountpoint}: {os.strerror(err)}")
    else:
        fd = _fusermount(mountpoint, fsname, allow_other, max_read)
    os.set_blocking(fd, False)
    return fd


def _fusermount(mountpoint: str, fsname: str, allow_other: bool, max_read: int = 0) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        opts = (f"fsname={fsname},subtype={fsname},default_permissions"
                + _common_options(allow_other, max_read))
        env = {**os.environ, "_FUSE_COMMFD": str(theirs.fileno())}
        proc = subprocess.run(["fusermount3", "-o", opts, "--", mountpoint], env=env,
                              pass_fds=(theirs.fileno(),), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise MountError(errno.EPERM, f"cannot mount {mountpoint}: "
                                          f"{proc.stderr.strip() or 'fusermount3 failed'}")
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise MountError(errno.EIO, f"cannot mount {mountpoint}: fusermount3 sent no fd")
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def unmount(mountpoint: str) -> None:
    """Detach the mount (lazily, as libfuse does: open files keep working until closed)."""
    if os.geteuid() == 0:
        if _libc.umount2(mountpoint.encode(), MNT_DETACH) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EINVAL:  # not mounted (any more)
            return
        raise OSError(err, f"cannot unmount {mountpoint}: {os.strerror(err)}")
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, check=False)


def max_request(want: int = 0, cap: int = 8 << 20) -> int:
    """The FUSE request size to ask for: `want` bytes in whole pages (at least one), or with
    want 0 the largest the kernel will send, its max_pages_limit (256 pages, 1 MiB, unless
    raised with the fs.fuse.max_pages_limit sysctl); never more than that limit or `cap`."""
    try:
        limit = int(Path("/proc/sys/fs/fuse/max_pages_limit").read_text())
    except (OSError, ValueError):
        limit = 256
    limit = max(32, min(limit, cap // 4096))
    return (min(limit, max(1, want // 4096)) if want else limit) * 4096


Dispatch = Callable[[Request], None]


class Channel:
    """A mounted FUSE device."""

    def __init__(self, fd: int, *, max_write: int = 1 << 20, max_background: int = 64) -> None:
        self.fd = fd
        self.want_max_write = max_write
        self.max_background = max_background
        self.max_write = max_write
        self._hdr = bytearray(K.RW_DATA)
        self._hview = memoryview(self._hdr)
        self._payload = self._new_payload()
        self._spare: list[bytearray] = []
        self.requests = 0
        self.closed = False
        self._notifier: _Notifier | None = None

    def _new_payload(self) -> bytearray:
        return bytearray(self.want_max_write + 4096)

    # -- replies ---------------------------------------------------------------------------

    def reply(self, unique: int, *parts: Any) -> None:
        """Answer a request with its reply body (any buffers, written without copying)."""
        size = K.OUT_HEADER.size
        for p in parts:
            size += len(p)
        self._write([K.OUT_HEADER.pack(size, 0, unique), *parts])

    def error(self, unique: int, code: int) -> None:
        self._write([K.OUT_HEADER.pack(K.OUT_HEADER.size, -code, unique)])

    def notify(self, parts: list[bytes]) -> None:
        """Send a notification (unique 0) without waiting for it.

        Never from this thread: the kernel handles FUSE_NOTIFY_INVAL_ENTRY under the parent
        directory's lock, which a lookup in that directory holds while it waits for our
        answer. Written here, the notification would wait for the lookup and the lookup for
        this thread, for ever. A thread of its own writes them, in order."""
        if self.closed:
            return
        if self._notifier is None:
            self._notifier = _Notifier(self)
        self._notifier.put(parts)

    def _write(self, parts: list[Any]) -> None:
        if self.closed:
            return
        try:
            os.writev(self.fd, parts)
        except FileNotFoundError:
            pass  # the request was interrupted and is gone: nobody waits for the answer
        except BlockingIOError:
            # /dev/fuse never blocks writes; if it ever did, losing a reply would hang a
            # caller, so say so loudly.
            log.error("FUSE reply could not be written (EAGAIN)")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EBADF):
                self.closed = True
            elif e.errno != errno.EINVAL:
                raise

    # -- payload buffers -------------------------------------------------------------------

    def take_payload(self) -> bytearray:
        """Take the buffer holding the current WRITE's data; the channel reads the next
        request into another. Give it back with give_payload() when done."""
        buf = self._payload
        self._payload = self._spare.pop() if self._spare else self._new_payload()
        return buf

    def give_payload(self, buf: bytearray) -> None:
        if len(self._spare) < 8:
            self._spare.append(buf)

    # -- the loop --------------------------------------------------------------------------

    async def serve(self, dispatch: Dispatch, *, task_status: Any = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Read and dispatch requests until the filesystem is unmounted."""
        task_status.started()
        fd = self.fd
        hdr, hview = self._hdr, self._hview
        unpack = K.IN_HEADER.unpack_from
        rw = K.RW_DATA
        burst = 0
        while True:
            try:
                n = os.readv(fd, [hdr, self._payload])
            except BlockingIOError:
                burst = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENODEV:  # unmounted
                    self.closed = True
                    return
                if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                raise
            if n < K.IN_HEADER.size:
                raise K.FuseProtocolError(f"short FUSE request ({n} bytes)")
            _len, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = unpack(hdr)
            self.requests += 1
            payload = memoryview(self._payload)
            if n <= rw:
                body: bytes | memoryview = hview[K.BODY:n]
                data = payload[:0]
            elif opcode == K.Opcode.WRITE:
                body = hview[K.BODY:rw]
                data = payload[: n - rw]
            else:
                body = bytes(hview[K.BODY:rw]) + bytes(payload[: n - rw])
                data = payload[:0]
            try:
                dispatch(Request(opcode, unique, nodeid, uid, gid, pid, body, data))
            except Exception:
                log.exception("FUSE request %d (opcode %d) failed", unique, opcode)
                if opcode not in K.NO_REPLY:
                    self.error(unique, errno.EIO)
            if opcode == K.Opcode.DESTROY:
                self.closed = True
                return
            burst += 1
            if burst >= 64:  # a flood of requests must not starve the rest
                burst = 0
                await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.closed = True
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        try:
            trio.lowlevel.notify_closing(self.fd)
        except Exception:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Notifier:
    """The thread that writes the channel's notifications (see Channel.notify)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fuse-notify", daemon=True)
        self._thread.start()

    def put(self, parts: list[bytes]) -> None:
        self._queue.put(parts)

    def stop(self) -> None:
        """Let it finish what is queued; a write still blocked in the kernel ends with the
        mount, so do not wait long for it."""
        self._queue.put(None)
        self._thread.join(timeout=1)

    def _run(self) -> None:
        while (parts := self._queue.get()) is not None:
            try:
                self._channel._write(parts)
            except OSError as e:
                log.debug("FUSE notification not delivered: %s", e)
