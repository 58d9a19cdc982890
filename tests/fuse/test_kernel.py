# The FUSE kernel protocol codec: layouts checked byte by byte against linux/fuse.h (7.38).

from __future__ import annotations

import stat
import struct

import pytest

from iscsifs.fuse import kernel as K


def init_request(minor: int = 41, flags: int = 0xFFFFFFFF, readahead: int = 131072) -> bytes:
    # fuse_init_in: major minor max_readahead flags flags2 unused[11]
    return struct.pack("<IIIII", 7, minor, readahead, flags, 0) + bytes(44)


def test_init_reply_layout() -> None:
    want = K.InitFlag.ASYNC_READ | K.InitFlag.MAX_PAGES | K.InitFlag.ASYNC_DIO
    r = K.negotiate_init(init_request(), max_write=1 << 20, max_background=64, want=want)
    assert len(r.reply) == 64
    (major, minor, ra, flags, bg, cong, max_write, gran, pages, align,
     flags2) = struct.unpack_from("<IIIIHHIIHHI", r.reply)
    assert (major, minor, ra) == (7, 38, 131072)
    assert flags == want
    assert (bg, cong) == (64, 48)
    assert (max_write, pages) == (1 << 20, 256)
    assert (gran, align, flags2) == (1, 0, 0)
    assert r.reply[40:] == bytes(24)


def test_init_max_pages_covers_the_larger_of_max_read_and_max_write() -> None:
    flags = K.InitFlag.MAX_PAGES
    r = K.negotiate_init(init_request(flags=flags), max_write=512 << 10, max_read=256 << 10,
                         max_background=64, want=flags)
    assert (r.max_write, r.max_pages) == (512 << 10, 128)
    r = K.negotiate_init(init_request(flags=flags), max_write=128 << 10, max_read=1 << 20,
                         max_background=64, want=flags)
    assert (r.max_write, r.max_pages) == (128 << 10, 256)


def test_mount_options_carry_max_read_only_when_set() -> None:
    from iscsifs.fuse import channel
    assert "max_read" not in channel._mount_options(5, 0, 0, False)
    opts = channel._mount_options(5, 0, 0, True, 262144).split(",")
    assert "max_read=262144" in opts and "allow_other" in opts


def test_init_without_max_pages_caps_writes_at_128k() -> None:
    r = K.negotiate_init(init_request(flags=K.InitFlag.ASYNC_READ), max_write=1 << 20,
                         max_background=16, want=K.InitFlag.MAX_PAGES | K.InitFlag.ASYNC_READ)
    assert r.flags == K.InitFlag.ASYNC_READ
    assert r.max_write == 128 * 1024 and r.max_pages == 0


def test_init_takes_the_lower_minor_and_refuses_other_majors() -> None:
    assert K.negotiate_init(init_request(minor=30), max_write=4096, max_background=1,
                            want=0).minor == 30
    with pytest.raises(K.FuseProtocolError):
        K.negotiate_init(struct.pack("<IIII", 8, 0, 0, 0), max_write=4096, max_background=1,
                         want=0)
    with pytest.raises(K.FuseProtocolError):
        K.negotiate_init(b"\x07\0\0\0", max_write=4096, max_background=1, want=0)


def test_attr_and_entry_layout() -> None:
    a = K.Attr(ino=5, mode=stat.S_IFREG | 0o600, size=1 << 30, uid=1, gid=2, blksize=512,
               time_ns=1_700_000_000_123_456_789)
    raw = a.pack()
    assert len(raw) == 88
    fields = K.ATTR.unpack(raw)
    assert fields[0:3] == (5, 1 << 30, (1 << 30) // 512)  # ino size blocks
    assert fields[3:6] == (1_700_000_000,) * 3  # atime mtime ctime
    assert fields[6:9] == (123_456_789,) * 3
    assert fields[9:15] == (stat.S_IFREG | 0o600, 1, 1, 2, 0, 512)
    e = K.entry_out(a, entry_timeout=0, attr_timeout=1.5)
    assert len(e) == 128
    assert K.ENTRY_OUT.unpack_from(e) == (5, 0, 0, 1, 0, 500_000_000)
    assert e[40:] == raw
    o = K.attr_out(a, attr_timeout=1)
    assert len(o) == 104 and K.ATTR_OUT.unpack_from(o) == (1, 0, 0) and o[16:] == raw


def test_dirents_page_by_index_and_align_to_8() -> None:
    entries = [(1, b".", stat.S_IFDIR), (7, b"lun1", stat.S_IFREG), (8, b"status", stat.S_IFREG)]
    out = K.dirents(entries, 0, 4096)
    pos, seen = 0, []
    while pos < len(out):
        ino, off, namelen, typ = K.DIRENT.unpack_from(out, pos)
        name = out[pos + 24 : pos + 24 + namelen]
        seen.append((ino, off, name, typ))
        pos += (24 + namelen + 7) & ~7
    assert seen == [(1, 1, b".", 4), (7, 2, b"lun1", 8), (8, 3, b"status", 8)]
    assert len(out) % 8 == 0
    # Resume where the kernel left off, and never exceed its buffer.
    assert K.dirents(entries, 2, 4096) == out[64:]
    assert K.dirents(entries, 0, 40) == out[:32]
    assert K.dirents(entries, 3, 4096) == b""


def test_notify_inval_entry() -> None:
    header, body = K.notify_inval_entry(9, b"lun3")
    assert K.OUT_HEADER.unpack(header) == (16 + 16 + 5, K.NOTIFY_INVAL_ENTRY, 0)
    assert body == struct.pack("<QII", 9, 4, 0) + b"lun3\0"


def test_small_replies() -> None:
    assert K.open_out(3, K.FOPEN_DIRECT_IO) == struct.pack("<QII", 3, 1, 0)
    assert K.write_out(4096) == struct.pack("<II", 4096, 0)
    s = K.statfs_out(blocks=100, bsize=512, files=7)
    assert len(s) == 80 and K.KSTATFS.unpack(s)[:9] == (100, 0, 0, 7, 0, 512, 255, 512, 0)
    assert K.cstring(b"name\0junk") == b"name" and K.cstring(b"plain") == b"plain"
