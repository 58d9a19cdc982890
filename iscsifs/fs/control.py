# The text files' protocol: a read gives the file's text as it was at open; each complete line
# written is one command, whose reply (or "ERROR. message") a read of the same open file then
# returns. A last line without a newline (printf) runs when the file is closed (flush).
# Commands on one open file run in order (a lock); on different open files, concurrently.
# Owns the pending line, the reply and where a read after a command starts. Must not know what
# a command does (the table's write function does) nor FUSE (fs/tree.py answers the kernel).

from __future__ import annotations

import errno
import logging

import trio

from .files import CommandError, FsError
from .namespace import Node

log = logging.getLogger(__name__)

#: The longest command line kept while waiting for its newline.
MAX_PENDING = 65536


class TextHandle:
    """One open text or control file."""

    __slots__ = ("_busy", "_pending", "_reply_at", "_shift", "_wrote", "content", "node")

    def __init__(self, node: Node, *, snapshot: bool) -> None:
        self.node = node
        self.content = render(node) if snapshot else b""
        self._wrote = False
        self._pending: bytearray | None = None
        self._reply_at = 0  # file offset where the last command's write ended
        self._shift: int | None = None  # decided by the first read after a command
        self._busy = trio.Lock()

    def read(self, off: int, size: int) -> bytes:
        if not self.content and not self._wrote:
            self.content = render(self.node)
        # After a command, a program that preads from 0 reads the reply as a file; a shell
        # reading on the same descriptor (exec 3<>control; echo >&3; cat <&3) reads from
        # where its write left the offset. The first read after the command tells which.
        if self._wrote:
            if self._shift is None:
                self._shift = self._reply_at if off == self._reply_at else 0
            off -= self._shift
            if off < 0:
                return b""
        return self.content[off : off + size]

    async def write(self, off: int, data: bytes) -> None:
        """Run each complete line; a failure fails the write with the command's errno."""
        self._reply_at = off + len(data)
        self._shift = None
        async with self._busy:
            pending = (self._pending or bytearray()) + data
            if len(pending) > MAX_PENDING:
                raise FsError(errno.E2BIG)
            if b"\n" in pending:
                complete, _, rest = bytes(pending).rpartition(b"\n")
                self._pending = bytearray(rest) if rest else None
                await self._run_lines(complete)
            else:
                self._pending = pending

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> None:
        """Run a last line that had no newline."""
        async with self._busy:
            line = bytes(self._pending or b"")
            self._pending = None
            await self._run_lines(line)

    async def _run_lines(self, data: bytes) -> None:
        node = self.node
        write = node.file.write if node.file is not None else None
        replies: list[str] = []
        self._wrote = True
        for line in _lines(data):
            try:
                if write is None:
                    raise CommandError("this file takes no commands", errno.EBADF)
                replies.append(await write(node.obj, line))
            except CommandError as e:
                log.warning("%s: %s: %s", "/".join(node.path), line.split(" ", 1)[0], e)
                self.content = ("ERROR. " + str(e) + "\n").encode()
                raise FsError(e.errno) from None
            except Exception:
                log.exception("%s: command failed", "/".join(node.path))
                self.content = b"ERROR. internal error; see the log\n"
                raise FsError(errno.EIO) from None
        self.content = "".join(r if r.endswith("\n") or not r else r + "\n"
                               for r in replies).encode()


def render(node: Node) -> bytes:
    """The text of a file now; a file that has no text (control) reads as empty."""
    read = node.file.read if node.file is not None else None
    if read is None:
        return b""
    try:
        return read(node.obj).encode()
    except Exception:  # a bug in a view: the story in the log, EIO to the reader
        log.exception("rendering %s", "/".join(node.path))
        raise FsError(errno.EIO) from None


def _lines(data: bytes) -> list[str]:
    return [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
