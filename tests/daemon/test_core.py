# The daemon without a mount or tgtd: a Daemon serving a real fs.Tree over a fake FUSE channel,
# its sessions dialling the target-side fake of tests/fake_target.py. What its files show and
# what their commands do: login and logout with the LUN files they bring and take away, the
# Setup tab's boxes saved and applied, a value the schema refuses applied nowhere, auto-login.

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from iscsifs.config import ConfigStore, load
from iscsifs.daemon.core import Daemon
from iscsifs.fs import Tree

from ..fake_target import TARGET, Disk, FakeTarget
from ..fs.fuse_driver import Driver, FakeChannel, FuseError

PORTAL = "targets/" + TARGET + "/127.0.0.1:3260"


def config_text(*, visible: bool = True, auto_login: bool = False, chap: bool = False,
                second: bool = False) -> str:
    text = f"""[initiator]
name = "iqn.2026-11.org.iscsifs:unit"

[[target]]
name = "{TARGET}"

[[target.portal]]
address = "127.0.0.1"
port = 3260
visible = {str(visible).lower()}
auto_login = {str(auto_login).lower()}
"""
    if second:
        text += '\n[[target.portal]]\naddress = "127.0.0.2"\nport = 3260\nvisible = false\n'
    if chap:
        text += ('\n[target.security]\nmethod = "CHAP"\ntarget_user = "user"\n'
                 'target_secret = "not-the-right-secret"\n')
    return text


@asynccontextmanager
async def running(tmp_path: Path, fake: FakeTarget, text: str
                  ) -> AsyncIterator[tuple[Daemon, Driver]]:
    path = tmp_path / "iscsifs.toml"
    path.write_text(text)
    path.chmod(0o600)
    store = ConfigStore(path)
    store.load()
    channel = FakeChannel()
    async with fake.serving(), trio.open_nursery() as nursery:
        tree = Tree(channel, nursery, uid=0, gid=0)  # type: ignore[arg-type]
        daemon = Daemon(store, tree=tree, nursery=nursery, mountpoint=str(tmp_path / "mnt"),
                        connector=fake.connect)
        yield daemon, Driver(tree, channel)
        with trio.move_on_after(10):
            await daemon.shutdown()
        nursery.cancel_scope.cancel()
    assert fake.errors == []


async def test_login_brings_the_lun_files_and_logout_takes_them(tmp_path: Path,
                                                                autojump_clock: Any) -> None:
    fake = FakeTarget(luns={0: Disk(blocks=64), 1: Disk(blocks=2048)})
    async with running(tmp_path, fake, config_text()) as (_daemon, fuse):
        assert await fuse.listdir(PORTAL) == ["control", "hold_time", "luns", "params",
                                              "setup", "status"]
        assert (await fuse.cat(f"{PORTAL}/status")).splitlines()[0] == "not connected"
        assert await fuse.command(f"{PORTAL}/control", "login") == "connected\n"
        assert "lun1" in await fuse.listdir(PORTAL)
        assert (await fuse.lookup(f"{PORTAL}/lun1")).size == 2048 * 512
        status = (await fuse.cat(f"{PORTAL}/status")).splitlines()
        assert status[0] == "connected" and "luns: lun0 lun1" in status
        assert "MaxBurstLength=" in await fuse.cat(f"{PORTAL}/params")
        assert (await fuse.cat(f"{PORTAL}/luns")).splitlines()[1].split("\t")[:3] == [
            "1", str(2048 * 512), "512"]
        fh, _ = await fuse.open(f"{PORTAL}/lun1")
        assert await fuse.read(fh, 0, 512) == bytes(fake.disk(1).data[:512])
        await fuse.release(fh)
        assert await fuse.cat("targets/status") == (
            f"{TARGET}\t-\t127.0.0.1:3260\tconnected\n")
        assert await fuse.command(f"{PORTAL}/control", "logout") == "not connected\n"
        assert await fuse.listdir(PORTAL) == ["control", "hold_time", "luns", "params", "setup",
                                              "status"]
        assert await fuse.cat(f"{PORTAL}/params") == ""


async def test_a_wrong_secret_fails_the_login_with_eacces(tmp_path: Path,
                                                          autojump_clock: Any) -> None:
    fake = FakeTarget(chap=("user", "the-right-secret-1"))
    async with running(tmp_path, fake, config_text(chap=True)) as (_daemon, fuse):
        with pytest.raises(FuseError) as e:
            await fuse.command(f"{PORTAL}/control", "login")
        assert e.value.errno == errno.EACCES
        assert e.value.reply.startswith("ERROR. ")  # type: ignore[attr-defined]
        assert "not-the-right-secret" not in e.value.reply  # type: ignore[attr-defined]
        status = await fuse.cat(f"{PORTAL}/status")
        assert status.splitlines()[0] == "not connected"
        assert "last error: " in status and "last error: -" not in status


async def test_only_visible_portals_have_a_directory(tmp_path: Path) -> None:
    async with running(tmp_path, FakeTarget(), config_text(second=True)) as (_daemon, fuse):
        assert await fuse.listdir(f"targets/{TARGET}") == ["127.0.0.1:3260"]
        assert await fuse.cat("targets/setup") == (
            f"{TARGET}\t-\t127.0.0.1:3260\tNo\tYes\n{TARGET}\t-\t127.0.0.2:3260\tNo\tNo\n")
        assert await fuse.command(f"{PORTAL}/control", "autologin yes") == "autologin yes\n"
        assert load(tmp_path / "iscsifs.toml").targets[0].portals[0].auto_login
        # auto-login needs a visible port: the schema refuses hiding it first
        with pytest.raises(FuseError) as e:
            await fuse.command(f"{PORTAL}/control", "visible no")
        assert e.value.errno == errno.EINVAL
        assert "auto_login = true needs visible = true" in e.value.reply  # type: ignore[attr-defined]
        await fuse.command(f"{PORTAL}/control", "autologin no")
        assert await fuse.command(f"{PORTAL}/control", "visible no") == "visible no\n"
        assert await fuse.listdir("targets") == ["control", "setup", "status"]
        assert not load(tmp_path / "iscsifs.toml").targets[0].portals[0].visible


async def test_a_hold_time_the_schema_refuses_is_applied_nowhere(tmp_path: Path,
                                                                 autojump_clock: Any) -> None:
    async with running(tmp_path, FakeTarget(), config_text()) as (daemon, fuse):
        await fuse.command(f"{PORTAL}/control", "login")
        session = next(iter(daemon.states.values())).session
        assert session is not None and session.hold_time == 120
        with pytest.raises(FuseError) as e:
            await fuse.command(f"{PORTAL}/hold_time", "100000")
        assert e.value.errno == errno.EINVAL
        assert "hold_time = 100000" in e.value.reply  # type: ignore[attr-defined]
        assert session.hold_time == 120
        assert await fuse.cat(f"{PORTAL}/hold_time") == "120\n"
        assert load(tmp_path / "iscsifs.toml").targets[0].timeouts.hold_time == 120
        assert await fuse.command(f"{PORTAL}/hold_time", "30") == "hold time 30 s\n"
        assert session.hold_time == 30
        assert load(tmp_path / "iscsifs.toml").targets[0].timeouts.hold_time == 30


async def test_initiator_files_read_and_save(tmp_path: Path) -> None:
    async with running(tmp_path, FakeTarget(), config_text()) as (_daemon, fuse):
        assert await fuse.cat("initiator/name") == "iqn.2026-11.org.iscsifs:unit\n"
        assert await fuse.command("initiator/name", "lab-7") == (
            "iqn.2026-11.org.iscsifs:lab-7\n")
        assert await fuse.command("initiator/boot_delay", "15") == "15\n"
        assert await fuse.cat("initiator/isns") == ""
        assert await fuse.command("initiator/isns", "127.0.0.1:4000") == "127.0.0.1:4000\n"
        saved = load(tmp_path / "iscsifs.toml")
        assert (saved.initiator.name, saved.initiator.boot_delay, saved.initiator.isns) == (
            "iqn.2026-11.org.iscsifs:lab-7", 15, "127.0.0.1:4000")
        with pytest.raises(FuseError) as e:
            await fuse.command("initiator/boot_delay", "100000")
        assert "boot_delay = 100000" in e.value.reply  # type: ignore[attr-defined]
        assert load(tmp_path / "iscsifs.toml").initiator.boot_delay == 15
        with pytest.raises(FuseError) as e:
            await fuse.command("discovery/control", "isns")
        assert e.value.errno == errno.EHOSTUNREACH  # configured now, and nobody answers


async def test_auto_login_logs_in_at_start(tmp_path: Path, autojump_clock: Any) -> None:
    fake = FakeTarget()
    async with running(tmp_path, fake, config_text(auto_login=True)) as (daemon, fuse):
        await daemon.auto_login()
        while "lun1" not in await fuse.listdir(PORTAL):
            await trio.sleep(0.1)
        assert (await fuse.cat(f"{PORTAL}/status")).startswith("connected\n")
        assert len(fake.logins) == 1
