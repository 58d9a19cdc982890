"""A real FUSE mount served by iscsifs.fuse.channel with a toy filesystem: a notification
sent while a lookup in the same directory waits for its answer must not hang the mount.

The kernel handles FUSE_NOTIFY_INVAL_ENTRY under the parent directory's lock, which a pending
lookup holds. Written from the thread that serves requests, the notification waits for the
lookup and the lookup for that thread: the daemon and the looking-up process hang for ever
(seen in the suite: the fixture's stat of a LUN file against a login's inval of it)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import trio

from iscsifs.fuse import channel as fusechan
from iscsifs.fuse import kernel as K

FILE_INO = 2


def _abort(mnt: Path) -> None:
    """Break a hung mount: abort its FUSE connection, then detach it."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mnt):
            minor = fields[2].split(":")[1]
            try:
                Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
            except OSError:
                pass
    fusechan.unmount(str(mnt))


def test_notify_during_a_lookup_in_the_same_directory_does_not_hang(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fd = fusechan.mount(str(mnt), fsname="iscsifs-test")
    chan = fusechan.Channel(fd, max_write=128 * 1024)
    seen: list[str] = []
    dir_attr = K.Attr(ino=1, mode=stat.S_IFDIR | 0o755, nlink=2)
    file_attr = K.Attr(ino=FILE_INO, mode=stat.S_IFREG | 0o600, size=12345)

    def dispatch(req: fusechan.Request) -> None:
        if req.opcode == K.Opcode.INIT:
            r = K.negotiate_init(req.body, max_write=128 * 1024, max_background=16, want=0)
            chan.reply(req.unique, r.reply)
        elif req.opcode == K.Opcode.GETATTR:
            chan.reply(req.unique, K.attr_out(dir_attr if req.nodeid == K.ROOT_ID
                                              else file_attr))
        elif req.opcode == K.Opcode.LOOKUP and req.nodeid == K.ROOT_ID:
            name = K.cstring(req.body).decode()
            seen.append(name)
            if name != "file":
                chan.error(req.unique, errno.ENOENT)
                return
            # While this lookup waits, tell the kernel an entry of the same directory changed.
            chan.notify(K.notify_inval_entry(K.ROOT_ID, b"other"))
            chan.reply(req.unique, K.entry_out(file_attr))
        elif req.opcode not in K.NO_REPLY:
            chan.error(req.unique, errno.ENOSYS)

    async def serve() -> None:
        with trio.move_on_after(60):
            await chan.serve(dispatch)

    # The server runs in a thread of its own: if it hangs in the kernel, this thread still
    # sees the stat time out and can abort the connection, which frees both.
    server = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    server.start()
    result: list[os.stat_result] = []
    looker = threading.Thread(target=lambda: result.append(os.stat(mnt / "file")), daemon=True)
    looker.start()
    looker.join(timeout=20)
    try:
        assert result, "stat of a file on the mount hung: the notification deadlocked the lookup"
        assert result[0].st_size == 12345 and "file" in seen
    finally:
        _abort(mnt)  # ends the server's serve() too (ENODEV)
        server.join(timeout=10)
        looker.join(timeout=10)
        chan.close()
