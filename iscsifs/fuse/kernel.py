# The FUSE kernel protocol (linux/fuse.h, protocol 7.38), sans I/O: opcodes, the request and
# reply layouts, INIT negotiation, attribute / entry / directory encodings.
#
# Why our own and not pyfuse3: measured here, a raw request loop in Python serves a 4 KiB read
# for ~5 us of CPU where pyfuse3 spends 25-36 us (a lock and an epoll round per request and a
# task per request), and pyfuse3 3.5 can set neither max_background nor max_pages and has no
# fallocate. Must not do I/O: fuse/channel.py owns the device, fs.py the tree.

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from enum import IntEnum


class Opcode(IntEnum):
    """Request opcodes (linux/fuse.h, enum fuse_opcode)."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47


class InitFlag(IntEnum):
    """FUSE_INIT capability bits we use (linux/fuse.h)."""

    ASYNC_READ = 1 << 0
    ATOMIC_O_TRUNC = 1 << 3
    BIG_WRITES = 1 << 5
    ASYNC_DIO = 1 << 15
    PARALLEL_DIROPS = 1 << 18
    MAX_PAGES = 1 << 22
    INIT_EXT = 1 << 30


#: Requests that get no reply.
NO_REPLY = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT})

FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

NOTIFY_INVAL_ENTRY = 3

KERNEL_VERSION = 7
KERNEL_MINOR = 38
ROOT_ID = 1
MIN_READ_BUFFER = 8192

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # + ATTR
ATTR_OUT = struct.Struct("<QII")  # + ATTR
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN = READ_IN
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
FALLOCATE_IN = struct.Struct("<QQQII")
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2 (rest unused)
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")
INTERRUPT_IN = struct.Struct("<Q")

# Offsets into a request: the body starts after the 40-byte header; a READ or WRITE's own
# header is 40 bytes more, after which a WRITE's data begins.
BODY = IN_HEADER.size
RW_DATA = BODY + WRITE_IN.size

for _s, _n in ((IN_HEADER, 40), (OUT_HEADER, 16), (ATTR, 88), (ENTRY_OUT, 40), (INIT_OUT, 64),
               (KSTATFS, 80), (SETATTR_IN, 88), (READ_IN, 40)):
    assert _s.size == _n, (_s.format, _n)


class FuseProtocolError(Exception):
    """The kernel sent something this implementation cannot work with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attr:
    """What GETATTR and LOOKUP report for a node."""

    ino: int
    mode: int
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    blksize: int = 4096
    time_ns: int = 0

    def pack(self) -> bytes:
        sec, nsec = divmod(self.time_ns, 1_000_000_000)
        return ATTR.pack(
            self.ino, self.size, (self.size + 511) // 512, sec, sec, sec, nsec, nsec, nsec,
            self.mode, self.nlink, self.uid, self.gid, 0, self.blksize, 0,
        )


def _split(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def entry_out(attr: Attr, *, entry_timeout: float = 0.0, attr_timeout: float = 0.0) -> bytes:
    es, ens = _split(entry_timeout)
    as_, ans = _split(attr_timeout)
    return ENTRY_OUT.pack(attr.ino, 0, es, as_, ens, ans) + attr.pack()


def attr_out(attr: Attr, *, attr_timeout: float = 0.0) -> bytes:
    s, ns = _split(attr_timeout)
    return ATTR_OUT.pack(s, ns, 0) + attr.pack()


def open_out(fh: int, flags: int) -> bytes:
    return OPEN_OUT.pack(fh, flags, 0)


def write_out(size: int) -> bytes:
    return WRITE_OUT.pack(size, 0)


def statfs_out(*, blocks: int, bsize: int, files: int, namelen: int = 255) -> bytes:
    return KSTATFS.pack(blocks, 0, 0, files, 0, bsize, namelen, bsize, 0)


@dataclass(frozen=True, slots=True)
class InitResult:
    minor: int
    flags: int
    max_write: int
    max_pages: int
    reply: bytes


def negotiate_init(body: bytes | memoryview, *, max_write: int, max_background: int,
                   want: int, max_read: int = 0) -> InitResult:
    """Answer FUSE_INIT: the lower minor version, the capability bits both sides want, and
    our limits. max_write is rounded to whole pages; max_pages covers it and max_read (the
    read size itself is the max_read mount option: the kernel splits reads at the smaller
    of the two)."""
    if len(body) < 16:
        raise FuseProtocolError("FUSE_INIT request too short")
    major, minor, max_readahead, flags = struct.unpack_from("<IIII", body)
    if major != KERNEL_VERSION:
        raise FuseProtocolError(f"kernel speaks FUSE {major}.{minor}; we speak 7.x")
    minor = min(minor, KERNEL_MINOR)
    agreed = flags & want
    pages = max(1, max_write // 4096, max_read // 4096)
    if agreed & InitFlag.MAX_PAGES:
        max_write = max(1, max_write // 4096) * 4096
    else:
        max_write = min(max_write, 32 * 4096)  # the kernel's default page limit
        pages = 0
    reply = INIT_OUT.pack(KERNEL_VERSION, minor, max_readahead, agreed, max_background,
                          max(1, max_background * 3 // 4), max_write, 1, pages, 0, 0)
    return InitResult(minor=minor, flags=agreed, max_write=max_write, max_pages=pages,
                      reply=reply)


def dirent_type(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


def dirents(entries: list[tuple[int, bytes, int]], start: int, size: int) -> bytes:
    """READDIR reply: entries (ino, name, mode) from index `start`, as many as fit `size`.
    Each entry's `off` is the index of the next one, which is what the kernel asks next."""
    out = bytearray()
    for index in range(start, len(entries)):
        ino, name, mode = entries[index]
        rec = DIRENT.pack(ino, index + 1, len(name), dirent_type(mode)) + name
        rec += b"\0" * (-len(rec) & 7)
        if len(out) + len(rec) > size:
            break
        out += rec
    return bytes(out)


def notify_inval_entry(parent: int, name: bytes) -> list[bytes]:
    """A FUSE_NOTIFY_INVAL_ENTRY message (unique 0, the notify code in the error field)."""
    body = NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0"
    return [OUT_HEADER.pack(OUT_HEADER.size + len(body), NOTIFY_INVAL_ENTRY, 0), body]


def cstring(body: bytes | memoryview) -> bytes:
    """A NUL-terminated name from a request body."""
    raw = bytes(body)
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]
