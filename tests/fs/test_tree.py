# The tree without a mount: fs.Tree answering FUSE requests from a table of files, a fake
# channel and fake block devices. The namespace (what appears where, inodes kept, entries
# that go away), the control-file protocol (reply on the same descriptor, errors, a line
# without a newline at close), the LUN I/O path and its errno mapping.

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from iscsifs import scsi
from iscsifs.engine.session import SessionUnavailable
from iscsifs.fs import CommandError, File, Kind, Tree
from iscsifs.fuse import kernel as K

from .fuse_driver import Driver, FakeChannel, FakeDevice, FakeInfo, FuseError

P = "targets/{iqn}/{portal}"


class Portal:
    """What the daemon binds to a portal's files: here, a name and a list of commands."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    async def control(self, line: str) -> str:
        await trio.sleep(0)
        self.lines.append(line)
        if line == "fail":
            raise CommandError("it failed", errno.EACCES)
        if line == "bug":
            raise RuntimeError("a bug")
        return f"done {line}"


def files(state: dict[str, Any]) -> tuple[File, ...]:
    async def set_name(_: object, line: str) -> str:
        state["name"] = line
        return f"name is {line}"

    return (
        File("version", 0o400, read=lambda _: "v1\n"),
        File("initiator/name", 0o600, read=lambda _: state["name"] + "\n", write=set_name),
        File("targets/control", 0o600, write=lambda _, line: Portal("t").control(line)),
        File(f"{P}/control", 0o600, write=Portal.control),
        File(f"{P}/status", 0o400, read=lambda p: f"status of {p.name}\n"),
        File(f"{P}/lun{{n}}", 0o600, kind=Kind.LUN),
    )


@asynccontextmanager
async def mounted(**kw: Any) -> AsyncIterator[tuple[Tree, Driver, dict[str, Any]]]:
    state: dict[str, Any] = {"name": "iqn.x"}
    channel = FakeChannel()
    async with trio.open_nursery() as nursery:
        tree = Tree(channel, nursery, uid=0, gid=0, **kw)  # type: ignore[arg-type]
        tree.register(files(state))
        yield tree, Driver(tree, channel), state
        nursery.cancel_scope.cancel()


# -- names ------------------------------------------------------------------------------------


async def test_fixed_files_are_there_from_the_start() -> None:
    async with mounted() as (_tree, fuse, _):
        assert await fuse.listdir("/") == ["initiator", "targets", "version"]
        assert await fuse.listdir("initiator") == ["name"]
        assert await fuse.listdir("targets") == ["control"]
        version = await fuse.lookup("version")
        assert stat.S_ISREG(version.mode) and stat.S_IMODE(version.mode) == 0o400
        assert stat.S_IMODE((await fuse.lookup("initiator/name")).mode) == 0o600
        assert stat.S_ISDIR((await fuse.lookup("targets")).mode)
        with pytest.raises(FuseError) as e:
            await fuse.lookup("targets/nothing")
        assert e.value.errno == errno.ENOENT
        with pytest.raises(FuseError) as e:
            await fuse.lookup("version/x")
        assert e.value.errno == errno.ENOTDIR


async def test_an_added_portal_brings_its_files_and_takes_them_away() -> None:
    async with mounted() as (tree, fuse, _):
        tree.add(P, Portal("a"), iqn="iqn.t", portal="127.0.0.1:3260")
        assert await fuse.listdir("targets") == ["control", "iqn.t"]
        assert await fuse.listdir("targets/iqn.t/127.0.0.1:3260") == ["control", "status"]
        assert await fuse.cat("targets/iqn.t/127.0.0.1:3260/status") == "status of a\n"
        status = await fuse.lookup("targets/iqn.t/127.0.0.1:3260/status")
        tree.remove(P, iqn="iqn.t", portal="127.0.0.1:3260")
        # the iqn directory existed only for its portal: it goes too
        assert await fuse.listdir("targets") == ["control"]
        with pytest.raises(FuseError) as e:
            await fuse.getattr(status.inode)
        assert e.value.errno == errno.ENOENT
        tree.add(P, Portal("b"), iqn="iqn.t", portal="127.0.0.1:3260")
        again = await fuse.lookup("targets/iqn.t/127.0.0.1:3260/status")
        assert again.inode == status.inode  # the same path keeps its inode
        assert await fuse.cat("targets/iqn.t/127.0.0.1:3260/status") == "status of b\n"


async def test_two_portals_of_one_target_share_its_directory() -> None:
    async with mounted() as (tree, fuse, _):
        tree.add(P, Portal("a"), iqn="iqn.t", portal="127.0.0.1:3260")
        tree.add(P, Portal("b"), iqn="iqn.t", portal="[::1]:3260")
        assert await fuse.listdir("targets/iqn.t") == ["127.0.0.1:3260", "[::1]:3260"]
        tree.remove(P, iqn="iqn.t", portal="127.0.0.1:3260")
        assert await fuse.listdir("targets/iqn.t") == ["[::1]:3260"]


async def test_the_kernel_is_told_of_every_entry_that_comes_or_goes() -> None:
    async with mounted() as (tree, fuse, _):
        channel = fuse.channel
        channel.notified.clear()
        tree.add(P, Portal("a"), iqn="iqn.t", portal="p:1")
        targets = (await fuse.lookup("targets")).inode
        iqn = (await fuse.lookup("targets/iqn.t")).inode
        portal = (await fuse.lookup("targets/iqn.t/p:1")).inode
        assert (targets, "iqn.t") in channel.notified
        assert (iqn, "p:1") in channel.notified
        channel.notified.clear()
        tree.add(f"{P}/lun{{n}}", FakeDevice(), iqn="iqn.t", portal="p:1", n=1)
        assert channel.notified == [(portal, "lun1")]
        channel.notified.clear()
        tree.closing = True  # at shutdown nothing more is sent
        tree.remove(f"{P}/lun{{n}}", iqn="iqn.t", portal="p:1", n=1)
        assert channel.notified == []


async def test_a_lookup_costs_the_same_in_a_tree_of_200_portals() -> None:
    async def cost(portals: int) -> int:
        async with mounted() as (tree, fuse, _):
            for i in range(portals):
                tree.add(P, Portal(str(i)), iqn=f"iqn.t{i}", portal="127.0.0.1:3260")
                tree.add(f"{P}/lun{{n}}", FakeDevice(), iqn=f"iqn.t{i}", portal="127.0.0.1:3260",
                         n=1)
            before = tree.names.work
            await fuse.lookup("targets/iqn.t7/127.0.0.1:3260/lun1")
            await fuse.listdir("targets/iqn.t7/127.0.0.1:3260")
            return tree.names.work - before

    assert await cost(10) == await cost(200)


async def test_unknown_requests_and_metadata_changes_are_refused() -> None:
    async with mounted() as (_tree, fuse, _):
        with pytest.raises(FuseError) as e:
            await fuse.call(K.Opcode.MKDIR, K.ROOT_ID, b"\0" * 8 + b"x\0")
        assert e.value.errno == errno.ENOSYS
        with pytest.raises(FuseError) as e:
            await fuse.chmod("version", 0o777)
        assert e.value.errno == errno.EPERM
        with pytest.raises(FuseError) as e:
            await fuse.open("version", os.O_WRONLY)
        assert e.value.errno == errno.EACCES
        with pytest.raises(FuseError) as e:
            await fuse.open("targets")
        assert e.value.errno == errno.EISDIR


# -- text and control files -------------------------------------------------------------------


async def test_a_text_file_reads_as_it_was_when_opened() -> None:
    async with mounted() as (_tree, fuse, state):
        fh, flags = await fuse.open("initiator/name")
        assert flags & K.FOPEN_DIRECT_IO  # size 0, yet read whole
        state["name"] = "iqn.changed"
        assert await fuse.read(fh, 0, 100) == b"iqn.x\n"
        assert await fuse.read(fh, 4, 2) == b"x\n"
        await fuse.release(fh)
        assert await fuse.cat("initiator/name") == "iqn.changed\n"


async def test_a_command_reply_is_read_back_on_the_same_descriptor() -> None:
    async with mounted() as (_tree, fuse, state):
        assert await fuse.command("initiator/name", "iqn.new") == "name is iqn.new\n"
        assert state["name"] == "iqn.new"


async def test_a_shell_reads_the_reply_from_where_its_write_ended() -> None:
    async with mounted() as (_tree, fuse, _):
        fh, _ = await fuse.open("initiator/name", os.O_RDWR)
        assert await fuse.write(fh, 0, b"abc\n") == 4
        assert await fuse.read(fh, 4, 100) == b"name is abc\n"
        assert await fuse.read(fh, 16, 100) == b""
        await fuse.release(fh)


async def test_a_failed_command_fails_the_write_and_leaves_its_message() -> None:
    async with mounted() as (tree, fuse, _):
        portal = Portal("a")
        tree.add(P, portal, iqn="iqn.t", portal="p:1")
        with pytest.raises(FuseError) as e:
            await fuse.command("targets/iqn.t/p:1/control", "fail")
        assert e.value.errno == errno.EACCES
        assert e.value.reply == "ERROR. it failed\n"  # type: ignore[attr-defined]
        with pytest.raises(FuseError) as e:
            await fuse.command("targets/iqn.t/p:1/control", "bug")
        assert e.value.errno == errno.EIO
        assert e.value.reply == "ERROR. internal error; see the log\n"  # type: ignore[attr-defined]
        assert portal.lines == ["fail", "bug"]


async def test_lines_run_in_order_and_a_last_line_without_newline_runs_at_close() -> None:
    async with mounted() as (tree, fuse, _):
        portal = Portal("a")
        tree.add(P, portal, iqn="iqn.t", portal="p:1")
        fh, _ = await fuse.open("targets/iqn.t/p:1/control", os.O_WRONLY)
        await fuse.write(fh, 0, b"one\ntw")
        assert portal.lines == ["one"]
        await fuse.write(fh, 6, b"o\nthree")
        assert portal.lines == ["one", "two"]
        await fuse.flush(fh)
        assert portal.lines == ["one", "two", "three"]
        await fuse.release(fh)


async def test_a_file_without_commands_refuses_them() -> None:
    async with mounted() as (tree, fuse, _):
        tree.add(P, Portal("a"), iqn="iqn.t", portal="p:1")
        with pytest.raises(FuseError) as e:
            await fuse.open("targets/iqn.t/p:1/status", os.O_WRONLY)
        assert e.value.errno == errno.EACCES


async def test_an_endless_line_is_refused() -> None:
    async with mounted() as (_tree, fuse, _):
        fh, _ = await fuse.open("initiator/name", os.O_WRONLY)
        with pytest.raises(FuseError) as e:
            await fuse.write(fh, 0, b"x" * 70000)
        assert e.value.errno == errno.E2BIG


# -- LUN files --------------------------------------------------------------------------------


async def lun(tree: Tree, dev: FakeDevice) -> str:
    tree.add(P, Portal("a"), iqn="iqn.t", portal="p:1")
    tree.add(f"{P}/lun{{n}}", dev, iqn="iqn.t", portal="p:1", n=1)
    return "targets/iqn.t/p:1/lun1"


async def test_a_lun_file_has_the_lun_size_and_reads_whole_blocks_by_callback() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice(size=1 << 20, block=512)
        path = await lun(tree, dev)
        entry = await fuse.lookup(path)
        assert entry.size == 1 << 20 and stat.S_IMODE(entry.mode) == 0o600
        fh, flags = await fuse.open(path, os.O_RDWR)
        assert flags & K.FOPEN_DIRECT_IO and flags & K.FOPEN_PARALLEL_DIRECT_WRITES
        assert await fuse.read(fh, 4096, 8192) == bytes(dev.data[4096:12288])
        assert dev.calls == [("start_read", 8, 8192)]
        # past the end: short, then empty
        assert len(await fuse.read(fh, (1 << 20) - 512, 4096)) == 512
        assert await fuse.read(fh, 1 << 20, 4096) == b""


async def test_partial_blocks_go_through_the_awaitable_path() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice()
        path = await lun(tree, dev)
        fh, _ = await fuse.open(path, os.O_RDWR)
        assert await fuse.read(fh, 10, 100) == bytes(dev.data[10:110])
        assert await fuse.write(fh, 7, b"hello") == 5
        assert dev.data[7:12] == b"hello"
        assert [c[0] for c in dev.calls] == ["read", "write"]


async def test_writes_land_and_large_ones_take_the_channel_buffer() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice()
        path = await lun(tree, dev)
        fh, _ = await fuse.open(path, os.O_WRONLY)
        assert await fuse.write(fh, 512, b"a" * 512) == 512
        assert fuse.channel.taken == 0
        assert await fuse.write(fh, 65536, b"b" * 65536) == 65536
        assert fuse.channel.taken == 1
        assert dev.data[512:1024] == b"a" * 512 and dev.data[65536:131072] == b"b" * 65536
        # a write crossing the end is short; one past the end fails
        assert await fuse.write(fh, dev.size - 512, b"c" * 1024) == 512
        with pytest.raises(FuseError) as e:
            await fuse.write(fh, dev.size, b"c" * 512)
        assert e.value.errno == errno.ENOSPC


@pytest.mark.parametrize(("error", "code"), [
    (SessionUnavailable("gone"), errno.EIO),
    (scsi.error_for_status(2, bytes([0x70, 0, 7, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0, 0, 0,
                                     0, 0])), errno.EROFS),
    (OverflowError("past the end"), errno.ENOSPC),
])
async def test_engine_failures_become_their_errno(error: BaseException, code: int) -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice(fail=error)
        path = await lun(tree, dev)
        fh, _ = await fuse.open(path, os.O_RDWR)
        for op in (fuse.read(fh, 0, 512), fuse.write(fh, 0, b"x" * 512), fuse.fsync(fh),
                   fuse.read(fh, 1, 10)):
            with pytest.raises(FuseError) as e:
                await op
            assert e.value.errno == code


async def test_fsync_syncs_and_fallocate_punches_only_where_the_lun_unmaps() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice()
        path = await lun(tree, dev)
        fh, _ = await fuse.open(path, os.O_RDWR)
        await fuse.fsync(fh)
        assert dev.calls[-1] == ("sync",)
        punch = K.FALLOC_FL_PUNCH_HOLE | K.FALLOC_FL_KEEP_SIZE
        with pytest.raises(FuseError) as e:
            await fuse.fallocate(fh, 0, 4096, punch)
        assert e.value.errno == errno.EOPNOTSUPP
        await fuse.fallocate(fh, 0, 4096, 0)  # the space is there
        dev.info = FakeInfo(unmap=True)
        await fuse.fallocate(fh, 4096, 4096, punch)
        assert dev.calls[-1] == ("unmap", 4096, 4096)
        assert dev.data[4096:8192] == bytes(4096)


async def test_truncate_to_another_size_is_refused() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice()
        path = await lun(tree, dev)
        await fuse.truncate(path, dev.size)  # no change: fine
        with pytest.raises(FuseError) as e:
            await fuse.truncate(path, 0)
        assert e.value.errno == errno.EINVAL
        await fuse.truncate("initiator/name", 0)  # `>` on a control file is harmless


async def test_an_open_lun_keeps_its_device_when_the_file_goes() -> None:
    async with mounted() as (tree, fuse, _):
        dev = FakeDevice()
        path = await lun(tree, dev)
        fh, _ = await fuse.open(path)
        tree.remove(f"{P}/lun{{n}}", iqn="iqn.t", portal="p:1", n=1)
        with pytest.raises(FuseError):
            await fuse.lookup(path)
        assert await fuse.read(fh, 0, 512) == bytes(dev.data[:512])


async def test_statfs_counts_the_luns() -> None:
    async with mounted() as (tree, fuse, _):
        await lun(tree, FakeDevice(size=1 << 20))
        out = await fuse.call(K.Opcode.STATFS, K.ROOT_ID, b"")
        blocks = K.KSTATFS.unpack_from(out)[0]
        assert blocks == (1 << 20) // 512
